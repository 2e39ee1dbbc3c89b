//! The job orchestrator: runs the tasks of jobs (`replicated-job`, `global-job`) to
//! completion, like SwarmKit's `orchestrator/jobs`.
//!
//! A job runs in iterations: `Service.job_status.job_iteration` names the current one (the
//! Control API starts a new one on every update of the job, `--force` included) and each task
//! carries the iteration it was created for. Per job, each round:
//! - tasks of an older iteration still active (desired ≤ COMPLETE) are shut down;
//! - replicated job: slots 1..=`total_completions`; a slot is *complete* once one of its tasks
//!   of this iteration reached COMPLETE, *in progress* while its task is still wanted
//!   (desired ≤ RUNNING: starting, running, or dead and waiting for the restart supervisor),
//!   and *given up* when the restart supervisor stopped retrying it (desired COMPLETE after a
//!   failure). New tasks go to the lowest free slots, as many as keep the in-progress slots
//!   ≤ `max_concurrent` and the occupied slots ≤ `total_completions`;
//! - global job: one task of this iteration per eligible node (not DOWN, not drained or
//!   paused, matching the constraints), nodes that join later included; a node that already
//!   ran (or gave up) this iteration's task gets no other;
//! - a task still running on a node that is gone, DOWN or drained is shut down (replicated:
//!   replaced in its slot; global: the node gets a new task if it becomes eligible again).
//!
//! Job tasks are created with desired RUNNING, as every task the agents start. A task that
//! ends is the restart supervisor's (`restart.rs`): a COMPLETE job task is never restarted
//! (desired COMPLETE), a failed one is retried under the restart policy (Docker's default
//! for jobs: `on-failure`) until `max_attempts`. Everything is read from the store, so a new
//! leader resumes a job where it stood.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proto::{NodeAvailability, NodeState, Service, Task, TaskState};

use super::global::constraints_of;
use super::reconciler::{run_reconciler, Plan};
use super::task::{is_active, new_task, node_unusable, retire_op, shutdown_op};
use crate::scheduler::constraint::node_matches;
use crate::store::{Object, Op, State, Store};

pub struct JobOrchestrator {
    store: Store,
}

impl JobOrchestrator {
    pub fn new(store: Store) -> Self {
        JobOrchestrator { store }
    }

    pub async fn run(self) {
        run_reconciler(
            self.store,
            "job-orchestrator",
            Duration::from_millis(20),
            reconcile,
        )
        .await
    }
}

/// What the job orchestrator wants written for the current state.
pub fn reconcile(state: &State, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    for svc in state.services().filter(|s| s.is_job()) {
        let iteration = svc.job_iteration();
        let mut current = Vec::new();
        for t in state.tasks_of_service(&svc.id) {
            if t.job_iteration == iteration {
                current.push(t);
            } else if is_active(t) {
                // A new iteration replaces the whole job, finished tasks included.
                plan.ops.push(shutdown_op(t));
            }
        }
        match svc.replicated_job() {
            Some(job) => {
                let concurrent = job.max_concurrent.max(1);
                let total = job.total_completions;
                reconcile_replicated(state, svc, &current, concurrent, total, now_ms, &mut plan)
            }
            None => reconcile_global(state, svc, &current, now_ms, &mut plan),
        }
    }
    plan
}

/// Wanted and not ended yet: starting or running (or waiting for its restart delay).
fn in_progress(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32 && !t.state().is_terminal()
}

fn reconcile_replicated(
    state: &State,
    svc: &Service,
    current: &[&Task],
    max_concurrent: u64,
    total: u64,
    now_ms: i64,
    plan: &mut Plan,
) {
    // Occupied slots, and those whose task is still wanted (running, or dead and about to
    // be restarted by the restart supervisor: it counts against the concurrency).
    let mut occupied: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in current
        .iter()
        .copied()
        .filter(|t| is_active(t) && t.slot > 0)
    {
        occupied.entry(t.slot).or_default().push(t);
    }
    let mut running = 0u64;
    for tasks in occupied.values() {
        let complete = tasks.iter().any(|t| t.state() == TaskState::Complete);
        let wanted = tasks
            .iter()
            .any(|t| t.desired_state <= TaskState::Running as i32);
        if wanted && !complete {
            running += 1;
        }
    }
    let room = max_concurrent.saturating_sub(running);
    let left = total.saturating_sub(occupied.len() as u64);
    let mut create = room.min(left);
    let mut slot = 1u64;
    while create > 0 && slot <= total {
        if !occupied.contains_key(&slot) {
            let t = new_task(svc, slot, "", TaskState::Running, now_ms);
            plan.ops.push(Op::Create(Object::Task(t)));
            create -= 1;
        }
        slot += 1;
    }

    // A task that cannot finish where it is (node gone, DOWN or drained) starts over in its
    // slot; the scheduler places the replacement elsewhere.
    for t in occupied.values().flatten() {
        if in_progress(t) && !t.node_id.is_empty() && node_unusable(state, &t.node_id) {
            let new = new_task(svc, t.slot, "", TaskState::Running, now_ms);
            plan.groups
                .push(vec![retire_op(t), Op::Create(Object::Task(new))]);
        }
    }
}

fn reconcile_global(state: &State, svc: &Service, current: &[&Task], now_ms: i64, plan: &mut Plan) {
    let constraints = constraints_of(svc);

    let mut by_node: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in current.iter().copied().filter(|t| is_active(t)) {
        by_node.entry(t.node_id.as_str()).or_default().push(t);
    }
    let mut seen: HashSet<&str> = HashSet::new();
    for node in state.nodes() {
        seen.insert(node.id.as_str());
        let tasks = by_node
            .get(node.id.as_str())
            .map_or(&[][..], |v| v.as_slice());
        let availability = node.availability();
        let usable = node.state() != NodeState::Down && availability != NodeAvailability::Drain;
        if !usable {
            for t in tasks
                .iter()
                .filter(|t| t.desired_state <= TaskState::Running as i32)
            {
                plan.ops.push(shutdown_op(t));
            }
            continue;
        }
        let eligible = availability == NodeAvailability::Active
            && constraints.as_ref().is_some_and(|c| node_matches(c, node));
        if tasks.is_empty() && eligible {
            let t = new_task(svc, 0, &node.id, TaskState::Running, now_ms);
            plan.ops.push(Op::Create(Object::Task(t)));
        }
    }
    // Tasks on nodes removed from the store (or never placed).
    for (node, tasks) in by_node {
        if !seen.contains(node) {
            for t in tasks.iter().filter(|t| in_progress(t)) {
                plan.ops.push(shutdown_op(t));
            }
        }
    }
}

#[cfg(test)]
mod tests;
