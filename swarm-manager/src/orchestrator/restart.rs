//! The restart supervisor: what happens to a task that ended while it was still wanted.
//!
//! A task is *dead* when its desired state is ≤ RUNNING and its observed state is terminal
//! (COMPLETE, SHUTDOWN, FAILED, REJECTED, ORPHANED). The task's restart policy decides:
//! - restart: in one atomic batch the dead task gets desired SHUTDOWN (version-checked, so a
//!   concurrent replacement by an orchestrator wins or loses as a whole) and a replacement is
//!   created in the same slot (on the same node for global tasks) from the service's current
//!   spec. If the restart delay has not passed yet (`dead task's status timestamp + delay`),
//!   the replacement is created with desired READY and a timer raises it to RUNNING later;
//!   agents start only tasks whose desired state is RUNNING;
//! - no restart (condition `none`; `on-failure` after COMPLETE; `max_attempts` restarts
//!   already made within the window): the dead task gets desired COMPLETE, so its slot stays
//!   occupied and the orchestrators do not refill it. A job's task that completed is never
//!   restarted, whatever its condition; a job's task of an earlier iteration is left to the
//!   job orchestrator, which shuts it down.
//!
//! Restarts made so far are counted from the store: the other tasks of the same slot and
//! spec version created within the window (the task reaper keeps at least `max_attempts + 1`
//! tasks per slot for services that set a limit). Timers are derived from the store each
//! round, so they survive a change of leader.

use std::collections::HashMap;
use std::time::Duration;

use proto::{RestartCondition, Task, TaskState};

use super::reconciler::{run_reconciler, Plan};
use super::task::{created_at, new_task, node_unusable, retire_op, tasks_by_slot, SlotKey};
use crate::store::{Object, Op, State, Store};

/// Restart delay when a task has no restart policy at all (Docker's default).
pub use proto::DEFAULT_RESTART_DELAY_MS;

const TERMINAL: [TaskState; 5] = [
    TaskState::Complete,
    TaskState::Shutdown,
    TaskState::Failed,
    TaskState::Rejected,
    TaskState::Orphaned,
];

pub struct RestartSupervisor {
    store: Store,
}

impl RestartSupervisor {
    pub fn new(store: Store) -> Self {
        RestartSupervisor { store }
    }

    pub async fn run(self) {
        run_reconciler(
            self.store,
            "restart-supervisor",
            Duration::from_millis(20),
            reconcile,
        )
        .await
    }
}

/// A task's restart policy with Docker's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub condition: RestartCondition,
    pub delay_ms: i64,
    /// 0: unlimited.
    pub max_attempts: u64,
    /// 0: unbounded.
    pub window_ms: i64,
}

impl Policy {
    pub fn of(t: &Task) -> Policy {
        match t.spec.as_ref().and_then(|s| s.restart.as_ref()) {
            None => Policy {
                condition: RestartCondition::Any,
                delay_ms: DEFAULT_RESTART_DELAY_MS,
                max_attempts: 0,
                window_ms: 0,
            },
            Some(p) => Policy {
                condition: RestartCondition::try_from(p.condition).unwrap_or(RestartCondition::Any),
                delay_ms: p.delay_ms.max(0),
                max_attempts: p.max_attempts,
                window_ms: p.window_ms.max(0),
            },
        }
    }

    /// Whether the condition allows restarting a task that ended in `state`.
    pub fn condition_allows(&self, state: TaskState) -> bool {
        match self.condition {
            RestartCondition::Any => true,
            RestartCondition::OnFailure => state != TaskState::Complete,
            RestartCondition::None => false,
        }
    }
}

/// What the restart supervisor wants written for the current state.
pub fn reconcile(state: &State, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    let mut slots: HashMap<&str, HashMap<SlotKey, Vec<&Task>>> = HashMap::new();

    let mut dead: Vec<&Task> = TERMINAL
        .iter()
        .flat_map(|s| state.tasks_in_state(*s))
        .filter(|t| t.desired_state <= TaskState::Running as i32)
        .collect();
    dead.sort_by(|a, b| a.id.cmp(&b.id));
    for t in dead {
        let Some(svc) = state.service(&t.service_id) else {
            continue; // the task reaper removes tasks of deleted services
        };
        let global = t.slot == 0;
        if global {
            if t.node_id.is_empty() {
                continue;
            }
            let paused = state
                .node(&t.node_id)
                .is_some_and(|n| n.availability() == proto::NodeAvailability::Pause);
            if paused || node_unusable(state, &t.node_id) {
                // The global orchestrator shuts it down, or restarts it when the node is back.
                continue;
            }
        }
        if svc.is_job() && t.job_iteration != svc.job_iteration() {
            // A task of an earlier run of the job: the job orchestrator shuts it down.
            continue;
        }
        let policy = Policy::of(t);
        let group = slots
            .entry(t.service_id.as_str())
            .or_insert_with(|| tasks_by_slot(state, &t.service_id));
        let siblings = group.get(&SlotKey::of(t)).map_or(&[][..], |v| v.as_slice());

        // A job's task that completed is done, whatever the condition says.
        let finished_job = svc.is_job() && t.state() == TaskState::Complete;
        let restart = !finished_job
            && policy.condition_allows(t.state())
            && (policy.max_attempts == 0
                || restarts_made(t, siblings, &policy, now_ms) < policy.max_attempts);
        if !restart {
            plan.ops.push(Op::SetTaskDesiredState {
                task_id: t.id.clone(),
                desired: TaskState::Complete,
            });
            continue;
        }
        let deadline = died_at(t, now_ms) + policy.delay_ms;
        let desired = if now_ms >= deadline {
            TaskState::Running
        } else {
            plan.wake_at(deadline);
            TaskState::Ready
        };
        let node = if global { t.node_id.as_str() } else { "" };
        let new = new_task(svc, t.slot, node, desired, now_ms);
        plan.groups
            .push(vec![retire_op(t), Op::Create(Object::Task(new))]);
    }

    // Delayed replacements: start them once the delay after their predecessor's end passed.
    let mut waiting: Vec<&Task> = state
        .tasks()
        .filter(|t| t.desired() == TaskState::Ready && !t.state().is_terminal())
        .collect();
    waiting.sort_by(|a, b| a.id.cmp(&b.id));
    for t in waiting {
        if state.service(&t.service_id).is_none() {
            continue;
        }
        let group = slots
            .entry(t.service_id.as_str())
            .or_insert_with(|| tasks_by_slot(state, &t.service_id));
        let siblings = group.get(&SlotKey::of(t)).map_or(&[][..], |v| v.as_slice());
        let created = created_at(t);
        let predecessor = siblings
            .iter()
            .filter(|p| p.id != t.id && p.state().is_terminal() && created_at(p) <= created)
            .max_by_key(|p| (p.status.as_ref().map_or(0, |s| s.timestamp), created_at(p)));
        let deadline = match predecessor {
            // An agent clock ahead of ours cannot push the start past `created + delay`.
            Some(p) => died_at(p, now_ms).min(created) + Policy::of(p).delay_ms,
            None => created,
        };
        if now_ms >= deadline {
            plan.ops.push(Op::SetTaskDesiredState {
                task_id: t.id.clone(),
                desired: TaskState::Running,
            });
        } else {
            plan.wake_at(deadline);
        }
    }
    plan
}

/// When the task ended, as reported (never in the future).
fn died_at(t: &Task, now_ms: i64) -> i64 {
    t.status
        .as_ref()
        .map_or(
            now_ms,
            |s| if s.timestamp > 0 { s.timestamp } else { now_ms },
        )
        .min(now_ms)
}

/// Restarts already made in this task's slot for its spec version (and job iteration) within
/// the window: every other task of the slot, spec version and iteration created in it (the
/// first of them was the original).
fn restarts_made(t: &Task, siblings: &[&Task], policy: &Policy, now_ms: i64) -> u64 {
    let since = if policy.window_ms > 0 {
        now_ms - policy.window_ms
    } else {
        i64::MIN
    };
    siblings
        .iter()
        .filter(|s| {
            s.id != t.id
                && s.spec_version == t.spec_version
                && s.job_iteration == t.job_iteration
                && created_at(s) >= since
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::replicated;
    use crate::orchestrator::task::is_active;
    use crate::orchestrator::testutil::*;
    use crate::store::Store;
    use proto::{NodeState, RestartPolicy};

    fn policy(
        condition: RestartCondition,
        delay_ms: i64,
        max_attempts: u64,
        window_ms: i64,
    ) -> RestartPolicy {
        RestartPolicy {
            condition: condition as i32,
            delay_ms,
            max_attempts,
            window_ms,
        }
    }

    /// A service with one running task "t1" on node "a", whose spec carries `p`.
    async fn setup(p: Option<RestartPolicy>) -> Store {
        let store = Store::memory();
        let svc = match p {
            Some(p) => with_restart(replicated("s", 1), p),
            None => replicated("s", 1),
        };
        let mut t = task("t1", "s", 1, "a", TaskState::Running, TaskState::Running);
        t.spec.as_mut().unwrap().restart = p;
        put_at(
            &store,
            vec![svc.into(), node("a", NodeState::Ready).into(), t.into()],
            0,
        )
        .await;
        store
    }

    async fn die(store: &Store, id: &str, how: TaskState, at: i64) {
        apply_at(store, vec![set_status(id, how, at)], at).await;
    }

    /// One supervisor round at `now`, applied with the same clock; returns the timer.
    async fn round_at(store: &Store, now: i64) -> Option<i64> {
        let plan = reconcile(&store.read(), now);
        let wake = plan.wake_at_ms;
        for r in plan.into_requests() {
            apply_at(store, r.ops, now).await;
        }
        wake
    }

    fn current(store: &Store) -> Task {
        let v: Vec<Task> = store
            .read()
            .tasks_of_service("s")
            .filter(|t| is_active(t))
            .cloned()
            .collect();
        assert_eq!(v.len(), 1, "one task occupies the slot: {v:?}");
        v.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn any_restarts_after_the_delay() {
        let store = setup(Some(policy(RestartCondition::Any, 5_000, 0, 0))).await;
        die(&store, "t1", TaskState::Complete, 10_000).await;
        assert_eq!(round_at(&store, 11_000).await, Some(15_000));
        assert_eq!(
            store.read().task("t1").unwrap().desired(),
            TaskState::Shutdown
        );
        let r = current(&store);
        assert_eq!(r.slot, 1);
        assert_eq!(r.desired(), TaskState::Ready, "waits for the delay");
        assert!(r.node_id.is_empty(), "replicated: the scheduler places it");

        // Before the deadline nothing changes; after it the replacement is started.
        assert_eq!(round_at(&store, 14_999).await, Some(15_000));
        assert_eq!(current(&store).desired(), TaskState::Ready);
        round_at(&store, 15_000).await;
        assert_eq!(current(&store).desired(), TaskState::Running);
        assert_eq!(store.read().task_count(), 2);
    }

    #[tokio::test]
    async fn no_policy_means_any_with_five_seconds() {
        let store = setup(None).await;
        die(&store, "t1", TaskState::Failed, 1_000).await;
        assert_eq!(round_at(&store, 1_000).await, Some(6_000));
        assert_eq!(current(&store).desired(), TaskState::Ready);
    }

    #[tokio::test]
    async fn zero_delay_or_elapsed_delay_starts_at_once() {
        let store = setup(Some(policy(RestartCondition::Any, 0, 0, 0))).await;
        die(&store, "t1", TaskState::Failed, 1_000).await;
        assert_eq!(round_at(&store, 1_000).await, None);
        assert_eq!(current(&store).desired(), TaskState::Running);
    }

    #[tokio::test]
    async fn on_failure_restarts_failures_only() {
        for (how, restarts) in [
            (TaskState::Failed, true),
            (TaskState::Rejected, true),
            (TaskState::Complete, false),
        ] {
            let store = setup(Some(policy(RestartCondition::OnFailure, 0, 0, 0))).await;
            die(&store, "t1", how, 1_000).await;
            round_at(&store, 2_000).await;
            let cur = current(&store);
            if restarts {
                assert_ne!(cur.id, "t1", "{how:?}");
                assert_eq!(cur.desired(), TaskState::Running);
            } else {
                assert_eq!(cur.id, "t1");
                assert_eq!(cur.desired(), TaskState::Complete);
                assert_eq!(store.read().task_count(), 1);
                // The orchestrator keeps the finished slot occupied.
                assert!(replicated::reconcile(&store.read(), 3_000).is_empty());
            }
        }
    }

    #[tokio::test]
    async fn none_never_restarts() {
        let store = setup(Some(policy(RestartCondition::None, 0, 0, 0))).await;
        die(&store, "t1", TaskState::Failed, 1_000).await;
        round_at(&store, 2_000).await;
        let cur = current(&store);
        assert_eq!(cur.id, "t1");
        assert_eq!(cur.desired(), TaskState::Complete);
        assert_eq!(round_at(&store, 3_000).await, None);
        assert_eq!(store.read().task_count(), 1);
    }

    #[tokio::test]
    async fn max_attempts_stop_restarts() {
        let store = setup(Some(policy(RestartCondition::Any, 0, 2, 0))).await;
        let mut now = 1_000;
        for attempt in 0..3 {
            let cur = current(&store);
            die(&store, &cur.id, TaskState::Failed, now).await;
            round_at(&store, now).await;
            let next = current(&store);
            if attempt < 2 {
                assert_ne!(next.id, cur.id, "restart {}", attempt + 1);
            } else {
                assert_eq!(next.id, cur.id, "no third restart");
                assert_eq!(next.desired(), TaskState::Complete);
            }
            now += 1_000;
        }
        assert_eq!(store.read().task_count(), 3, "original + 2 restarts");
    }

    #[tokio::test]
    async fn window_forgets_old_attempts() {
        let store = setup(Some(policy(RestartCondition::Any, 0, 1, 10_000))).await;
        // First failure at t=1000 (task created at 0): restart.
        die(&store, "t1", TaskState::Failed, 1_000).await;
        round_at(&store, 1_000).await;
        let second = current(&store);
        assert_ne!(second.id, "t1");
        // Second failure at t=5000: t1 (created at 0) is within the window: no restart.
        die(&store, &second.id, TaskState::Failed, 5_000).await;
        let plan = reconcile(&store.read(), 5_000);
        assert_eq!(plan.groups.len(), 0);
        // At t=20000 the first task is out of the window: restart allowed.
        let plan = reconcile(&store.read(), 20_000);
        assert_eq!(plan.groups.len(), 1);
    }

    #[tokio::test]
    async fn global_restart_stays_on_its_node_and_skips_lost_nodes() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                global("g").into(),
                node("a", NodeState::Ready).into(),
                node("b", NodeState::Down).into(),
                task("ta", "g", 0, "a", Failed, Running).into(),
                task("tb", "g", 0, "b", Failed, Running).into(),
            ],
        )
        .await;
        let plan = reconcile(&store.read(), 100_000);
        assert_eq!(plan.groups.len(), 1);
        apply(&store, plan).await;
        let st = store.read();
        let new: Vec<&Task> = st
            .tasks_of_service("g")
            .filter(|t| t.id != "ta" && t.id != "tb")
            .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].node_id, "a");
        assert_eq!(new[0].slot, 0);
        assert_eq!(
            st.task("tb").unwrap().desired(),
            Running,
            "left to the global orchestrator"
        );
    }

    #[tokio::test]
    async fn timer_is_rederived_after_a_leader_change() {
        // The replacement exists with desired READY; a fresh supervisor (new leader) finds
        // the deadline from the dead predecessor alone.
        let store = setup(Some(policy(RestartCondition::Any, 8_000, 0, 0))).await;
        die(&store, "t1", TaskState::Failed, 1_000).await;
        round_at(&store, 1_500).await;
        let plan = reconcile(&store.read(), 2_000);
        assert!(plan.is_empty());
        assert_eq!(plan.wake_at_ms, Some(9_000));
        let plan = reconcile(&store.read(), 9_000);
        assert_eq!(plan.ops.len(), 1);
    }
}
