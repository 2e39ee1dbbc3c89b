//! Tasks as the orchestrators see them: creating a task of a service, the lifecycle
//! predicates (active, dead, running, in flight), slots, and the ops that shut a task down
//! or retire it. The conventions they encode are described in [`crate::orchestrator`].

use std::collections::HashMap;

use proto::{NodeAvailability, NodeState, Service, ServiceSpec, Task, TaskState, TaskStatus};

use swarm_common::id::new_id;

use crate::store::{Object, Op, State};

/// A new task of `service` in `slot` (replicated, from 1) or on `node_id` (global, slot 0);
/// a job's task runs for the job's current iteration.
pub fn new_task(
    service: &Service,
    slot: u64,
    node_id: &str,
    desired: TaskState,
    now_ms: i64,
) -> Task {
    let spec = service.spec.as_ref();
    Task {
        id: new_id(),
        meta: None,
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: spec.and_then(|s| s.task.clone()),
        spec_version: service.spec_version,
        service_name: service.name().to_string(),
        status: Some(TaskStatus {
            timestamp: now_ms,
            state: TaskState::New as i32,
            message: "created".into(),
            ..Default::default()
        }),
        desired_state: desired as i32,
        endpoint: service.endpoint.clone(),
        networks: Vec::new(),
        started_at: 0,
        job_iteration: service.job_iteration(),
    }
}

/// The task occupies its slot: desired state ≤ COMPLETE.
pub fn is_active(t: &Task) -> bool {
    t.desired_state <= TaskState::Complete as i32
}

/// The task is still wanted (desired ≤ RUNNING) but has ended: the restart supervisor's job.
pub fn is_dead(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32 && t.state().is_terminal()
}

/// Observed RUNNING.
pub fn is_running(t: &Task) -> bool {
    t.state() == TaskState::Running
}

/// The node cannot keep tasks: removed from the store, DOWN, or drained.
pub fn node_unusable(state: &State, node_id: &str) -> bool {
    match state.node(node_id) {
        None => true,
        Some(n) => n.state() == NodeState::Down || n.availability() == NodeAvailability::Drain,
    }
}

/// The node is gone or DOWN: tasks assigned there will never report again.
pub fn node_lost(state: &State, node_id: &str) -> bool {
    state
        .node(node_id)
        .is_none_or(|n| n.state() == NodeState::Down)
}

/// Where a task sits in its service: its slot (replicated) or its node (global, slot 0).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKey {
    Slot(u64),
    Node(String),
}

impl SlotKey {
    pub fn of(t: &Task) -> SlotKey {
        if t.slot > 0 {
            SlotKey::Slot(t.slot)
        } else {
            SlotKey::Node(t.node_id.clone())
        }
    }
}

/// Tasks of one service grouped by slot key.
pub fn tasks_by_slot<'a>(state: &'a State, service_id: &str) -> HashMap<SlotKey, Vec<&'a Task>> {
    let mut m: HashMap<SlotKey, Vec<&Task>> = HashMap::new();
    for t in state.tasks_of_service(service_id) {
        m.entry(SlotKey::of(t)).or_default().push(t);
    }
    m
}

pub fn created_at(t: &Task) -> i64 {
    t.meta.as_ref().map_or(0, |m| m.created_at)
}

/// Sets the desired state SHUTDOWN (idempotent; never lowers the desired state).
pub fn shutdown_op(t: &Task) -> Op {
    Op::SetTaskDesiredState {
        task_id: t.id.clone(),
        desired: TaskState::Shutdown,
    }
}

/// Retires `t` (desired SHUTDOWN) only if nobody changed it since it was read: put it in the
/// same atomic group as the creation of its replacement.
pub fn retire_op(t: &Task) -> Op {
    let mut t = t.clone();
    t.desired_state = TaskState::Shutdown as i32;
    Op::Update {
        object: Object::Task(t),
        check_version: true,
    }
}

/// Of several active tasks in one slot, the one to keep: running first, then of the current
/// spec, then not dead, then the newest. The rest are duplicates to shut down.
pub fn pick_kept<'a>(tasks: &[&'a Task], spec_version: u64) -> Option<&'a Task> {
    tasks.iter().copied().max_by(|a, b| {
        let key = |t: &Task| {
            (
                is_running(t) && t.desired_state <= TaskState::Running as i32,
                t.spec_version == spec_version,
                !is_dead(t),
                created_at(t),
            )
        };
        key(a).cmp(&key(b)).then_with(|| b.id.cmp(&a.id))
    })
}

/// A slot is *in flight* when its task is of the current spec, still wanted, and not (yet,
/// or no longer) RUNNING.
pub fn in_flight(t: &Task, spec_version: u64) -> bool {
    t.spec_version == spec_version && t.desired_state <= TaskState::Running as i32 && !is_running(t)
}

/// A start-first replacement under way: the slot holds its old task(s), still wanted, and a
/// task of the current spec that is wanted and not running yet. The update orchestrator
/// shuts the old one down once the new one runs; until then both stay.
pub fn start_first_pending(tasks: &[&Task], spec_version: u64) -> bool {
    let (new, old): (Vec<&Task>, Vec<&Task>) = tasks
        .iter()
        .copied()
        .partition(|t| t.spec_version == spec_version);
    new.len() == 1
        && !old.is_empty()
        && in_flight(new[0], spec_version)
        && !new[0].state().is_terminal()
        && old
            .iter()
            .all(|t| t.desired_state <= TaskState::Running as i32)
}

/// A spec version no task of the service carries: one more than any the service or its tasks
/// ever had (a rollback moves `spec_version` back, so "current + 1" may be taken).
pub fn fresh_spec_version(state: &State, svc: &Service) -> u64 {
    state
        .tasks_of_service(&svc.id)
        .map(|t| t.spec_version)
        .chain([svc.spec_version, svc.previous_spec_version])
        .max()
        .unwrap_or(0)
        + 1
}

/// The spec version a rollback to `previous` gives the service: the version the previous
/// spec had (its tasks that still run are kept), the current one when the tasks do not
/// change, a fresh one when the previous version is unknown.
pub fn restored_spec_version(state: &State, svc: &Service, previous: &ServiceSpec) -> u64 {
    let cur = svc.spec.as_ref();
    if previous.task == cur.and_then(|c| c.task.clone())
        && previous.endpoint == cur.and_then(|c| c.endpoint.clone())
    {
        svc.spec_version
    } else if svc.previous_spec_version != 0 {
        svc.previous_spec_version
    } else {
        fresh_spec_version(state, svc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::replicated;

    #[test]
    fn new_task_copies_the_service() {
        let mut svc = replicated("s", 1);
        svc.spec_version = 7;
        let t = new_task(&svc, 3, "", TaskState::Running, 42);
        assert_eq!(t.service_name, "svc-s");
        assert_eq!(t.slot, 3);
        assert_eq!(t.spec_version, 7);
        assert_eq!(t.state(), TaskState::New);
        assert_eq!(t.status.as_ref().unwrap().message, "created");
        assert_eq!(t.desired(), TaskState::Running);
        assert_eq!(t.id.len(), 25);
    }
}
