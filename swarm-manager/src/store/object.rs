//! The stored object kinds, a sum type over them, and the name a task goes by.

use proto::{Cluster, Config, Meta, Network, Node, Secret, Service, Task};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Secret => "secret",
            Kind::Config => "config",
        })
    }
}

// Objects are built once per write and moved, not copied around in hot loops (the small
// task ops carry no Object), so boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Cluster(Cluster),
    Node(Node),
    Service(Service),
    Task(Task),
    Network(Network),
    Secret(Secret),
    Config(Config),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Cluster(_) => Kind::Cluster,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Network(_) => Kind::Network,
            Object::Secret(_) => Kind::Secret,
            Object::Config(_) => Kind::Config,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Object::Cluster(o) => &o.id,
            Object::Node(o) => &o.id,
            Object::Service(o) => &o.id,
            Object::Task(o) => &o.id,
            Object::Network(o) => &o.id,
            Object::Secret(o) => &o.id,
            Object::Config(o) => &o.id,
        }
    }

    /// The unique name of services, networks, secrets and configs; other kinds have none.
    pub fn unique_name(&self) -> Option<&str> {
        match self {
            Object::Service(s) => s.spec.as_ref().map(|s| s.name.as_str()),
            Object::Network(n) => n.spec.as_ref().map(|s| s.name.as_str()),
            Object::Secret(o) => o.spec.as_ref().map(|s| s.name.as_str()),
            Object::Config(o) => o.spec.as_ref().map(|s| s.name.as_str()),
            _ => None,
        }
    }

    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Object::Cluster(o) => o.meta.as_ref(),
            Object::Node(o) => o.meta.as_ref(),
            Object::Service(o) => o.meta.as_ref(),
            Object::Task(o) => o.meta.as_ref(),
            Object::Network(o) => o.meta.as_ref(),
            Object::Secret(o) => o.meta.as_ref(),
            Object::Config(o) => o.meta.as_ref(),
        }
    }

    pub fn meta_mut(&mut self) -> &mut Meta {
        let m = match self {
            Object::Cluster(o) => &mut o.meta,
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
            Object::Network(o) => &mut o.meta,
            Object::Secret(o) => &mut o.meta,
            Object::Config(o) => &mut o.meta,
        };
        m.get_or_insert_with(Meta::default)
    }

    pub fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }
}

macro_rules! object_from {
    ($($t:ident),*) => {$(
        impl From<$t> for Object {
            fn from(o: $t) -> Self {
                Object::$t(o)
            }
        }
    )*};
}
object_from!(Cluster, Node, Service, Task, Network, Secret, Config);

/// `<service>.<slot>.<id>` for replicated tasks, `<service>.<node>.<id>` for global ones.
pub fn task_name(t: &Task) -> String {
    if t.slot > 0 {
        format!("{}.{}.{}", t.service_name, t.slot, t.id)
    } else {
        format!("{}.{}.{}", t.service_name, t.node_id, t.id)
    }
}
