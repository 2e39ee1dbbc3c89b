use std::collections::BTreeMap;

use proto::{
    Endpoint, EndpointSpec, Node, NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState,
    NodeStatus, Placement, PlacementPreference, PortConfig, PortProtocol, PublishMode,
    ResourceRequirements, Resources, Task, TaskSpec, TaskState, TaskStatus,
};

use super::*;
use crate::store::Object;

const GIB: i64 = 1 << 30;
const CPU: i64 = 1_000_000_000;

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        spec: Some(NodeSpec::default()),
        description: Some(NodeDescription {
            hostname: format!("host-{id}"),
            resources: Some(Resources {
                nano_cpus: 4 * CPU,
                memory_bytes: 8 * GIB,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            addr: "10.0.0.1".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, service: &str) -> Task {
    Task {
        id: id.into(),
        service_id: service.into(),
        spec: Some(TaskSpec::default()),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_placement(mut t: Task, p: Placement) -> Task {
    t.spec.get_or_insert_with(Default::default).placement = Some(p);
    t
}

fn with_reservation(mut t: Task, cpus: i64, mem: i64) -> Task {
    t.spec.get_or_insert_with(Default::default).resources = Some(ResourceRequirements {
        limits: None,
        reservations: Some(Resources {
            nano_cpus: cpus,
            memory_bytes: mem,
        }),
    });
    t
}

fn with_host_port(mut t: Task, port: u32) -> Task {
    let pc = PortConfig {
        protocol: PortProtocol::Tcp as i32,
        target_port: 80,
        published_port: port,
        publish_mode: PublishMode::Host as i32,
        ..Default::default()
    };
    t.endpoint = Some(Endpoint {
        spec: Some(EndpointSpec {
            ports: vec![pc.clone()],
            ..Default::default()
        }),
        ports: vec![pc],
        ..Default::default()
    });
    t
}

fn in_state(mut t: Task, node: &str, state: TaskState) -> Task {
    t.node_id = node.into();
    t.status.get_or_insert_with(Default::default).state = state as i32;
    t
}

async fn setup(nodes: Vec<Node>, tasks: Vec<Task>) -> Store {
    let store = Store::memory();
    let mut ops: Vec<Op> = nodes.into_iter().map(|n| Op::Create(n.into())).collect();
    ops.extend(tasks.into_iter().map(|t| Op::Create(Object::Task(t))));
    store.write(ops).await.expect("setup write");
    store
}

fn tasks_of(store: &Store, service: &str) -> Vec<Task> {
    store.read().tasks_of_service(service).cloned().collect()
}

/// Assigned tasks of `service` per node.
fn spread(store: &Store, service: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks_of(store, service) {
        if t.state() == TaskState::Assigned {
            *m.entry(t.node_id.clone()).or_insert(0) += 1;
        }
    }
    m
}

fn err_of(store: &Store, id: &str) -> String {
    let st = store.read();
    let t = st.task(id).expect("task exists");
    assert_eq!(t.state(), TaskState::Pending, "{id} stays pending");
    t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default()
}

fn n_tasks(n: usize, service: &str) -> Vec<Task> {
    (0..n)
        .map(|i| task(&format!("{service}-t{i:03}"), service))
        .collect()
}

#[tokio::test]
async fn spreads_evenly() {
    let store = setup(vec![node("n1"), node("n2"), node("n3")], n_tasks(6, "s1")).await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 6,
            unschedulable: 0
        }
    );
    assert_eq!(
        spread(&store, "s1").values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    let t = store.read().task("s1-t000").cloned().unwrap();
    assert_eq!(t.status.unwrap().message, "scheduler assigned task to node");

    let store = setup(vec![node("n1"), node("n2"), node("n3")], n_tasks(10, "s1")).await;
    Scheduler::new(store.clone()).pass().await.unwrap();
    let mut counts: Vec<usize> = spread(&store, "s1").values().copied().collect();
    counts.sort();
    assert_eq!(counts, vec![3, 3, 4]);
}

#[tokio::test]
async fn prefers_nodes_with_fewer_tasks_of_the_service_then_overall() {
    // n1 already runs 2 tasks of s1, n2 runs 3 tasks of another service, n3 runs 1 of s1.
    let mut tasks = vec![
        in_state(task("old1", "s1"), "n1", TaskState::Running),
        in_state(task("old2", "s1"), "n1", TaskState::Running),
        in_state(task("old3", "s1"), "n3", TaskState::Running),
        in_state(task("x1", "other"), "n2", TaskState::Running),
        in_state(task("x2", "other"), "n2", TaskState::Running),
        in_state(task("x3", "other"), "n2", TaskState::Running),
        // Terminal tasks do not count.
        in_state(task("dead1", "s1"), "n2", TaskState::Failed),
    ];
    tasks.push(task("new1", "s1"));
    tasks.push(task("new2", "s1"));
    let store = setup(vec![node("n1"), node("n2"), node("n3")], tasks).await;
    Scheduler::new(store.clone()).pass().await.unwrap();
    let st = store.read();
    let mut placed: Vec<String> = ["new1", "new2"]
        .iter()
        .map(|id| st.task(id).unwrap().node_id.clone())
        .collect();
    placed.sort();
    // n2 has 0 tasks of s1 → first; then n2 (1 of s1, 4 total) vs n3 (1 of s1, 1 total) → n3.
    assert_eq!(placed, vec!["n2", "n3"]);
}

#[tokio::test]
async fn unavailable_nodes_get_nothing() {
    let mut paused = node("n1");
    paused.spec.as_mut().unwrap().availability = NodeAvailability::Pause as i32;
    let mut drained = node("n2");
    drained.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    let mut down = node("n3");
    down.status.as_mut().unwrap().state = NodeState::Down as i32;
    let store = setup(vec![paused, drained, down, node("n4")], n_tasks(4, "s1")).await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(stats.assigned, 4);
    assert_eq!(
        spread(&store, "s1"),
        BTreeMap::from([("n4".to_string(), 4)])
    );
}

#[tokio::test]
async fn no_nodes_at_all_and_none_available() {
    let store = setup(vec![], vec![task("t1", "s1")]).await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 0,
            unschedulable: 1
        }
    );
    assert_eq!(err_of(&store, "t1"), "no suitable node");

    let mut a = node("n1");
    a.status.as_mut().unwrap().state = NodeState::Down as i32;
    let store = setup(vec![a], vec![task("t1", "s1")]).await;
    Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        err_of(&store, "t1"),
        "no suitable node (1 node not available for new tasks)"
    );
}

#[tokio::test]
async fn constraints() {
    let mut a = node("n1");
    a.spec
        .as_mut()
        .unwrap()
        .labels
        .insert("zone".into(), "a".into());
    let mut b = node("n2");
    b.spec
        .as_mut()
        .unwrap()
        .labels
        .insert("zone".into(), "b".into());
    let mut m = node("n3");
    m.role = NodeRole::Manager as i32;
    m.spec
        .as_mut()
        .unwrap()
        .labels
        .insert("zone".into(), "a".into());
    let zone_a = |id: &str| {
        with_placement(
            task(id, "za"),
            Placement {
                constraints: vec!["node.labels.zone==a".into()],
                ..Default::default()
            },
        )
    };
    let workers_a = |id: &str| {
        with_placement(
            task(id, "wa"),
            Placement {
                constraints: vec!["node.labels.zone==a".into(), "node.role!=manager".into()],
                ..Default::default()
            },
        )
    };
    let nowhere = with_placement(
        task("nowhere", "nw"),
        Placement {
            constraints: vec!["node.labels.zone==c".into()],
            ..Default::default()
        },
    );
    let store = setup(
        vec![a, b, m],
        vec![
            zone_a("za1"),
            zone_a("za2"),
            zone_a("za3"),
            zone_a("za4"),
            workers_a("wa1"),
            workers_a("wa2"),
            nowhere,
        ],
    )
    .await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 6,
            unschedulable: 1
        }
    );
    assert_eq!(
        spread(&store, "za"),
        BTreeMap::from([("n1".to_string(), 2), ("n3".to_string(), 2)])
    );
    assert_eq!(
        spread(&store, "wa"),
        BTreeMap::from([("n1".to_string(), 2)])
    );
    assert_eq!(
        err_of(&store, "nowhere"),
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    );
}

#[tokio::test]
async fn insufficient_resources() {
    // Each node has 4 CPUs: 3-CPU tasks fit once per node.
    let big = |id: &str| with_reservation(task(id, "big"), 3 * CPU, GIB);
    let store = setup(
        vec![node("n1"), node("n2")],
        vec![big("b1"), big("b2"), big("b3")],
    )
    .await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 2,
            unschedulable: 1
        }
    );
    assert_eq!(
        err_of(&store, "b3"),
        "no suitable node (insufficient resources on 2 nodes)"
    );

    // Reservations of running tasks count; a memory-only reservation too.
    let store = setup(
        vec![node("n1")],
        vec![
            in_state(
                with_reservation(task("r", "x"), 0, 7 * GIB),
                "n1",
                TaskState::Running,
            ),
            with_reservation(task("m", "y"), 0, 2 * GIB),
        ],
    )
    .await;
    Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        err_of(&store, "m"),
        "no suitable node (insufficient resources on 1 node)"
    );
}

#[tokio::test]
async fn host_port_conflicts() {
    let store = setup(
        vec![node("n1"), node("n2")],
        vec![
            in_state(
                with_host_port(task("old", "web"), 8080),
                "n1",
                TaskState::Running,
            ),
            with_host_port(task("p1", "web2"), 8080),
            with_host_port(task("p2", "web2"), 8080),
            // Another port is free everywhere.
            with_host_port(task("q1", "web3"), 9090),
        ],
    )
    .await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 2,
            unschedulable: 1
        }
    );
    let st = store.read();
    let p: Vec<&Task> = ["p1", "p2"].iter().map(|id| st.task(id).unwrap()).collect();
    let placed: Vec<&&Task> = p
        .iter()
        .filter(|t| t.state() == TaskState::Assigned)
        .collect();
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].node_id, "n2");
    let pending = p.iter().find(|t| t.state() == TaskState::Pending).unwrap();
    assert_eq!(
        pending.status.as_ref().unwrap().err,
        "no suitable node (host-mode port already in use on 2 nodes)"
    );
    assert_eq!(st.task("q1").unwrap().state(), TaskState::Assigned);
}

#[tokio::test]
async fn mixed_reasons_are_sorted_by_count() {
    let mut down = node("n1");
    down.status.as_mut().unwrap().state = NodeState::Down as i32;
    let mut b = node("n2");
    b.spec
        .as_mut()
        .unwrap()
        .labels
        .insert("zone".into(), "b".into());
    let mut c = node("n3");
    c.spec
        .as_mut()
        .unwrap()
        .labels
        .insert("zone".into(), "b".into());
    let t = with_placement(
        task("t1", "s"),
        Placement {
            constraints: vec!["node.labels.zone==a".into()],
            ..Default::default()
        },
    );
    let store = setup(vec![down, b, c], vec![t]).await;
    Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        err_of(&store, "t1"),
        "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)"
    );
}

#[tokio::test]
async fn max_replicas_per_node() {
    let t = |id: &str| {
        with_placement(
            task(id, "s"),
            Placement {
                max_replicas: 1,
                ..Default::default()
            },
        )
    };
    let store = setup(vec![node("n1"), node("n2")], vec![t("a"), t("b"), t("c")]).await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 2,
            unschedulable: 1
        }
    );
    assert_eq!(
        err_of(&store, "c"),
        "no suitable node (max replicas per node limit exceed)"
    );
}

#[tokio::test]
async fn pre_assigned_global_tasks() {
    let mut down = node("n2");
    down.status.as_mut().unwrap().state = NodeState::Down as i32;
    let mut g1 = task("g1", "glob");
    g1.node_id = "n1".into();
    let mut g2 = task("g2", "glob");
    g2.node_id = "n2".into();
    let mut g3 = with_reservation(task("g3", "glob2"), 8 * CPU, 0);
    g3.node_id = "n1".into();
    let store = setup(vec![node("n1"), down], vec![g1, g2, g3]).await;
    let stats = Scheduler::new(store.clone()).pass().await.unwrap();
    assert_eq!(
        stats,
        PassStats {
            assigned: 1,
            unschedulable: 2
        }
    );
    let st = store.read();
    let t1 = st.task("g1").unwrap();
    assert_eq!(
        (t1.state(), t1.node_id.as_str()),
        (TaskState::Assigned, "n1")
    );
    drop(st);
    assert_eq!(err_of(&store, "g2"), "1 node not available for new tasks");
    assert_eq!(err_of(&store, "g3"), "insufficient resources on 1 node");
}

#[tokio::test]
async fn ignores_tasks_not_to_run_and_does_not_rewrite_errors() {
    let mut stopping = task("stop", "s");
    stopping.desired_state = TaskState::Shutdown as i32;
    let store = setup(vec![], vec![stopping, task("t", "s")]).await;
    let s = Scheduler::new(store.clone());
    s.pass().await.unwrap();
    assert_eq!(err_of(&store, "stop"), "");
    let v = store.read().task("t").unwrap().version();
    s.pass().await.unwrap();
    assert_eq!(
        store.read().task("t").unwrap().version(),
        v,
        "same error: no write"
    );

    // A node appears: the next pass places the task and clears the error.
    store
        .write(vec![Op::Create(node("n1").into())])
        .await
        .unwrap();
    let stats = s.pass().await.unwrap();
    assert_eq!(stats.assigned, 1);
    let st = store.read();
    let t = st.task("t").unwrap();
    assert_eq!(t.state(), TaskState::Assigned);
    assert_eq!(t.status.as_ref().unwrap().err, "");
    assert_eq!(st.task("stop").unwrap().state(), TaskState::Pending);
}

#[tokio::test]
async fn spread_preference_over_label_values() {
    // Zone a has 3 nodes, zone b has 1: with spread=node.labels.zone, 4 tasks go 2 + 2.
    let mut nodes = Vec::new();
    for (id, zone) in [("n1", "a"), ("n2", "a"), ("n3", "a"), ("n4", "b")] {
        let mut n = node(id);
        n.spec
            .as_mut()
            .unwrap()
            .labels
            .insert("zone".into(), zone.into());
        nodes.push(n);
    }
    let tasks = (0..4)
        .map(|i| {
            with_placement(
                task(&format!("t{i}"), "s"),
                Placement {
                    preferences: vec![PlacementPreference {
                        spread_descriptor: "node.labels.zone".into(),
                    }],
                    ..Default::default()
                },
            )
        })
        .collect();
    let store = setup(nodes, tasks).await;
    Scheduler::new(store.clone()).pass().await.unwrap();
    let s = spread(&store, "s");
    assert_eq!(s.get("n4"), Some(&2), "{s:?}");
    assert_eq!(s.values().sum::<usize>(), 4);
    assert!(
        s.iter().filter(|(k, _)| *k != "n4").all(|(_, v)| *v == 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn run_loop_places_tasks_created_later() {
    let store = setup(vec![node("n1"), node("n2")], vec![]).await;
    let handle = tokio::spawn(Scheduler::new(store.clone()).run());
    store
        .write(
            n_tasks(4, "s1")
                .into_iter()
                .map(|t| Op::Create(t.into()))
                .collect(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if store.read().count_in_state(TaskState::Assigned) == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks were not assigned by the run loop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An unplaceable task gets its error, then is placed once a node frees up.
    let t = with_reservation(task("big", "s2"), 4 * CPU, 0);
    store
        .write(vec![
            Op::Create(
                in_state(
                    with_reservation(task("hog1", "h"), 4 * CPU, 0),
                    "n1",
                    TaskState::Running,
                )
                .into(),
            ),
            Op::Create(
                in_state(
                    with_reservation(task("hog2", "h"), 4 * CPU, 0),
                    "n2",
                    TaskState::Running,
                )
                .into(),
            ),
        ])
        .await
        .unwrap();
    store.write(vec![Op::Create(t.into())]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let err = store
            .read()
            .task("big")
            .and_then(|t| t.status.clone())
            .map(|s| s.err)
            .unwrap_or_default();
        if err == "no suitable node (insufficient resources on 2 nodes)" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduling error set: {err:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store
        .propose(Request::best_effort(vec![Op::SetTaskStatus {
            task_id: "hog1".into(),
            status: TaskStatus {
                state: TaskState::Complete as i32,
                ..Default::default()
            },
        }]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = store.read().task("big").cloned().unwrap();
        if t.state() == TaskState::Assigned {
            assert_eq!(t.node_id, "n1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task not placed after resources were freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.abort();
}
