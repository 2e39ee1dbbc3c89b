//! The update orchestrator: replaces the tasks of an old spec with tasks of the service's
//! current spec, following the service's update policy (or its rollback policy while a
//! rollback runs), for replicated and global services.
//!
//! Everything it decides from is in the store, so a new leader resumes an update where the
//! old one left it:
//! - `Service.update_status` says whether an update (or rollback) runs, is paused or is done,
//!   and when it started (written by the Control API when it starts, by this orchestrator as
//!   it goes);
//! - a task is *old* when its `spec_version` is not the service's (a rollback restores the
//!   previous spec's version, so tasks still running that spec are kept);
//! - a new task's `started_at` (first RUNNING, set by the store) and its status timestamp say
//!   when its slot was done, which times the delay between batches and the monitor period.
//!
//! Per service, each round:
//! 1. failures: new tasks created since the update started that ended (failed, rejected,
//!    completed) within `monitor` of starting, or before they ever ran. When their share of
//!    the service's slots exceeds `max_failure_ratio`, the failure action applies: `pause`
//!    (state `paused`, or `rollback_paused` during a rollback), `rollback` (the previous spec
//!    comes back with state `rollback_started`; a failing rollback pauses instead, as SwarmKit
//!    never rolls back a rollback), `continue` (nothing);
//! 2. start-first slots whose new task runs: the old task is shut down;
//! 3. a new batch, when fewer than `parallelism` slots are in flight (0 = no limit) and
//!    `delay` has passed since the last slot was done: stop-first retires the old task and
//!    creates its successor in one atomic group; start-first only creates the successor
//!    (the old one keeps serving until step 2);
//! 4. nothing old left and nothing in flight: once `monitor` has passed since the last slot
//!    was done, the state becomes `completed` (`rollback_completed`).
//!
//! Old tasks leave the load balancers before their stop signal as in a scale-down: their
//! desired state becomes SHUTDOWN, which ends their `serving` flag in the network state, and
//! the agent delays the signal by its drain time.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::{
    NodeAvailability, Service, Task, TaskState, UpdateConfig, UpdateFailureAction, UpdateOrder,
    UpdateState, UpdateStatus,
};

use super::reconciler::{run_reconciler, Plan};
use super::task::{
    created_at, is_running, new_task, restored_spec_version, retire_op, shutdown_op, SlotKey,
};
use crate::store::{Object, Op, State, Store};

pub struct UpdateOrchestrator {
    store: Store,
}

impl UpdateOrchestrator {
    pub fn new(store: Store) -> Self {
        UpdateOrchestrator { store }
    }

    pub async fn run(self) {
        run_reconciler(
            self.store,
            "update-orchestrator",
            Duration::from_millis(20),
            reconcile,
        )
        .await
    }
}

/// What the update orchestrator wants written for the current state.
pub fn reconcile(state: &State, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    // Jobs are not updated in place: an update starts a new iteration (`jobs.rs`).
    for svc in state.services().filter(|s| !s.is_job()) {
        reconcile_service(state, svc, now_ms, &mut plan);
    }
    plan
}

fn update_state(svc: &Service) -> UpdateState {
    svc.update_status
        .as_ref()
        .map_or(UpdateState::Unknown, |u| u.state())
}

/// The policy that applies now: the rollback config while a rollback runs.
pub fn policy(svc: &Service) -> UpdateConfig {
    let spec = svc.spec.as_ref();
    let cfg = match update_state(svc) {
        UpdateState::RollbackStarted
        | UpdateState::RollbackPaused
        | UpdateState::RollbackCompleted => spec.and_then(|s| s.rollback),
        _ => spec.and_then(|s| s.update),
    };
    cfg.unwrap_or_else(UpdateConfig::docker_default)
}

/// Still wanted: desired ≤ RUNNING (READY: a restart waiting for its delay).
fn wanted(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32
}

/// Ended on its own: failed, rejected, or completed (a service task is not meant to end),
/// or shut down while still wanted.
fn ended_early(t: &Task) -> bool {
    match t.state() {
        TaskState::Failed | TaskState::Rejected | TaskState::Complete => true,
        TaskState::Shutdown | TaskState::Orphaned => wanted(t),
        _ => false,
    }
}

fn status_ts(t: &Task) -> i64 {
    t.status.as_ref().map_or(0, |s| s.timestamp)
}

/// When the task's slot was done for the update: it ran, or it ended.
fn done_at(t: &Task) -> Option<i64> {
    if t.started_at > 0 {
        Some(t.started_at)
    } else if t.state().is_terminal() {
        Some(status_ts(t))
    } else {
        None
    }
}

/// A task of the current spec created by this update that ended within `monitor` of starting
/// (or before it ever ran).
fn is_update_failure(t: &Task, version: u64, since_ms: i64, monitor_ms: i64) -> bool {
    t.spec_version == version
        && created_at(t) >= since_ms
        && ended_early(t)
        && (t.started_at == 0 || status_ts(t) - t.started_at <= monitor_ms)
}

/// One slot of the service during an update.
#[derive(Default)]
struct Slot<'a> {
    /// Wanted tasks of an old spec.
    old: Vec<&'a Task>,
    /// Wanted tasks of the current spec.
    new: Vec<&'a Task>,
}

fn service_update(
    svc: &Service,
    state: UpdateState,
    message: String,
    now_ms: i64,
    completed: bool,
) -> Op {
    let mut s = svc.clone();
    let started_at = svc.update_status.as_ref().map_or(now_ms, |u| u.started_at);
    s.update_status = Some(UpdateStatus {
        state: state as i32,
        started_at,
        completed_at: if completed { now_ms } else { 0 },
        message,
    });
    Op::Update {
        object: Object::Service(s),
        check_version: true,
    }
}

/// The service rolled back by its failure action (SwarmKit's `rollbackUpdate`), or None
/// when it has no previous spec.
fn rollback_op(state: &State, svc: &Service, message: String) -> Option<Op> {
    let previous = svc.previous_spec.clone()?;
    let mut s = svc.clone();
    s.spec_version = restored_spec_version(state, svc, &previous);
    s.spec = Some(previous);
    s.previous_spec = None;
    s.previous_spec_version = svc.spec_version;
    let started_at = svc.update_status.as_ref().map_or(0, |u| u.started_at);
    s.update_status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted as i32,
        started_at,
        completed_at: 0,
        message,
    });
    Some(Op::Update {
        object: Object::Service(s),
        check_version: true,
    })
}

fn reconcile_service(state: &State, svc: &Service, now_ms: i64, plan: &mut Plan) {
    let ustate = update_state(svc);
    if matches!(ustate, UpdateState::Paused | UpdateState::RollbackPaused) {
        // Stopped by the failure action: the next `service update` resumes it.
        return;
    }
    let rolling_back = ustate == UpdateState::RollbackStarted;
    let running_update = matches!(ustate, UpdateState::Updating | UpdateState::RollbackStarted);
    let cfg = policy(svc);
    let version = svc.spec_version;
    let since = svc.update_status.as_ref().map_or(0, |u| u.started_at);
    let global = svc.is_global();

    // Slots with their old and new wanted tasks; the last time a slot of this update was done.
    let mut slots: BTreeMap<SlotKey, Slot> = BTreeMap::new();
    let mut failures: Vec<&Task> = Vec::new();
    let mut last_done = 0i64;
    for t in state.tasks_of_service(&svc.id) {
        if t.spec_version == version && created_at(t) >= since {
            if let Some(at) = done_at(t) {
                last_done = last_done.max(at);
            }
        }
        if running_update && is_update_failure(t, version, since, cfg.monitor_ms) {
            failures.push(t);
        }
        if !wanted(t) || (t.slot == 0 && t.node_id.is_empty()) {
            continue;
        }
        if t.spec_version != version && t.state().is_terminal() {
            // Dead: the restart supervisor replaces it (with the current spec).
            continue;
        }
        let slot = slots.entry(SlotKey::of(t)).or_default();
        if t.spec_version == version {
            slot.new.push(t);
        } else {
            slot.old.push(t);
        }
    }
    let total = slots.len().max(1);

    // 1. The failure action.
    if running_update && !failures.is_empty() {
        let ratio = failures.len() as f32 / total as f32;
        let action = UpdateFailureAction::try_from(cfg.failure_action).unwrap_or_default();
        if ratio > cfg.max_failure_ratio && action != UpdateFailureAction::Continue {
            // The failure SwarmKit would have seen first.
            let first = failures
                .iter()
                .min_by_key(|t| (status_ts(t), t.id.as_str()))
                .map_or("", |t| t.id.as_str());
            let op = match (action, rolling_back) {
                (UpdateFailureAction::Rollback, false) => rollback_op(
                    state,
                    svc,
                    format!(
                        "update rolled back due to failure or early termination of task {first}"
                    ),
                ),
                _ => None,
            };
            let op = op.unwrap_or_else(|| {
                let (st, what) = if rolling_back {
                    (UpdateState::RollbackPaused, "rollback")
                } else {
                    (UpdateState::Paused, "update")
                };
                service_update(
                    svc,
                    st,
                    format!("{what} paused due to failure or early termination of task {first}"),
                    now_ms,
                    false,
                )
            });
            tracing::info!(service = %svc.name(), task = first, failures = failures.len(), "update failure action applies");
            plan.ops.push(op);
            return;
        }
    }

    // 2. Slots in flight; start-first slots whose new task runs lose their old task.
    let mut in_flight = 0usize;
    let mut dirty: Vec<(&SlotKey, &Slot)> = Vec::new();
    for (key, slot) in &slots {
        if slot.new.is_empty() {
            if !slot.old.is_empty() {
                dirty.push((key, slot));
            }
            continue;
        }
        if slot.new.iter().any(|t| is_running(t)) {
            for old in &slot.old {
                plan.ops.push(shutdown_op(old));
            }
        } else if slot.new.iter().any(|t| {
            // Starting. A restart waiting for its delay (desired READY) does not hold the
            // update back: SwarmKit's worker moves on once its task ended.
            t.desired() == TaskState::Running && !t.state().is_terminal()
        }) {
            in_flight += 1;
        }
    }

    // 3. The next batch.
    if !dirty.is_empty() {
        let limit = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            cfg.parallelism as usize
        };
        let ready_at = if last_done > 0 && cfg.delay_ms > 0 {
            last_done + cfg.delay_ms
        } else {
            0
        };
        if in_flight < limit && now_ms < ready_at {
            plan.wake_at(ready_at);
        } else if in_flight < limit {
            // Cheapest first: slots whose old task does not run, then in slot order.
            dirty.sort_by_key(|(key, slot)| {
                (slot.old.iter().any(|t| is_running(t)), (*key).clone())
            });
            let start_first = UpdateOrder::try_from(cfg.order) == Ok(UpdateOrder::StartFirst);
            for (key, slot) in dirty.into_iter().take(limit - in_flight) {
                let (slot_no, node) = match key {
                    SlotKey::Slot(n) => (*n, ""),
                    SlotKey::Node(n) => (0, n.as_str()),
                };
                if global
                    && state
                        .node(node)
                        .is_some_and(|n| n.availability() == NodeAvailability::Pause)
                {
                    // A paused node takes no new task: its old one stays.
                    continue;
                }
                let new = new_task(svc, slot_no, node, TaskState::Running, now_ms);
                let mut group: Vec<Op> = Vec::new();
                for old in &slot.old {
                    if start_first {
                        // Unchanged, with a version check: nobody replaced it meanwhile.
                        group.push(Op::Update {
                            object: Object::Task((*old).clone()),
                            check_version: true,
                        });
                    } else {
                        group.push(retire_op(old));
                    }
                }
                group.push(Op::Create(Object::Task(new)));
                plan.groups.push(group);
            }
        }
        return;
    }

    // 4. Done once the last slot was watched for the monitor period.
    if running_update && in_flight == 0 {
        let done_at = last_done + cfg.monitor_ms;
        if now_ms < done_at {
            plan.wake_at(done_at);
            return;
        }
        let (st, msg) = if rolling_back {
            (UpdateState::RollbackCompleted, "rollback completed")
        } else {
            (UpdateState::Completed, "update completed")
        };
        tracing::info!(service = %svc.name(), state = st.docker_name(), "update finished");
        plan.ops
            .push(service_update(svc, st, msg.into(), now_ms, true));
    }
}

#[cfg(test)]
mod tests;
