//! Whether this leader's state holds everything committed before it was elected.
//!
//! A manager elected leader has every committed entry in its log, but it may not have
//! applied them all yet. Served from such a state, an agent's status report on a task
//! assigned just before the election finds the task unassigned and is dropped (while the
//! agent is told it was recorded), and a COMPLETE assignment set omits tasks the node runs.
//! Seen with 5 000 nodes: after an election, 13 services kept hundreds of tasks ASSIGNED
//! for good while their agents ran them. The dispatcher therefore serves a term's agents
//! only once a linearizable read in that term has returned ([`CaughtUp::ensure`]): once per
//! term, the callers of that term sharing one read.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// The last leader term whose state is known current.
pub struct CaughtUp {
    term: AtomicU64,
    reading: tokio::sync::Mutex<()>,
}

/// No term is current yet.
const NONE: u64 = u64::MAX;

impl Default for CaughtUp {
    fn default() -> Self {
        CaughtUp {
            term: AtomicU64::new(NONE),
            reading: tokio::sync::Mutex::new(()),
        }
    }
}

impl CaughtUp {
    /// Returns once this manager's state is current for leader term `term`: at once when
    /// it already was, else after `linearize` succeeds (one caller reads, those arriving
    /// meanwhile wait for it). A failed read is not remembered: the next caller reads again.
    pub async fn ensure<F, Fut, E>(&self, term: u64, linearize: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if self.term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        let _reading = self.reading.lock().await;
        if self.term.load(Ordering::Acquire) == term {
            return Ok(());
        }
        linearize().await?;
        self.term.store(term, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn one_read_per_term_shared_by_concurrent_callers_and_failures_not_kept() {
        let gate = Arc::new(CaughtUp::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let read = |fail: bool| {
            let reads = reads.clone();
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if fail {
                    Err("not leader")
                } else {
                    Ok(())
                }
            }
        };
        // Term 7: 50 callers at once, one read.
        let mut all = Vec::new();
        for _ in 0..50 {
            let gate = gate.clone();
            let read = read(false);
            all.push(tokio::spawn(async move { gate.ensure(7, read).await }));
        }
        for h in all {
            assert_eq!(h.await.unwrap(), Ok(()));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        gate.ensure(7, read(false)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1, "term 7 is current");

        // A new term reads again; a failed read is not remembered.
        assert_eq!(gate.ensure(8, read(true)).await, Err("not leader"));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(gate.ensure(8, read(false)).await, Ok(()));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        gate.ensure(8, read(false)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
