//! The reconciler loop shared by the leader-only components (orchestrators, restart
//! supervisor, task reaper, allocator): `run_reconciler` waits for the store to change,
//! calls a pure round function that returns a [`Plan`], and proposes the plan.

use std::time::Duration;

use swarm_common::clock::now_ms;

use crate::metrics::{Component, ComponentResult};
use crate::store::{Op, OpOutcome, ProposeError, Request, State, Store};

/// Ops per best-effort request.
const OPS_PER_REQUEST: usize = 1000;
/// All-or-nothing groups packed into one atomic request.
const GROUPS_PER_REQUEST: usize = 32;

/// What one reconcile round wants written.
#[derive(Debug, Default)]
pub struct Plan {
    /// Independent ops, proposed in best-effort batches.
    pub ops: Vec<Op>,
    /// Groups that must apply all or nothing (a replacement: the old task retired with a
    /// version check and its successor created).
    pub groups: Vec<Vec<Op>>,
    /// When the component must run again even if the store does not change (timers).
    pub wake_at_ms: Option<i64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.groups.is_empty()
    }

    pub(crate) fn wake_at(&mut self, at_ms: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    /// The requests to propose, replacements first.
    pub fn into_requests(self) -> Vec<Request> {
        let mut out = Vec::new();
        let mut groups = self.groups.into_iter().peekable();
        while groups.peek().is_some() {
            let ops: Vec<Op> = groups.by_ref().take(GROUPS_PER_REQUEST).flatten().collect();
            out.push(Request::atomic(ops));
        }
        let mut ops = self.ops.into_iter().peekable();
        while ops.peek().is_some() {
            out.push(Request::best_effort(
                ops.by_ref().take(OPS_PER_REQUEST).collect(),
            ));
        }
        out
    }
}

// ---------------------------------------------------------------- the loop

/// What became of one round's ops.
#[derive(Default)]
struct Tally {
    applied: u64,
    skipped: u64,
    failed: u64,
    first_skip: Option<String>,
}

impl Tally {
    fn skip(&mut self, n: u64, why: &dyn std::fmt::Display) {
        self.skipped += n;
        self.first_skip.get_or_insert_with(|| why.to_string());
    }

    /// Into the metrics; one log line for a round with ops not applied (they are tried
    /// again in a later round).
    fn record(&self, component: &'static str, took: Duration) {
        let m = &crate::metrics::METRICS;
        for (result, n) in [
            ("applied", self.applied),
            ("skipped", self.skipped),
            ("failed", self.failed),
        ] {
            if n > 0 {
                m.reconciler_ops
                    .get_or_create(&ComponentResult {
                        component: component.into(),
                        result: result.into(),
                    })
                    .inc_by(n);
            }
        }
        m.reconciler_round_seconds
            .get_or_create(&Component {
                component: component.into(),
            })
            .observe(took.as_secs_f64());
        if self.skipped > 0 {
            tracing::info!(
                component,
                applied = self.applied,
                skipped = self.skipped,
                first = self.first_skip.as_deref().unwrap_or(""),
                "round ended with ops not applied; trying again"
            );
        }
    }
}

/// Runs `round` every time the store changes (bursts coalesced by `debounce`) and when the
/// plan's timer expires; proposes what it returns. Never returns.
pub(crate) async fn run_reconciler<F>(
    store: Store,
    name: &'static str,
    debounce: Duration,
    mut round: F,
) where
    F: FnMut(&State, i64) -> Plan + Send,
{
    const BACKOFF_MIN: Duration = Duration::from_millis(100);
    const BACKOFF_MAX: Duration = Duration::from_secs(5);

    // A new leader may not have applied everything committed before it was elected:
    // wait until the state is current, or two leaders' decisions could overlap.
    let mut backoff = BACKOFF_MIN;
    loop {
        match store.linearize().await {
            Ok(()) => break,
            Err(ProposeError::NotLeader { .. }) => {
                tracing::debug!(component = name, "not leader yet; waiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(component = name, error = %e, "cannot read a current state; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    tracing::debug!(component = name, "started");

    let mut watch = store.watch();
    let mut backoff = BACKOFF_MIN;
    loop {
        watch.borrow_and_update();
        let started = std::time::Instant::now();
        let plan = {
            let st = store.read();
            round(&st, now_ms())
        };
        let wake_at = plan.wake_at_ms;
        let mut tally = Tally::default();
        let mut requests = plan.into_requests().into_iter();
        while let Some(req) = requests.next() {
            let n = req.ops.len() as u64;
            match store.propose(req).await {
                Ok(resp) => match resp.result {
                    Some(Err(e)) => {
                        // Usually a version check that lost a race: re-read and retry.
                        tally.skip(n, &e);
                    }
                    Some(Ok(outcomes)) => {
                        for o in outcomes {
                            match o {
                                OpOutcome::Skipped(e) => tally.skip(1, &e),
                                OpOutcome::Applied(_) => tally.applied += 1,
                            }
                        }
                    }
                    None => tally.applied += n,
                },
                Err(e) => {
                    let rest: u64 = requests.by_ref().map(|r| r.ops.len() as u64).sum();
                    tally.failed = n + rest;
                    if matches!(e, ProposeError::NotLeader { .. }) {
                        // The manager aborts this task when it sees the leadership change.
                        tracing::info!(component = name, "no longer leader; pausing");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    } else {
                        tracing::warn!(component = name, error = %e, unproposed_ops = tally.failed, "proposal failed; will retry");
                    }
                    break;
                }
            }
        }
        tally.record(name, started.elapsed());
        if tally.failed > 0 || tally.skipped > 0 {
            // Never loop hot: a failed batch is itself an applied entry that wakes us. A
            // round that applied ops besides the skipped ones made progress, and the next
            // one comes soon; one that only lost races, or could not propose, backs off.
            if tally.failed == 0 && tally.applied > 0 {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;

        let timer = async {
            match wake_at {
                Some(at) => {
                    let ms = (at - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(ms)).await
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    // The store is gone: the manager is shutting down.
                    std::future::pending::<()>().await;
                }
                if !debounce.is_zero() {
                    tokio::time::sleep(debounce).await;
                }
            }
            _ = timer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::task::new_task;
    use crate::orchestrator::testutil::replicated;
    use crate::store::Object;
    use proto::TaskState;

    #[test]
    fn plan_packs_groups_atomically_and_ops_best_effort() {
        let svc = replicated("s", 1);
        let mut plan = Plan::default();
        for i in 0..40 {
            let t = new_task(&svc, i + 1, "", TaskState::Running, 0);
            plan.groups.push(vec![Op::Create(Object::Task(t))]);
        }
        for i in 0..1500 {
            plan.ops.push(Op::SetTaskDesiredState {
                task_id: format!("t{i}"),
                desired: TaskState::Shutdown,
            });
        }
        plan.wake_at(50);
        plan.wake_at(20);
        assert_eq!(plan.wake_at_ms, Some(20));
        let reqs = plan.into_requests();
        let shape: Vec<(bool, usize)> = reqs.iter().map(|r| (r.atomic, r.ops.len())).collect();
        assert_eq!(
            shape,
            vec![(true, 32), (true, 8), (false, 1000), (false, 500)]
        );
    }
}
