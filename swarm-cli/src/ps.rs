//! The task table of `service ps` and `node ps`:
//! `ID NAME IMAGE NODE DESIRED STATE CURRENT STATE ERROR PORTS`.
//!
//! Tasks are named `<service>.<slot>` (global: `<service>.<node id>`), sorted naturally by
//! that name and newest first within it; older tasks of a slot follow the current one,
//! their name indented with ` \_ `.

use std::collections::HashMap;

use proto::{Node, PublishMode, Service, Task, TaskState};

use crate::format::{self, current_state, display_image, ellipsis, natural_cmp, pretty};
use crate::table::Table;

pub const HEADER: [&str; 8] = [
    "ID",
    "NAME",
    "IMAGE",
    "NODE",
    "DESIRED STATE",
    "CURRENT STATE",
    "ERROR",
    "PORTS",
];

/// Names for ids: services and nodes (hostnames), looked up once per command, and the
/// published ports of each service that a node's own process listens on too.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub services: HashMap<String, String>,
    pub nodes: HashMap<String, String>,
    /// Service id → its shadowed ports (see [`port_shadows`]).
    pub shadows: HashMap<String, Vec<PortShadow>>,
}

/// A published port of a service that a process of a node listens on too: the mesh takes
/// its packets there (`Node.port_conflicts`).
#[derive(Debug, Clone, PartialEq)]
pub struct PortShadow {
    pub node_id: String,
    /// A host-mode port concerns the task on that node only; an ingress-mode port every task.
    pub host_mode: bool,
    /// "port 8080/tcp shadows nginx (pid 812) on node-3"
    pub text: String,
}

/// The shadowed published ports of each service: every node's reported conflicts matched to
/// the service publishing that port (a port is published by one service at most in ingress
/// mode; in host mode by those with a task on the node).
pub fn port_shadows(services: &[Service], nodes: &[Node]) -> HashMap<String, Vec<PortShadow>> {
    let mut out: HashMap<String, Vec<PortShadow>> = HashMap::new();
    for n in nodes {
        for c in &n.port_conflicts {
            for s in services {
                let ports = s.endpoint.as_ref().map(|e| e.ports.as_slice());
                for p in ports.unwrap_or_default().iter().filter(|p| {
                    p.published_port == c.port && p.protocol == c.protocol && p.published_port != 0
                }) {
                    let protocol = format::protocol_name(c.protocol);
                    let process = if c.process.is_empty() {
                        "a process"
                    } else {
                        c.process.as_str()
                    };
                    out.entry(s.id.clone()).or_default().push(PortShadow {
                        node_id: n.id.clone(),
                        host_mode: p.publish_mode == PublishMode::Host as i32,
                        text: format!(
                            "port {}/{protocol} shadows {process} on {}",
                            c.port,
                            n.hostname()
                        ),
                    });
                }
            }
        }
    }
    out
}

impl Names {
    fn service<'a>(&'a self, t: &'a Task) -> &'a str {
        if let Some(n) = self.services.get(&t.service_id) {
            return n;
        }
        if !t.service_name.is_empty() {
            return &t.service_name;
        }
        &t.service_id
    }

    pub(crate) fn node<'a>(&'a self, id: &'a str) -> &'a str {
        self.nodes.get(id).map_or(id, String::as_str)
    }

    /// The ERROR text of a task: its own error, else the ports of its service shadowed by a
    /// node's process, for a task meant to run (an ingress-mode port on any node, a host-mode
    /// port on the task's node).
    pub fn error(&self, t: &Task) -> String {
        let err = t.status.as_ref().map_or("", |s| s.err.as_str());
        if !err.is_empty() || t.desired() > TaskState::Running {
            return err.to_string();
        }
        let texts: Vec<&str> = self
            .shadows
            .get(&t.service_id)
            .into_iter()
            .flatten()
            .filter(|s| !s.host_mode || s.node_id == t.node_id)
            .map(|s| s.text.as_str())
            .collect();
        texts.join("; ")
    }
}

/// `<service>.<slot>` or, for global tasks, `<service>.<node id>`.
pub fn task_name(service: &str, t: &Task) -> String {
    if t.slot != 0 {
        format!("{service}.{}", t.slot)
    } else {
        format!("{service}.{}", t.node_id)
    }
}

fn created(t: &Task) -> i64 {
    t.meta.as_ref().map_or(0, |m| m.created_at)
}

/// The tasks in display order, each with its NAME cell (indented for history rows).
pub fn ordered<'a>(tasks: &'a [Task], names: &Names) -> Vec<(&'a Task, String)> {
    let mut named: Vec<(&Task, String)> = tasks
        .iter()
        .map(|t| (t, task_name(names.service(t), t)))
        .collect();
    // Stable: equal names and times keep the daemon's order.
    named.sort_by(|(ta, na), (tb, nb)| natural_cmp(na, nb).then(created(tb).cmp(&created(ta))));
    let mut prev: Option<String> = None;
    named
        .into_iter()
        .map(|(t, name)| {
            let cell = if prev.as_deref() == Some(name.as_str()) {
                format!(" \\_ {name}")
            } else {
                name.clone()
            };
            prev = Some(name);
            (t, cell)
        })
        .collect()
}

/// The ERROR cell: quoted, cut to 30 characters unless `no_trunc`.
pub fn error_cell(err: &str, trunc: bool) -> String {
    let e = if trunc {
        ellipsis(err, format::MAX_ERR_LEN)
    } else {
        err.to_string()
    };
    if e.is_empty() {
        e
    } else {
        format!("\"{e}\"")
    }
}

pub(crate) fn state_time(t: &Task) -> i64 {
    match t.status.as_ref().map(|s| s.timestamp) {
        Some(ts) if ts > 0 => ts,
        _ => t.meta.as_ref().map_or(0, |m| {
            if m.updated_at > 0 {
                m.updated_at
            } else {
                m.created_at
            }
        }),
    }
}

/// The rendered table.
pub fn table(tasks: &[Task], names: &Names, trunc: bool, now_ms: i64) -> String {
    let mut tbl = Table::new(HEADER);
    for (t, name) in ordered(tasks, names) {
        let image = t
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map_or("", |c| c.image.as_str());
        let status = t.status.clone().unwrap_or_default();
        let err = names.error(t);
        let desired = TaskState::try_from(t.desired_state).unwrap_or(TaskState::New);
        tbl.row([
            if trunc {
                format::truncate_id(&t.id).to_string()
            } else {
                t.id.clone()
            },
            name,
            if trunc {
                display_image(image)
            } else {
                image.to_string()
            },
            names.node(&t.node_id).to_string(),
            pretty(desired.display_name()),
            current_state(t.state(), state_time(t), now_ms),
            error_cell(&err, trunc),
            format::task_ports(&status.port_status),
        ]);
    }
    tbl.render()
}

/// Full task ids in display order (`-q`).
pub fn quiet(tasks: &[Task], names: &Names) -> String {
    ordered(tasks, names)
        .into_iter()
        .map(|(t, _)| format!("{}\n", t.id))
        .collect()
}

/// A `--filter` of `ps`: `desired-state=running|shutdown|accepted`, `node=`, `id=`, `name=`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    pub desired: Vec<TaskState>,
    pub nodes: Vec<String>,
    pub ids: Vec<String>,
    pub names: Vec<String>,
}

impl Filter {
    pub fn parse(list: &[String]) -> Result<Filter, String> {
        let mut f = Filter::default();
        for item in list {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("bad format of filter (expected name=value): {item}"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "desired-state" => f.desired.push(match v.trim().to_ascii_lowercase().as_str() {
                    "running" => TaskState::Running,
                    "shutdown" => TaskState::Shutdown,
                    "accepted" => TaskState::Accepted,
                    _ => {
                        return Err(format!(
                            "invalid filter 'desired-state={v}': only running, shutdown and accepted are supported"
                        ))
                    }
                }),
                "node" => f.nodes.push(v.to_string()),
                "id" => f.ids.push(v.to_string()),
                "name" => f.names.push(v.to_string()),
                other => return Err(format!("invalid filter '{other}'")),
            }
        }
        Ok(f)
    }

    /// Client-side check of the filters (ids by prefix, names by prefix of the task name,
    /// nodes by id prefix or hostname).
    pub fn keep(&self, t: &Task, names: &Names) -> bool {
        if !self.desired.is_empty() && !self.desired.contains(&t.desired()) {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.iter().any(|p| t.id.starts_with(p.as_str())) {
            return false;
        }
        if !self.names.is_empty() {
            let n = task_name(names.service(t), t);
            if !self.names.iter().any(|p| n.starts_with(p.as_str())) {
                return false;
            }
        }
        if !self.nodes.is_empty()
            && !self.nodes.iter().any(|n| {
                (!t.node_id.is_empty() && t.node_id.starts_with(n.as_str()))
                    || names.nodes.get(&t.node_id) == Some(n)
            })
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        created: i64,
        state: TaskState,
        desired: TaskState,
    ) -> Task {
        Task {
            id: id.into(),
            service_id: "svc1".into(),
            slot,
            node_id: node.into(),
            meta: Some(Meta {
                created_at: created,
                ..Default::default()
            }),
            desired_state: desired as i32,
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "nginx:latest@sha256:0123".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: state as i32,
                timestamp: created,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn names() -> Names {
        let mut n = Names::default();
        n.services.insert("svc1".into(), "web".into());
        n.nodes.insert("node1id".into(), "node-1".into());
        n
    }

    #[test]
    fn history_rows_are_grouped_under_their_slot() {
        use TaskState::*;
        let tasks = vec![
            task("aaa", 2, "node1id", 100, Running, Running),
            task("bbb", 1, "node1id", 50, Failed, Shutdown),
            task("ccc", 10, "node1id", 100, Running, Running),
            task("ddd", 1, "node1id", 200, Running, Running),
            task("eee", 1, "node1id", 10, Shutdown, Shutdown),
        ];
        let order: Vec<(String, String)> = ordered(&tasks, &names())
            .into_iter()
            .map(|(t, n)| (t.id.clone(), n))
            .collect();
        assert_eq!(
            order,
            [
                ("ddd".to_string(), "web.1".to_string()),
                ("bbb".into(), " \\_ web.1".into()),
                ("eee".into(), " \\_ web.1".into()),
                ("aaa".into(), "web.2".into()),
                ("ccc".into(), "web.10".into()),
            ]
        );
    }

    #[test]
    fn shadowed_ports_show_in_the_error_column() {
        use TaskState::*;
        let port = |published, protocol: PortProtocol, mode: PublishMode| PortConfig {
            published_port: published,
            target_port: 80,
            protocol: protocol as i32,
            publish_mode: mode as i32,
            ..Default::default()
        };
        let service = |id: &str, ports| Service {
            id: id.into(),
            endpoint: Some(Endpoint {
                ports,
                ..Default::default()
            }),
            ..Default::default()
        };
        let services = vec![
            service(
                "svc1",
                vec![port(8080, PortProtocol::Tcp, PublishMode::Ingress)],
            ),
            service(
                "svc2",
                vec![port(9090, PortProtocol::Tcp, PublishMode::Host)],
            ),
        ];
        let node = |id: &str, host: &str, conflicts: Vec<(u32, PortProtocol, &str)>| Node {
            id: id.into(),
            description: Some(NodeDescription {
                hostname: host.into(),
                ..Default::default()
            }),
            port_conflicts: conflicts
                .into_iter()
                .map(|(port, p, process)| PortConflict {
                    port,
                    protocol: p as i32,
                    process: process.into(),
                })
                .collect(),
            ..Default::default()
        };
        let nodes = vec![
            // 8080/udp is not published: no shadow.
            node(
                "n2",
                "node-2",
                vec![
                    (8080, PortProtocol::Tcp, "nginx (pid 812)"),
                    (8080, PortProtocol::Udp, "dnsmasq (pid 9)"),
                ],
            ),
            node("n3", "node-3", vec![(9090, PortProtocol::Tcp, "")]),
        ];
        let mut n = names();
        n.shadows = port_shadows(&services, &nodes);
        // Ingress mode: every task meant to run, on any node.
        let running = task("a", 1, "node1id", 1, Running, Running);
        assert_eq!(
            n.error(&running),
            "port 8080/tcp shadows nginx (pid 812) on node-2"
        );
        // A task's own error comes first; history rows are left alone.
        let mut failed = task("b", 1, "node1id", 1, Failed, Running);
        failed.status.as_mut().unwrap().err = "exit 1".into();
        assert_eq!(n.error(&failed), "exit 1");
        assert_eq!(n.error(&task("c", 1, "node1id", 1, Shutdown, Shutdown)), "");
        // Host mode: only the task on that node.
        let mut here = task("d", 1, "n3", 1, Running, Running);
        here.service_id = "svc2".into();
        assert_eq!(n.error(&here), "port 9090/tcp shadows a process on node-3");
        let mut elsewhere = here.clone();
        elsewhere.node_id = "n2".into();
        assert_eq!(n.error(&elsewhere), "");
        let table = table(&[running], &n, true, 2);
        assert!(
            table.contains("\"port 8080/tcp shadows nginx (…\""),
            "{table}"
        );
    }

    #[test]
    fn global_tasks_are_named_by_node() {
        let t = task("x", 0, "node1id", 1, TaskState::Running, TaskState::Running);
        assert_eq!(task_name("web", &t), "web.node1id");
    }

    #[test]
    fn table_matches_docker_columns() {
        use TaskState::*;
        let now = 1_000_000;
        let mut failed = task(
            "bbbbbbbbbbbbbbbbbbbbbbbbb",
            1,
            "node1id",
            now - 300_000,
            Rejected,
            Shutdown,
        );
        failed.status.as_mut().unwrap().err =
            "no suitable node (scheduling constraints not satisfied on 1 node)".into();
        let tasks = vec![
            task(
                "aaaaaaaaaaaaaaaaaaaaaaaaa",
                1,
                "node1id",
                now - 125_000,
                Running,
                Running,
            ),
            failed,
        ];
        let out = table(&tasks, &names(), true, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID             NAME        IMAGE          NODE      DESIRED STATE   CURRENT STATE            ERROR                              PORTS"
        );
        assert_eq!(
            lines[1],
            "aaaaaaaaaaaa   web.1       nginx:latest   node-1    Running         Running 2 minutes ago                                       "
        );
        assert_eq!(
            lines[2],
            "bbbbbbbbbbbb    \\_ web.1   nginx:latest   node-1    Shutdown        Rejected 5 minutes ago   \"no suitable node (scheduling …\"   "
        );
        let full = table(&tasks, &names(), false, now);
        assert!(full.contains("aaaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(full.contains("nginx:latest@sha256:0123"));
        assert!(
            full.contains("\"no suitable node (scheduling constraints not satisfied on 1 node)\"")
        );
        assert_eq!(
            quiet(&tasks, &names()),
            "aaaaaaaaaaaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbbbbbbbbb\n"
        );
    }

    #[test]
    fn ports_column_shows_the_host_ports_a_task_reported() {
        use proto::{PortConfig, PortProtocol, PublishMode};
        let mut t = task(
            "aaa",
            1,
            "node1id",
            0,
            TaskState::Running,
            TaskState::Running,
        );
        let port = |published: u32, target: u32, protocol: PortProtocol| PortConfig {
            published_port: published,
            target_port: target,
            protocol: protocol as i32,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        };
        t.status.as_mut().unwrap().port_status = vec![
            port(8080, 80, PortProtocol::Tcp),
            port(5353, 53, PortProtocol::Udp),
        ];
        let out = table(&[t], &names(), true, 1_000);
        let row = out.lines().nth(1).unwrap();
        assert!(row.ends_with("   *:8080->80/tcp,*:5353->53/udp"), "{row:?}");
    }

    #[test]
    fn filters() {
        use TaskState::*;
        let f = Filter::parse(&["desired-state=running".into()]).unwrap();
        assert!(f.keep(&task("a", 1, "node1id", 1, Running, Running), &names()));
        assert!(!f.keep(&task("b", 1, "node1id", 1, Shutdown, Shutdown), &names()));
        let f = Filter::parse(&["node=node-1".into()]).unwrap();
        assert!(f.keep(&task("a", 1, "node1id", 1, Running, Running), &names()));
        assert!(!f.keep(&task("a", 1, "other", 1, Running, Running), &names()));
        assert!(Filter::parse(&["color=red".into()]).is_err());
        assert!(Filter::parse(&["desired-state=sleeping".into()]).is_err());
        assert!(Filter::parse(&["nonsense".into()]).is_err());
    }
}
