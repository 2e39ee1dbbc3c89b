//! The task reaper (leader only): keeps the task history bounded and removes leftovers.
//!
//! - History: per slot of a replicated service (per node of a global service) at most
//!   `cluster.spec.orchestration.task_history_retention_limit` tasks are kept (≤ 0 or no
//!   cluster: 5), counting the current one, like SwarmKit: the oldest (by `created_at`)
//!   *finished* tasks beyond the limit are deleted. Finished: desired SHUTDOWN or later, and
//!   observed terminal, or never assigned (NEW/PENDING), or assigned to a node that is DOWN or
//!   removed. Tasks with desired ≤ COMPLETE are never deleted (they hold their slot). When the
//!   restart policy sets `max_attempts`, at least `max_attempts + 1` tasks are kept per slot
//!   (up to 100) so that the restart supervisor can count attempts from the store. Finished
//!   global tasks of nodes removed from the store are all deleted.
//! - Tasks whose service no longer exists: desired REMOVE (the agent stops them), deleted
//!   once terminal, never assigned, or on a node that is DOWN or removed.
//! - Tasks still non-terminal on a node DOWN for more than 24 h become ORPHANED. A node has
//!   no "down since" field: the time of the last change of the node object is used (the
//!   dispatcher writes DOWN once, when the node misses its heartbeats).

use std::time::Duration;

use proto::{NodeState, Service, Task, TaskState, TaskStatus};

use super::reconciler::{run_reconciler, Plan};
use super::task::{created_at, node_lost, tasks_by_slot, SlotKey};
use crate::store::{Kind, Op, State, Store};

/// Task history per slot when the cluster does not set one (Docker's default).
pub const DEFAULT_TASK_HISTORY: usize = 5;
/// Tasks of a node DOWN this long become ORPHANED.
pub const ORPHAN_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Cap on the history kept for counting restart attempts.
const MAX_HISTORY_FOR_RESTARTS: usize = 100;

pub const ORPHANED_MESSAGE: &str = "task orphaned: node down for more than 24 hours";

pub struct TaskReaper {
    store: Store,
}

impl TaskReaper {
    pub fn new(store: Store) -> Self {
        TaskReaper { store }
    }

    pub async fn run(self) {
        // Nothing here is urgent: one pass per second at most.
        run_reconciler(self.store, "task-reaper", Duration::from_secs(1), reconcile).await
    }
}

/// The cluster's task history limit (≤ 0 or no cluster: 5).
pub fn history_limit(state: &State) -> usize {
    let v = state
        .cluster()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.orchestration.as_ref())
        .map_or(0, |o| o.task_history_retention_limit);
    if v <= 0 {
        DEFAULT_TASK_HISTORY
    } else {
        usize::try_from(v).unwrap_or(usize::MAX)
    }
}

/// Never to run again and safe to forget.
fn finished(state: &State, t: &Task) -> bool {
    let st = t.state();
    st.is_terminal()
        || st < TaskState::Assigned
        || t.node_id.is_empty()
        || node_lost(state, &t.node_id)
}

fn history_deletable(state: &State, t: &Task) -> bool {
    t.desired_state >= TaskState::Shutdown as i32 && finished(state, t)
}

fn delete(t: &Task) -> Op {
    Op::Delete {
        kind: Kind::Task,
        id: t.id.clone(),
    }
}

/// What the task reaper wants written for the current state.
pub fn reconcile(state: &State, now_ms: i64) -> Plan {
    let mut plan = Plan::default();

    // Orphans.
    for node in state.nodes().filter(|n| n.state() == NodeState::Down) {
        let since = node.meta.as_ref().map_or(0, |m| m.updated_at);
        let mut live = state
            .tasks_on_node(&node.id)
            .filter(|t| !t.state().is_terminal())
            .peekable();
        if live.peek().is_none() {
            continue;
        }
        if now_ms - since >= ORPHAN_AFTER_MS {
            for t in live {
                plan.ops.push(Op::SetTaskStatus {
                    task_id: t.id.clone(),
                    status: TaskStatus {
                        timestamp: now_ms,
                        state: TaskState::Orphaned as i32,
                        message: ORPHANED_MESSAGE.into(),
                        ..Default::default()
                    },
                });
            }
        } else {
            plan.wake_at(since + ORPHAN_AFTER_MS);
        }
    }

    // Tasks of deleted services.
    for t in state.tasks() {
        if state.service(&t.service_id).is_some() {
            continue;
        }
        if finished(state, t) {
            plan.ops.push(delete(t));
        } else if t.desired_state < TaskState::Remove as i32 {
            plan.ops.push(Op::SetTaskDesiredState {
                task_id: t.id.clone(),
                desired: TaskState::Remove,
            });
        }
    }

    // History.
    let limit = history_limit(state).max(1);
    for svc in state.services() {
        let keep = limit.max(restart_history(svc));
        for (key, mut tasks) in tasks_by_slot(state, &svc.id) {
            if let SlotKey::Node(node) = &key {
                if state.node(node).is_none() {
                    for t in tasks.iter().filter(|t| history_deletable(state, t)) {
                        plan.ops.push(delete(t));
                    }
                    continue;
                }
            }
            if tasks.len() <= keep {
                continue;
            }
            tasks.sort_by(|a, b| (created_at(a), &a.id).cmp(&(created_at(b), &b.id)));
            let mut left = tasks.len();
            for t in tasks {
                if left <= keep {
                    break;
                }
                if history_deletable(state, t) {
                    plan.ops.push(delete(t));
                    left -= 1;
                }
            }
        }
    }
    plan
}

/// Tasks per slot the restart supervisor needs to count `max_attempts`.
fn restart_history(svc: &Service) -> usize {
    let max = svc
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.restart.as_ref())
        .map_or(0, |r| r.max_attempts);
    if max == 0 {
        0
    } else {
        usize::try_from(max)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
            .min(MAX_HISTORY_FOR_RESTARTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use proto::{Cluster, ClusterSpec, OrchestrationConfig, RestartPolicy};
    use TaskState::*;

    async fn round_at(store: &Store, now: i64) -> Option<i64> {
        let plan = reconcile(&store.read(), now);
        let wake = plan.wake_at_ms;
        apply(store, plan).await;
        wake
    }

    fn ids(store: &Store, svc: &str) -> Vec<String> {
        let mut v: Vec<String> = store
            .read()
            .tasks_of_service(svc)
            .map(|t| t.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Slot 1 of service "s": `old` shut-down tasks created at 1, 2, ... and a running one.
    async fn history(store: &Store, old: usize) {
        put_at(
            store,
            vec![
                replicated("s", 1).into(),
                node("a", NodeState::Ready).into(),
            ],
            0,
        )
        .await;
        for i in 0..old {
            let t = task(&format!("old{i:02}"), "s", 1, "a", Shutdown, Shutdown);
            put_at(store, vec![t.into()], 1 + i as i64).await;
        }
        put_at(
            store,
            vec![task("cur", "s", 1, "a", Running, Running).into()],
            100,
        )
        .await;
    }

    #[tokio::test]
    async fn history_limit_trims_the_oldest() {
        let store = Store::memory();
        history(&store, 7).await;
        round_at(&store, 1_000).await;
        assert_eq!(
            ids(&store, "s"),
            vec!["cur", "old03", "old04", "old05", "old06"]
        );
        assert!(reconcile(&store.read(), 2_000).is_empty(), "converged");
    }

    #[tokio::test]
    async fn cluster_limit_applies_and_live_tasks_are_kept() {
        let store = Store::memory();
        put_at(
            &store,
            vec![Cluster {
                id: "c".into(),
                spec: Some(ClusterSpec {
                    orchestration: Some(OrchestrationConfig {
                        task_history_retention_limit: 2,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into()],
            0,
        )
        .await;
        history(&store, 4).await;
        // A finished task that holds its slot (desired COMPLETE) and an assigned task still
        // stopping on a live node are never deleted.
        put_at(
            &store,
            vec![
                task("done", "s", 2, "a", Complete, Complete).into(),
                task("stopping", "s", 1, "a", Running, Shutdown).into(),
            ],
            0,
        )
        .await;
        round_at(&store, 1_000).await;
        assert_eq!(ids(&store, "s"), vec!["cur", "done", "stopping"]);
    }

    #[tokio::test]
    async fn max_attempts_keeps_enough_history() {
        let store = Store::memory();
        put_at(
            &store,
            vec![with_restart(
                replicated("s", 1),
                RestartPolicy {
                    max_attempts: 6,
                    ..Default::default()
                },
            )
            .into()],
            0,
        )
        .await;
        for i in 0..9 {
            let t = task(&format!("old{i}"), "s", 1, "", Failed, Shutdown);
            put_at(&store, vec![t.into()], 1 + i as i64).await;
        }
        round_at(&store, 1_000).await;
        assert_eq!(ids(&store, "s").len(), 7);
    }

    #[tokio::test]
    async fn tasks_of_deleted_services_are_stopped_then_reaped() {
        let store = Store::memory();
        put_at(
            &store,
            vec![
                node("a", NodeState::Ready).into(),
                node("d", NodeState::Down).into(),
                task("run", "gone", 1, "a", Running, Running).into(),
                task("pend", "gone", 2, "", Pending, Running).into(),
                task("dead", "gone", 3, "a", Failed, Shutdown).into(),
                task("lost", "gone", 4, "d", Running, Running).into(),
                task("nonode", "gone", 5, "x", Assigned, Running).into(),
            ],
            0,
        )
        .await;
        round_at(&store, 1_000).await;
        assert_eq!(ids(&store, "gone"), vec!["run"]);
        assert_eq!(store.read().task("run").unwrap().desired(), Remove);
        apply_at(&store, vec![set_status("run", Shutdown, 0)], 2_000).await;
        round_at(&store, 3_000).await;
        assert!(ids(&store, "gone").is_empty());
    }

    #[tokio::test]
    async fn tasks_of_nodes_down_for_a_day_are_orphaned() {
        let store = Store::memory();
        put_at(
            &store,
            vec![
                replicated("s", 1).into(),
                node("d", NodeState::Down).into(),
                task("t1", "s", 1, "d", Running, Running).into(),
                task("t2", "s", 2, "d", Failed, Shutdown).into(),
            ],
            10_000,
        )
        .await;
        assert_eq!(
            round_at(&store, 20_000).await,
            Some(10_000 + ORPHAN_AFTER_MS)
        );
        assert_eq!(store.read().task("t1").unwrap().state(), Running);
        round_at(&store, 10_000 + ORPHAN_AFTER_MS).await;
        let st = store.read();
        assert_eq!(st.task("t1").unwrap().state(), Orphaned);
        assert_eq!(st.task("t2").unwrap().state(), Failed);
    }

    #[tokio::test]
    async fn global_history_of_removed_nodes_is_dropped() {
        let store = Store::memory();
        put_at(
            &store,
            vec![
                global("g").into(),
                task("a1", "g", 0, "removed", Running, Shutdown).into(),
                task("a2", "g", 0, "removed", Running, Running).into(),
            ],
            0,
        )
        .await;
        round_at(&store, 1_000).await;
        assert_eq!(ids(&store, "g"), vec!["a2"], "a2 is still wanted");
    }
}
