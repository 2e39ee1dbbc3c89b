//! Property: a scheduling pass never breaks a placement rule. Random clusters (nodes ready or
//! not, active or not, with resources and a zone label; tasks already running, some of them
//! reserving resources or holding a host port) and random services' PENDING tasks (with
//! constraints, reservations, max replicas per node, a host-mode port) are planned; every
//! assignment is then checked against the rules computed here from the state alone:
//! the node is ready and active, the constraints hold, the node's reservations stay within its
//! resources, at most `max_replicas` tasks of the service run on it, and no host port is
//! held twice.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use proto::{
    Endpoint, Node, NodeAvailability, NodeDescription, NodeSpec, NodeState, NodeStatus, Placement,
    PortConfig, PortProtocol, PublishMode, ResourceRequirements, Resources, Task, TaskSpec,
    TaskState, TaskStatus,
};

use super::plan::plan;
use crate::store::{Object, Op, Request, State};

const CPU: i64 = 1_000_000_000;
const GIB: i64 = 1 << 30;
const HOST_PORT: u32 = 8080;

/// A constraint as generated: its text for the task, and its meaning checked here.
#[derive(Clone, Copy, Debug)]
enum Rule {
    ZoneIs(&'static str),
    ZoneIsNot(&'static str),
    Worker,
}

impl Rule {
    fn text(self) -> String {
        match self {
            Rule::ZoneIs(z) => format!("node.labels.zone=={z}"),
            Rule::ZoneIsNot(z) => format!("node.labels.zone != {z}"),
            Rule::Worker => "node.role==worker".into(),
        }
    }

    fn holds(self, n: &Node) -> bool {
        let zone = n.spec.as_ref().and_then(|s| s.labels.get("zone"));
        match self {
            Rule::ZoneIs(z) => zone.is_some_and(|v| v == z),
            Rule::ZoneIsNot(z) => zone.is_none_or(|v| v != z),
            Rule::Worker => n.role == proto::NodeRole::Worker as i32,
        }
    }
}

#[derive(Clone, Debug)]
struct ServiceRules {
    rules: Vec<Rule>,
    cpu: i64,
    mem: i64,
    max_replicas: u64,
    host_port: bool,
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        prop::sample::select(&["a", "b"][..]).prop_map(Rule::ZoneIs),
        prop::sample::select(&["a", "b"][..]).prop_map(Rule::ZoneIsNot),
        Just(Rule::Worker),
    ]
}

fn service_rules() -> impl Strategy<Value = ServiceRules> {
    (
        prop::collection::vec(rule(), 0..3),
        prop::sample::select(&[0, CPU / 2, CPU, 2 * CPU][..]),
        prop::sample::select(&[0, GIB / 2, GIB, 3 * GIB][..]),
        0u64..4,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(rules, cpu, mem, max_replicas, host_port)| ServiceRules {
            rules,
            cpu,
            mem,
            max_replicas,
            host_port,
        })
}

fn node(i: usize) -> impl Strategy<Value = Node> {
    (
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.85),
        prop::option::of(prop::sample::select(&["a", "b"][..])),
        any::<bool>(),
        0i64..5,
        0i64..9,
    )
        .prop_map(move |(ready, active, zone, worker, cpus, gibs)| Node {
            id: format!("n{i}"),
            role: if worker {
                proto::NodeRole::Worker as i32
            } else {
                proto::NodeRole::Manager as i32
            },
            spec: Some(NodeSpec {
                availability: if active {
                    NodeAvailability::Active as i32
                } else {
                    NodeAvailability::Drain as i32
                },
                labels: zone
                    .map(|z| [("zone".to_string(), z.to_string())].into())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                resources: Some(Resources {
                    nano_cpus: cpus * CPU,
                    memory_bytes: gibs * GIB,
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: if ready {
                    NodeState::Ready as i32
                } else {
                    NodeState::Down as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        })
}

fn task(id: String, service: usize, r: &ServiceRules) -> Task {
    let mut spec = TaskSpec {
        placement: Some(Placement {
            constraints: r.rules.iter().map(|c| c.text()).collect(),
            max_replicas: r.max_replicas,
            ..Default::default()
        }),
        ..Default::default()
    };
    if r.cpu > 0 || r.mem > 0 {
        spec.resources = Some(ResourceRequirements {
            limits: None,
            reservations: Some(Resources {
                nano_cpus: r.cpu,
                memory_bytes: r.mem,
            }),
        });
    }
    let endpoint = r.host_port.then(|| {
        let pc = PortConfig {
            protocol: PortProtocol::Tcp as i32,
            target_port: 80,
            published_port: HOST_PORT,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        };
        Endpoint {
            ports: vec![pc],
            ..Default::default()
        }
    });
    Task {
        id,
        service_id: format!("s{service}"),
        spec: Some(spec),
        endpoint,
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A cluster: nodes, services' rules, tasks already placed, tasks pending.
#[derive(Debug)]
struct Cluster {
    nodes: Vec<Node>,
    services: Vec<ServiceRules>,
    tasks: Vec<Task>,
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (1usize..7, prop::collection::vec(service_rules(), 1..4))
        .prop_flat_map(|(n, services)| {
            let nodes: Vec<_> = (0..n).map(node).collect();
            let s = services.len();
            let placed = prop::collection::vec(
                (
                    0..s,
                    0..n,
                    prop::sample::select(
                        &[
                            TaskState::Assigned,
                            TaskState::Running,
                            TaskState::Complete,
                            TaskState::Failed,
                        ][..],
                    ),
                    prop::bool::weighted(0.8),
                ),
                0..12,
            );
            let pending = prop::collection::vec(0..s, 0..16);
            (nodes, Just(services), placed, pending)
        })
        .prop_map(|(nodes, services, placed, pending)| {
            let mut tasks = Vec::new();
            for (i, (s, n, st, running)) in placed.into_iter().enumerate() {
                let mut t = task(format!("old{i:02}"), s, &services[s]);
                t.node_id = format!("n{n}");
                t.status.as_mut().expect("status").state = st as i32;
                if !running {
                    t.desired_state = TaskState::Shutdown as i32;
                }
                tasks.push(t);
            }
            for (i, s) in pending.into_iter().enumerate() {
                tasks.push(task(format!("new{i:02}"), s, &services[s]));
            }
            Cluster {
                nodes,
                services,
                tasks,
            }
        })
}

fn reservation(t: &Task) -> (i64, i64) {
    t.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map_or((0, 0), |r| (r.nano_cpus, r.memory_bytes))
}

/// Holds its node's resources and ports: placed and not yet stopped.
fn holds(t: &Task) -> bool {
    let s = t.status.as_ref().map_or(0, |s| s.state);
    !t.node_id.is_empty() && (TaskState::Assigned as i32..=TaskState::Running as i32).contains(&s)
}

fn state_of(c: &Cluster) -> State {
    let mut ops: Vec<Op> = c
        .nodes
        .iter()
        .cloned()
        .map(|n| Op::Create(n.into()))
        .collect();
    ops.extend(c.tasks.iter().cloned().map(|t| Op::Create(Object::Task(t))));
    let mut state = State::default();
    let resp = state.apply(
        1,
        Request {
            ops,
            atomic: true,
            now_ms: 0,
        },
    );
    resp.into_objects().expect("the setup batch applies");
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_pass_never_breaks_a_placement_rule(c in cluster()) {
        let state = state_of(&c);
        let p = plan(&state);
        let nodes: HashMap<&str, &Node> = c.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let tasks: HashMap<&str, &Task> = c.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut placed: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
        for (task_id, node_id) in &p.assign {
            let t = tasks[task_id.as_str()];
            prop_assert!(t.node_id.is_empty(), "{} was placed already", task_id);
            prop_assert_eq!(t.state(), TaskState::Pending);
            let n = nodes.get(node_id.as_str()).copied();
            prop_assert!(n.is_some(), "{} assigned to unknown node {}", task_id, node_id);
            let n = n.expect("checked");
            prop_assert!(
                n.state() == NodeState::Ready && n.availability() == NodeAvailability::Active,
                "{} on {} which is not ready and active", task_id, node_id
            );
            let s: usize = t.service_id[1..].parse().expect("service index");
            for rule in &c.services[s].rules {
                prop_assert!(rule.holds(n), "{} on {} breaks {:?}", task_id, node_id, rule);
            }
            placed.entry(node_id.as_str()).or_default().push(t);
        }
        let mut once: Vec<&String> = p.assign.iter().map(|(t, _)| t).collect();
        once.sort();
        once.dedup();
        prop_assert_eq!(once.len(), p.assign.len(), "a task assigned twice");

        for (node_id, new) in &placed {
            let n = nodes[node_id];
            let res = n.description.as_ref().and_then(|d| d.resources.as_ref()).expect("res");
            let old: Vec<&Task> = c
                .tasks
                .iter()
                .filter(|t| t.node_id == *node_id && holds(t))
                .collect();
            let on_node = || old.iter().chain(new.iter()).copied();
            if new.iter().any(|t| reservation(t) != (0, 0)) {
                let (cpu, mem) = on_node()
                    .map(reservation)
                    .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
                prop_assert!(
                    cpu <= res.nano_cpus && mem <= res.memory_bytes,
                    "{} reserves {}/{} of {}/{}", node_id, cpu, mem, res.nano_cpus, res.memory_bytes
                );
            }
            for (s, rules) in c.services.iter().enumerate() {
                let service = format!("s{s}");
                let new_here = new.iter().filter(|t| t.service_id == service).count();
                if rules.max_replicas == 0 || new_here == 0 {
                    continue;
                }
                let total = on_node()
                    .filter(|t| t.service_id == service && t.desired_state <= TaskState::Running as i32)
                    .count();
                prop_assert!(
                    total as u64 <= rules.max_replicas,
                    "{} runs {} tasks of {} (max {})", node_id, total, service, rules.max_replicas
                );
            }
            if new.iter().any(|t| t.endpoint.is_some()) {
                let holders = on_node().filter(|t| t.endpoint.is_some()).count();
                prop_assert!(holders <= 1, "{} holds host port {} {} times", node_id, HOST_PORT, holders);
            }
        }
    }

    /// The grouped pass (one filter pass per task group, then a heap) decides exactly what
    /// the task-by-task reference decides: the same node for every task, in the same order,
    /// and the same tasks left PENDING.
    #[test]
    fn a_grouped_pass_places_like_a_task_by_task_scheduler(c in cluster()) {
        let state = state_of(&c);
        let p = plan(&state);
        let (want, unplaced) = reference(&c);
        prop_assert_eq!(&p.assign, &want);
        prop_assert_eq!(p.unschedulable, unplaced);
    }
}

/// What a task-by-task scheduler (SwarmKit's way: every node filtered again for every task)
/// decides for the cluster: each PENDING task in turn (by service, then id), onto the ready
/// and active node that passes every filter with the fewest tasks of the service, then the
/// fewest tasks, then the smallest id. Returns (task id, node id) in decision order and how
/// many tasks fit nowhere.
fn reference(c: &Cluster) -> (Vec<(String, String)>, usize) {
    struct Usage {
        cpu: i64,
        mem: i64,
        total: u32,
        ports: u32,
        per_service: HashMap<String, u32>,
    }
    let mut nodes: Vec<&Node> = c.nodes.iter().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut usage: Vec<Usage> = nodes
        .iter()
        .map(|n| {
            let r = n.description.as_ref().and_then(|d| d.resources.as_ref());
            Usage {
                cpu: r.map_or(0, |r| r.nano_cpus),
                mem: r.map_or(0, |r| r.memory_bytes),
                total: 0,
                ports: 0,
                per_service: HashMap::new(),
            }
        })
        .collect();
    let running = TaskState::Running as i32;
    for t in c.tasks.iter().filter(|t| holds(t)) {
        let Some(i) = nodes.iter().position(|n| n.id == t.node_id) else {
            continue;
        };
        let u = &mut usage[i];
        let (cpu, mem) = reservation(t);
        u.cpu -= cpu;
        u.mem -= mem;
        u.ports += u32::from(t.endpoint.is_some());
        if t.desired_state <= running {
            u.total += 1;
            *u.per_service.entry(t.service_id.clone()).or_default() += 1;
        }
    }
    let mut pending: Vec<&Task> = c
        .tasks
        .iter()
        .filter(|t| t.node_id.is_empty() && t.desired_state <= running)
        .collect();
    pending.sort_by(|a, b| (&a.service_id, &a.id).cmp(&(&b.service_id, &b.id)));
    let mut out = Vec::new();
    let mut unplaced = 0;
    for t in pending {
        let s: usize = t.service_id[1..].parse().expect("service index");
        let rules = &c.services[s];
        let (cpu, mem) = reservation(t);
        let best = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                let u = &usage[*i];
                let svc = u.per_service.get(&t.service_id).copied().unwrap_or(0);
                n.state() == NodeState::Ready
                    && n.availability() == NodeAvailability::Active
                    && ((cpu == 0 && mem == 0) || (cpu <= u.cpu && mem <= u.mem))
                    && rules.rules.iter().all(|r| r.holds(n))
                    && !(t.endpoint.is_some() && u.ports > 0)
                    && (rules.max_replicas == 0 || u64::from(svc) < rules.max_replicas)
            })
            .min_by_key(|(i, n)| {
                let u = &usage[*i];
                let svc = u.per_service.get(&t.service_id).copied().unwrap_or(0);
                (svc, u.total, n.id.as_str())
            })
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let u = &mut usage[i];
                u.cpu -= cpu;
                u.mem -= mem;
                u.total += 1;
                u.ports += u32::from(t.endpoint.is_some());
                *u.per_service.entry(t.service_id.clone()).or_default() += 1;
                out.push((t.id.clone(), nodes[i].id.clone()));
            }
            None => unplaced += 1,
        }
    }
    (out, unplaced)
}
