//! The scheduler (leader only): places PENDING tasks on nodes.
//!
//! Filters, in SwarmKit's order: node ready and active; resource reservations; placement
//! constraints; host-mode published ports; max replicas per node. Among the nodes that
//! pass, the spread strategy picks the one with the fewest tasks of the service, then the
//! fewest tasks overall, then the smallest node id; `spread=node.labels.<k>` preferences
//! first even out the label values. A task that fits nowhere stays PENDING with SwarmKit's
//! error text (`no suitable node (insufficient resources on 2 nodes)`).
//!
//! See [`plan`] for how a pass stays O(nodes + tasks · log nodes) per task group.

pub mod constraint;
mod plan;

use std::time::{Duration, Instant};

use proto::TaskState;

use crate::metrics::{Outcome, METRICS};
use crate::store::{Op, OpOutcome, ProposeError, Request, Store};

/// At most this many ops per proposal, as the other reconcilers (`OPS_PER_REQUEST`): a
/// Raft entry stays small, and so does the vector of ops built for it. An `Op` is as large as
/// a whole object, and vectors of 10 000 of them left the heap fragmented: the scheduler
/// bench's peak RSS grew by 130 MB once the store kept the objects it was given.
pub const MAX_OPS_PER_PROPOSAL: usize = 1_000;

/// How often unplaceable tasks are retried when nothing wakes the scheduler up.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// Shortest gap between passes caused by changes that bring no new PENDING task.
const MIN_PASS_GAP: Duration = Duration::from_millis(100);

/// Wait after a wake-up so that a burst of writes is handled by one pass.
const COALESCE: Duration = Duration::from_millis(5);

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Tasks moved to ASSIGNED.
    pub assigned: usize,
    /// Tasks the scheduler tried to place and left PENDING.
    pub unschedulable: usize,
}

pub struct Scheduler {
    store: Store,
}

impl Scheduler {
    pub fn new(store: Store) -> Self {
        Scheduler { store }
    }

    /// Schedules until aborted (the manager aborts it when leadership is lost): one pass at
    /// start, then one after each burst of store changes that brings new PENDING tasks.
    /// While tasks stay PENDING, other changes (a node becomes ready, a task stops and frees
    /// resources) trigger a pass at most every `max(100 ms, 10 × last pass)`, and a pass
    /// runs every second anyway.
    pub async fn run(self) {
        let mut rx = self.store.watch();
        // Tasks known to stay PENDING after the last pass.
        let mut left_pending = 0usize;
        let mut run_now = true;
        // A change was seen but not acted on yet (throttled).
        let mut dirty = false;
        let mut last_pass = Instant::now();
        let mut last_cost = Duration::ZERO;
        loop {
            let throttle = (last_cost * 10).max(MIN_PASS_GAP);
            if !run_now {
                let wake = if dirty {
                    Some(throttle)
                } else if left_pending > 0 {
                    Some(RETRY_PERIOD)
                } else {
                    None
                };
                let changed = match wake {
                    Some(period) => {
                        let wait = period.saturating_sub(last_pass.elapsed());
                        tokio::select! {
                            r = rx.changed() => r.is_ok(),
                            _ = tokio::time::sleep(wait) => { run_now = true; true }
                        }
                    }
                    None => rx.changed().await.is_ok(),
                };
                if !changed {
                    // The store is gone (cannot happen while we hold it): poll slowly.
                    tokio::time::sleep(RETRY_PERIOD).await;
                    run_now = true;
                }
                dirty = true;
            }
            // Coalesce a burst: let the writers that woke us finish their batch.
            tokio::time::sleep(COALESCE).await;
            rx.borrow_and_update();
            let pending = self.store.read().count_in_state(TaskState::Pending);
            if pending == 0 {
                left_pending = 0;
                dirty = false;
                run_now = false;
                continue;
            }
            if !run_now && pending <= left_pending && last_pass.elapsed() < throttle {
                // No new PENDING task: wait for the throttle to let other changes pile up.
                continue;
            }
            dirty = false;
            last_pass = Instant::now();
            let result = self.pass_inner().await;
            last_cost = last_pass.elapsed();
            match result {
                Ok((_, left)) => {
                    left_pending = left;
                    rx.borrow_and_update();
                    // Tasks that became PENDING while the pass ran: go again at once.
                    run_now = self.store.read().count_in_state(TaskState::Pending) > left;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduling pass failed; retrying");
                    left_pending = left_pending.max(1);
                    run_now = false;
                }
            }
        }
    }

    /// One full pass: plans every PENDING task and proposes the decisions.
    pub async fn pass(&self) -> Result<PassStats, ProposeError> {
        Ok(self.pass_inner().await?.0)
    }

    async fn pass_inner(&self) -> Result<(PassStats, usize), ProposeError> {
        let started = Instant::now();
        let plan = {
            let state = self.store.read();
            plan::plan(&state)
        };
        let planned = started.elapsed();
        let unschedulable = plan.unschedulable;
        let left_pending = plan.left_pending;
        let n_assign = plan.assign.len();
        // Ops are built a proposal at a time: an `Op` is as large as its largest variant (a
        // whole object), so a pass's worth of them at once would cost far more memory than the
        // decisions themselves.
        let mut ops = plan
            .assign
            .into_iter()
            .map(|(task_id, node_id)| Op::AssignTask { task_id, node_id })
            .chain(
                plan.errors
                    .into_iter()
                    .map(|(task_id, err)| Op::SetTaskSchedulingError { task_id, err }),
            )
            .peekable();

        let mut assigned = 0usize;
        let mut skipped = 0usize;
        let mut seen = 0usize;
        while ops.peek().is_some() {
            let chunk: Vec<Op> = ops.by_ref().take(MAX_OPS_PER_PROPOSAL).collect();
            let resp = self.store.propose(Request::best_effort(chunk)).await?;
            if let Some(Ok(outcomes)) = resp.result {
                for o in outcomes {
                    let is_assign = seen < n_assign;
                    seen += 1;
                    match o {
                        OpOutcome::Applied(_) if is_assign => assigned += 1,
                        OpOutcome::Skipped(e) if is_assign => {
                            skipped += 1;
                            tracing::debug!(error = %e, "assignment skipped");
                        }
                        _ => {}
                    }
                }
            }
        }

        let stats = PassStats {
            assigned,
            unschedulable,
        };
        let elapsed = started.elapsed();
        METRICS
            .scheduler_pass_seconds
            .observe(elapsed.as_secs_f64());
        if assigned > 0 {
            METRICS
                .scheduler_decisions
                .get_or_create(&Outcome {
                    result: "assigned".into(),
                })
                .inc_by(assigned as u64);
        }
        if stats.unschedulable > 0 {
            METRICS
                .scheduler_decisions
                .get_or_create(&Outcome {
                    result: "unschedulable".into(),
                })
                .inc_by(stats.unschedulable as u64);
        }
        if assigned > 0 || skipped > 0 {
            tracing::debug!(
                assigned,
                skipped,
                unschedulable = stats.unschedulable,
                plan_ms = planned.as_millis() as u64,
                total_ms = elapsed.as_millis() as u64,
                "scheduling pass"
            );
        }
        // Assignments the store skipped (the task changed meanwhile) leave tasks PENDING.
        Ok((stats, left_pending + skipped))
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
