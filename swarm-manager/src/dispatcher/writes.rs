//! The rate of store writes each node causes: a token bucket per node, and the task status
//! reports waiting for a token, coalesced per task (the latest report wins, see
//! [`bounds::merge`]).
//!
//! A report is acknowledged only once the write that carries it is committed (or once it
//! is known to change nothing), so an acknowledged status is never lost. Callers of one node
//! share the writes: whoever finds no write in flight waits for a token, takes every report
//! queued so far and proposes them as one Raft entry; the others wait for that entry.
//! A node that reports faster than its bucket refills therefore gets slower answers, and the
//! Raft log grows by at most [`BURST`] + [`PER_SECOND`] entries a second per node, each
//! holding at most one bounded status per task of the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::TaskStatus;
use tokio::sync::watch;
use tonic::Status;

use super::bounds;

/// Writes a node may cause at once after a quiet period.
pub const BURST: u32 = 20;
/// Writes a second a node may cause in the long run.
pub const PER_SECOND: u32 = 10;

/// A token bucket: `capacity` tokens, refilled at `per_second`. Time is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u32, per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(capacity.max(1)),
            per_second: f64::from(per_second.max(1)),
            tokens: f64::from(capacity.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

/// The outcome of one write, shared by every caller whose reports it carried.
pub type Outcome = Option<Result<(), Status>>;

/// Reports queued for the next write of one node.
struct Batch {
    pending: HashMap<String, TaskStatus>,
    done: watch::Sender<Outcome>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            pending: HashMap::new(),
            done: watch::channel(None).0,
        }
    }
}

/// One node's writes: its bucket, its queued reports and who is writing them.
pub struct NodeWrites {
    bucket: Mutex<TokenBucket>,
    batch: Mutex<Batch>,
    writer: tokio::sync::Mutex<()>,
}

impl Default for NodeWrites {
    fn default() -> Self {
        NodeWrites {
            bucket: Mutex::new(TokenBucket::new(BURST, PER_SECOND, Instant::now())),
            batch: Mutex::new(Batch::new()),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

impl NodeWrites {
    /// Waits until the node may cause one more write.
    pub async fn token(&self) {
        loop {
            let wait = {
                let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
                match b.take(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a token if there is one now.
    pub fn try_token(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.take(Instant::now()).is_ok()
    }

    /// Queues `reports` (already bounded) for the next write; the receiver gets its outcome.
    fn enqueue(&self, reports: Vec<(String, TaskStatus)>) -> watch::Receiver<Outcome> {
        let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        for (task_id, status) in reports {
            let status = match b.pending.remove(&task_id) {
                Some(earlier) => bounds::merge(earlier, status),
                None => status,
            };
            b.pending.insert(task_id, status);
        }
        b.done.subscribe()
    }

    /// Queues `reports` and returns once a write carried them (or they changed nothing).
    /// `ops_of` turns queued reports into the store ops that change something (reading the
    /// store); `write` proposes them.
    pub async fn report<F, W, Fut>(
        &self,
        reports: Vec<(String, TaskStatus)>,
        ops_of: F,
        write: W,
    ) -> Result<(), Status>
    where
        F: Fn(&HashMap<String, TaskStatus>) -> Vec<crate::store::Op>,
        W: Fn(Vec<crate::store::Op>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let mut done = self.enqueue(reports);
        loop {
            if let Some(outcome) = done.borrow().clone() {
                return outcome;
            }
            tokio::select! {
                changed = done.changed() => {
                    if changed.is_err() && done.borrow().is_none() {
                        return Err(Status::unavailable("the manager stopped writing task status; send it again"));
                    }
                }
                _writer = self.writer.lock() => {
                    if done.borrow().is_some() {
                        continue;
                    }
                    // A batch whose reports change nothing needs no token.
                    let needs_write = {
                        let b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
                        !ops_of(&b.pending).is_empty()
                    };
                    if needs_write {
                        self.token().await;
                    }
                    let batch = std::mem::replace(
                        &mut *self.batch.lock().unwrap_or_else(|e| e.into_inner()),
                        Batch::new(),
                    );
                    let ops = ops_of(&batch.pending);
                    let outcome = if ops.is_empty() { Ok(()) } else { write(ops).await };
                    batch.done.send_replace(Some(outcome));
                }
            }
        }
    }
}

/// Every node's writes, by node id.
#[derive(Clone, Default)]
pub struct Writes {
    nodes: Arc<Mutex<HashMap<String, Arc<NodeWrites>>>>,
}

impl Writes {
    pub fn of(&self, node_id: &str) -> Arc<NodeWrites> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.entry(node_id.to_string()).or_default().clone()
    }

    /// Forgets nodes that are not in `keep` (removed from the swarm).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proto::TaskState;

    use super::*;
    use crate::store::Op;

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 10, t0);
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(b.take(t0 + Duration::from_millis(50)).is_err());
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        // A long pause refills to the capacity, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    fn running(message: String) -> TaskStatus {
        TaskStatus {
            state: TaskState::Running as i32,
            message,
            ..Default::default()
        }
    }

    fn ops(pending: &HashMap<String, TaskStatus>) -> Vec<Op> {
        pending
            .iter()
            .map(|(id, s)| Op::SetTaskStatus {
                task_id: id.clone(),
                status: s.clone(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_flood_of_reports_is_coalesced_into_writes_at_the_node_rate() {
        let node = Arc::new(NodeWrites::default());
        let writes = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(Mutex::new(Vec::<TaskStatus>::new()));
        let start = Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        const REPORTS: usize = 500;
        for i in 0..REPORTS {
            let node = node.clone();
            let writes = writes.clone();
            let written = written.clone();
            callers.spawn(async move {
                let mut status = running(format!("report {i}"));
                if i == REPORTS - 1 {
                    status.state = TaskState::Failed as i32;
                }
                node.report(vec![("t1".into(), status)], ops, |ops| {
                    writes.fetch_add(1, Ordering::SeqCst);
                    for op in ops {
                        if let Op::SetTaskStatus { status, .. } = op {
                            written.lock().unwrap().push(status);
                        }
                    }
                    async { Ok(()) }
                })
                .await
            });
            // The reports arrive over 1 s and more.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while let Some(r) = callers.join_next().await {
            r.unwrap().expect("every report is acknowledged");
        }
        let elapsed = start.elapsed().as_secs_f64();
        let n = writes.load(Ordering::SeqCst) as f64;
        let bound = f64::from(BURST) + f64::from(PER_SECOND) * elapsed + 1.0;
        assert!(n <= bound, "{n} writes in {elapsed:.1} s, bound {bound:.0}");
        assert!(
            n < REPORTS as f64 / 10.0,
            "{n} writes for {REPORTS} reports"
        );
        // The failure reported last was written and written last.
        let written = written.lock().unwrap();
        assert_eq!(written.last().unwrap().state, TaskState::Failed as i32);
    }

    #[tokio::test]
    async fn reports_that_change_nothing_take_no_token_and_a_failed_write_is_an_error() {
        let node = NodeWrites::default();
        for _ in 0..(BURST * 5) {
            node.report(
                vec![("t1".into(), running("same".into()))],
                |_| Vec::new(),
                |_| async { panic!("nothing to write") },
            )
            .await
            .unwrap();
        }
        assert!(
            node.try_token(),
            "no token was spent on reports that change nothing"
        );
        let e = node
            .report(vec![("t1".into(), running("new".into()))], ops, |_| async {
                Err(Status::unavailable("no leader"))
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
    }
}
