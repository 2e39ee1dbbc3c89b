//! The global orchestrator: one task per eligible node for each global service.
//!
//! A node is eligible when it exists, is not DOWN, is not drained, and matches the service's
//! placement constraints. Each round, per global service:
//! - eligible node without an active task (desired ≤ COMPLETE): create one, pre-assigned to
//!   the node (slot 0) — unless the node is paused (`pause`: no new tasks);
//! - several active tasks on a node: keep the best, shut down the others;
//! - node no longer eligible (or removed): shut down the service's tasks there;
//! - tasks of an old spec are the update orchestrator's (`update.rs`); a node in the middle of
//!   a start-first replacement is not a duplicate.
//!
//! Dead tasks (ended while still wanted) belong to the restart supervisor.

use std::collections::HashMap;
use std::time::Duration;

use proto::{NodeAvailability, NodeState, Service, Task, TaskState};

use super::reconciler::{run_reconciler, Plan};
use super::task::{is_active, new_task, pick_kept, shutdown_op, start_first_pending};
use crate::scheduler::constraint::{node_matches, parse_constraints, Constraint};
use crate::store::{Object, Op, State, Store};

pub struct GlobalOrchestrator {
    store: Store,
}

impl GlobalOrchestrator {
    pub fn new(store: Store) -> Self {
        GlobalOrchestrator { store }
    }

    pub async fn run(self) {
        run_reconciler(
            self.store,
            "global-orchestrator",
            Duration::from_millis(20),
            reconcile,
        )
        .await
    }
}

/// What the global orchestrator wants written for the current state.
pub fn reconcile(state: &State, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    for svc in state.services().filter(|s| s.is_global()) {
        reconcile_service(state, svc, now_ms, &mut plan);
    }
    plan
}

/// The service's placement constraints; None (no node eligible) when one does not parse
/// (the Control API validates them, so only an old stored spec could).
pub(super) fn constraints_of(svc: &Service) -> Option<Vec<Constraint>> {
    let exprs: &[String] = svc
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map_or(&[], |p| p.constraints.as_slice());
    match parse_constraints(exprs) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(service = %svc.name(), error = %e, "invalid constraints: no eligible node");
            None
        }
    }
}

fn reconcile_service(state: &State, svc: &Service, now_ms: i64, plan: &mut Plan) {
    let version = svc.spec_version;
    let constraints = constraints_of(svc);

    let mut by_node: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in state.tasks_of_service(&svc.id).filter(|t| is_active(t)) {
        if t.node_id.is_empty() {
            // Global tasks are created on their node; an unplaced one is left from another mode.
            plan.ops.push(shutdown_op(t));
        } else {
            by_node.entry(t.node_id.as_str()).or_default().push(t);
        }
    }

    for node in state.nodes() {
        let tasks = by_node.remove(node.id.as_str()).unwrap_or_default();
        let availability = node.availability();
        let eligible = node.state() != NodeState::Down
            && availability != NodeAvailability::Drain
            && constraints.as_ref().is_some_and(|c| node_matches(c, node));
        if !eligible {
            for t in tasks {
                plan.ops.push(shutdown_op(t));
            }
            continue;
        }
        let paused = availability == NodeAvailability::Pause;
        if start_first_pending(&tasks, version) {
            continue;
        }
        let Some(kept) = pick_kept(&tasks, version) else {
            if !paused {
                let t = new_task(svc, 0, &node.id, TaskState::Running, now_ms);
                plan.ops.push(Op::Create(Object::Task(t)));
            }
            continue;
        };
        for t in tasks.iter().filter(|t| t.id != kept.id) {
            plan.ops.push(shutdown_op(t));
        }
    }
    // Tasks on nodes that were removed from the store.
    for t in by_node.into_values().flatten() {
        plan.ops.push(shutdown_op(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use crate::store::Store;
    use proto::{NodeSpec, Placement};
    use std::collections::BTreeMap;

    async fn round(store: &Store) -> usize {
        let plan = reconcile(&store.read(), 1_000);
        let n = plan.ops.len() + plan.groups.len();
        apply(store, plan).await;
        n
    }

    /// A round of this orchestrator and of the update orchestrator.
    async fn with_updates(store: &Store) -> usize {
        let n = round(store).await;
        let plan = crate::orchestrator::update::reconcile(&store.read(), 1_000);
        let m = plan.ops.len() + plan.groups.len();
        apply(store, plan).await;
        n + m
    }

    fn nodes_of(store: &Store, svc: &str) -> Vec<String> {
        active(&store.read(), svc)
            .iter()
            .map(|t| t.node_id.clone())
            .collect()
    }

    #[tokio::test]
    async fn one_task_per_node_follows_joins_drain_and_down() {
        let store = Store::memory();
        put(
            &store,
            vec![
                global("g").into(),
                node("a", NodeState::Ready).into(),
                node("b", NodeState::Ready).into(),
            ],
        )
        .await;
        round(&store).await;
        assert_eq!(nodes_of(&store, "g"), vec!["a", "b"]);
        for t in active(&store.read(), "g") {
            assert_eq!(t.slot, 0);
            assert_eq!(t.desired(), TaskState::Running);
            assert_eq!(t.state(), TaskState::New);
        }
        assert_eq!(round(&store).await, 0, "converged");

        // A node joins.
        put(&store, vec![node("c", NodeState::Unknown).into()]).await;
        round(&store).await;
        assert_eq!(nodes_of(&store, "g"), vec!["a", "b", "c"]);

        // Drain b, b's task is shut down; c goes DOWN, same.
        let mut b = store.read().node("b").unwrap().clone();
        b.spec = Some(NodeSpec {
            availability: NodeAvailability::Drain as i32,
            ..Default::default()
        });
        store
            .write(vec![
                Op::Update {
                    object: b.into(),
                    check_version: false,
                },
                Op::SetNodeStatus {
                    node_id: "c".into(),
                    status: proto::NodeStatus {
                        state: NodeState::Down as i32,
                        ..Default::default()
                    },
                },
            ])
            .await
            .unwrap();
        round(&store).await;
        assert_eq!(nodes_of(&store, "g"), vec!["a"]);
        assert_eq!(store.read().task_count(), 3, "nothing new");

        // c comes back: a new task there.
        store
            .write(vec![Op::SetNodeStatus {
                node_id: "c".into(),
                status: proto::NodeStatus {
                    state: NodeState::Ready as i32,
                    ..Default::default()
                },
            }])
            .await
            .unwrap();
        round(&store).await;
        assert_eq!(nodes_of(&store, "g"), vec!["a", "c"]);
    }

    #[tokio::test]
    async fn constraints_pause_and_removed_nodes() {
        let store = Store::memory();
        let mut svc = global("g");
        svc.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
            constraints: vec!["node.labels.zone==east".into()],
            ..Default::default()
        });
        let mut a = node("a", NodeState::Ready);
        a.spec = Some(NodeSpec {
            labels: BTreeMap::from([("zone".to_string(), "east".to_string())]),
            ..Default::default()
        });
        let mut p = node("p", NodeState::Ready);
        p.spec = Some(NodeSpec {
            labels: BTreeMap::from([("zone".to_string(), "east".to_string())]),
            availability: NodeAvailability::Pause as i32,
            ..Default::default()
        });
        use TaskState::*;
        put(
            &store,
            vec![
                svc.into(),
                a.into(),
                p.into(),
                node("w", NodeState::Ready).into(),
                task("old", "g", 0, "gone", Running, Running).into(),
            ],
        )
        .await;
        round(&store).await;
        assert_eq!(
            nodes_of(&store, "g"),
            vec!["a"],
            "w does not match, p is paused"
        );
        assert_eq!(store.read().task("old").unwrap().desired(), Shutdown);
    }

    #[tokio::test]
    async fn spec_update_replaces_per_node_one_at_a_time() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                global("g").into(),
                node("a", NodeState::Ready).into(),
                node("b", NodeState::Ready).into(),
                task("ta", "g", 0, "a", Running, Running).into(),
                task("tb", "g", 0, "b", Running, Running).into(),
            ],
        )
        .await;
        let mut svc = store.read().service("g").unwrap().clone();
        svc.spec_version = 2;
        store
            .write(vec![Op::Update {
                object: svc.into(),
                check_version: true,
            }])
            .await
            .unwrap();
        with_updates(&store).await;
        let first: Vec<Task> = active(&store.read(), "g")
            .into_iter()
            .filter(|t| t.spec_version == 2)
            .collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].node_id, "a", "same node");
        assert_eq!(store.read().task("ta").unwrap().desired(), Shutdown);
        assert_eq!(
            with_updates(&store).await,
            0,
            "waits for the replacement to run"
        );
        store
            .write(vec![set_status(&first[0].id, Running, 0)])
            .await
            .unwrap();
        with_updates(&store).await;
        assert_eq!(store.read().task("tb").unwrap().desired(), Shutdown);
        assert!(active(&store.read(), "g")
            .iter()
            .all(|t| t.spec_version == 2));
        assert_eq!(nodes_of(&store, "g"), vec!["a", "b"]);
    }
}
