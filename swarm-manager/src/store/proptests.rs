//! Property: applying one log gives one state. Random logs (batches of every op kind over a
//! few ids, so that ops collide: duplicate names, stale versions, missing objects, tasks
//! moving between services, nodes and states) are applied by three replicas: one applies the
//! whole log, one restarts from a snapshot taken part way and applies the rest, one is
//! restored from the first one's final snapshot. Every entry must answer the same on the
//! replicas that apply it, and every replica must end with the same objects and answer every
//! index query the same (incrementally kept indexes = indexes rebuilt from a snapshot).

use proptest::prelude::*;
use proto::{
    Cluster, Config, ConfigSpec, Meta, Network, NetworkAttachment, NetworkAttachmentConfig,
    NetworkSpec, Node, NodeRole, NodeSpec, NodeStatus, Secret, SecretSpec, Service, ServiceSpec,
    Task, TaskSpec, TaskState, TaskStatus,
};

use super::{Kind, Object, Op, Request, State};

const NODES: &[&str] = &["n0", "n1", "n2"];
const SERVICES: &[&str] = &["s0", "s1", "s2"];
const TASKS: &[&str] = &["t0", "t1", "t2", "t3", "t4", "t5"];
const NETWORKS: &[&str] = &["net0", "net1"];
const NAMES: &[&str] = &["web", "db", "front"];
const STATES: &[TaskState] = &[
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Running,
    TaskState::Complete,
    TaskState::Shutdown,
    TaskState::Failed,
    TaskState::Remove,
];

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(list).prop_map(str::to_string)
}

fn state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(STATES)
}

fn meta() -> impl Strategy<Value = Option<Meta>> {
    (0u64..8).prop_map(|version| {
        Some(Meta {
            version,
            ..Default::default()
        })
    })
}

fn node() -> impl Strategy<Value = Node> {
    (pick(NODES), meta(), any::<bool>(), 0i32..4).prop_map(|(id, meta, manager, st)| Node {
        id,
        meta,
        spec: Some(NodeSpec::default()),
        role: if manager {
            NodeRole::Manager as i32
        } else {
            NodeRole::Worker as i32
        },
        status: Some(NodeStatus {
            state: st,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn service() -> impl Strategy<Value = Service> {
    (
        pick(SERVICES),
        meta(),
        pick(NAMES),
        prop::collection::vec(pick(NETWORKS), 0..2),
    )
        .prop_map(|(id, meta, name, nets)| Service {
            id,
            meta,
            spec: Some(ServiceSpec {
                name,
                task: Some(TaskSpec {
                    networks: nets
                        .into_iter()
                        .map(|target| NetworkAttachmentConfig {
                            target,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
}

fn task() -> impl Strategy<Value = Task> {
    (
        pick(TASKS),
        meta(),
        pick(SERVICES),
        prop::option::of(pick(NODES)),
        state(),
        state(),
        prop::collection::vec(pick(NETWORKS), 0..2),
    )
        .prop_map(
            |(id, meta, service_id, node, observed, desired, nets)| Task {
                id,
                meta,
                service_id,
                node_id: node.unwrap_or_default(),
                spec: Some(TaskSpec::default()),
                status: Some(TaskStatus {
                    state: observed as i32,
                    ..Default::default()
                }),
                desired_state: desired as i32,
                networks: nets
                    .into_iter()
                    .map(|network_id| NetworkAttachment {
                        network_id,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )
}

fn network() -> impl Strategy<Value = Network> {
    (pick(NETWORKS), meta(), pick(NAMES)).prop_map(|(id, meta, name)| Network {
        id,
        meta,
        spec: Some(NetworkSpec {
            name,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn object() -> impl Strategy<Value = Object> {
    prop_oneof![
        Just(Object::Cluster(Cluster {
            id: "c0".into(),
            ..Default::default()
        })),
        node().prop_map(Object::Node),
        service().prop_map(Object::Service),
        task().prop_map(Object::Task),
        task().prop_map(Object::Task),
        network().prop_map(Object::Network),
        (pick(NAMES), meta()).prop_map(|(name, meta)| Object::Secret(Secret {
            id: format!("sec-{name}"),
            meta,
            spec: Some(SecretSpec {
                name,
                ..Default::default()
            }),
        })),
        (pick(NAMES), meta()).prop_map(|(name, meta)| Object::Config(Config {
            id: format!("cfg-{name}"),
            meta,
            spec: Some(ConfigSpec {
                name,
                ..Default::default()
            }),
        })),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => object().prop_map(Op::Create),
        2 => (object(), any::<bool>())
            .prop_map(|(object, check_version)| Op::Update { object, check_version }),
        1 => object().prop_map(|o| Op::Delete {
            kind: o.kind(),
            id: o.id().to_string(),
        }),
        2 => (pick(TASKS), state()).prop_map(|(task_id, s)| Op::SetTaskStatus {
            task_id,
            status: TaskStatus {
                state: s as i32,
                ..Default::default()
            },
        }),
        2 => (pick(TASKS), pick(NODES))
            .prop_map(|(task_id, node_id)| Op::AssignTask { task_id, node_id }),
        1 => (pick(TASKS), "[a-z ]{0,8}")
            .prop_map(|(task_id, err)| Op::SetTaskSchedulingError { task_id, err }),
        1 => (pick(TASKS), state())
            .prop_map(|(task_id, desired)| Op::SetTaskDesiredState { task_id, desired }),
        1 => (pick(NODES), 0i32..4).prop_map(|(node_id, st)| Op::SetNodeStatus {
            node_id,
            status: NodeStatus {
                state: st,
                ..Default::default()
            },
        }),
        1 => (pick(NODES), pick(NETWORKS)).prop_map(|(node_id, network_id)| {
            Op::SetNodeAttachments {
                node_id,
                attachments: vec![NetworkAttachment {
                    network_id,
                    ..Default::default()
                }],
            }
        }),
    ]
}

fn log() -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec(
        (
            prop::collection::vec(op(), 1..5),
            any::<bool>(),
            0i64..1_000_000,
        )
            .prop_map(|(ops, atomic, now_ms)| Request {
                ops,
                atomic,
                now_ms,
            }),
        1..40,
    )
}

/// Everything a reader can observe of a state, in a deterministic order.
fn observe(s: &State) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!("clusters {:?}", s.clusters().collect::<Vec<_>>()));
    line(format!("nodes {:?}", s.nodes().collect::<Vec<_>>()));
    line(format!("services {:?}", s.services().collect::<Vec<_>>()));
    line(format!("networks {:?}", s.networks().collect::<Vec<_>>()));
    line(format!("secrets {:?}", s.secrets().collect::<Vec<_>>()));
    line(format!("configs {:?}", s.configs().collect::<Vec<_>>()));
    let mut tasks: Vec<&Task> = s.tasks().collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    line(format!("tasks {} {tasks:?}", s.task_count()));
    let ids = |it: &mut dyn Iterator<Item = &Task>| {
        let mut v: Vec<String> = it.map(|t| t.id.clone()).collect();
        v.sort();
        v
    };
    for id in SERVICES {
        line(format!(
            "tasks of {id}: {:?}",
            ids(&mut s.tasks_of_service(id))
        ));
    }
    for id in NODES {
        line(format!(
            "tasks on {id}: {:?}",
            ids(&mut s.tasks_on_node(id))
        ));
        line(format!("standing of {id}: {:?}", s.standing(id)));
    }
    for id in NETWORKS {
        line(format!(
            "tasks on {id}: {:?}",
            ids(&mut s.tasks_on_network(id))
        ));
        if let Some(n) = s.network(id) {
            let mut svcs: Vec<&str> = s
                .services_on_network(n)
                .iter()
                .map(|s| s.id.as_str())
                .collect();
            svcs.sort();
            line(format!("services on {id}: {svcs:?}"));
        }
    }
    for st in STATES {
        line(format!(
            "in {st:?}: {:?} ({})",
            ids(&mut s.tasks_in_state(*st)),
            s.count_in_state(*st)
        ));
    }
    for name in NAMES {
        line(format!(
            "named {name}: service {:?} network {:?} secret {:?} config {:?}",
            s.service_by_name(name).map(|o| &o.id),
            s.network_by_name(name).map(|o| &o.id),
            s.secret_by_name(name).map(|o| &o.id),
            s.config_by_name(name).map(|o| &o.id),
        ));
    }
    for kind in [Kind::Service, Kind::Task, Kind::Node, Kind::Network] {
        for id in SERVICES.iter().chain(TASKS).chain(NODES).chain(NETWORKS) {
            if let Some(o) = s.get(kind, id) {
                line(format!("get {kind} {id}: {o:?}"));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn replicas_applying_one_log_end_identical(log in log(), cut in 0usize..40) {
        let cut = cut.min(log.len());
        let mut whole = State::default();
        let mut restarted = State::default();
        for (i, req) in log.iter().enumerate() {
            let index = i as u64 + 1;
            if i == cut {
                restarted = State::from_bytes(&restarted.to_bytes()).expect("snapshot reads");
            }
            let a = whole.apply(index, req.clone());
            let b = restarted.apply(index, req.clone());
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"), "entry {} answered differently", index);
        }
        let restored = State::from_bytes(&whole.to_bytes()).expect("snapshot reads");
        let seen = observe(&whole);
        prop_assert_eq!(&seen, &observe(&restarted), "restarted from a snapshot at {}", cut);
        prop_assert_eq!(&seen, &observe(&restored), "restored from the final snapshot");
    }
}
