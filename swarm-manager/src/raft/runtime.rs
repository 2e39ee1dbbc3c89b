//! The thread Raft runs on.
//!
//! openraft spawns its core, its replication streams and the state-machine worker with
//! `tokio::spawn` on the runtime that calls `Raft::new`. On the manager's main runtime they
//! queue behind everything else that is ready there; with a thousand agents' assignment and
//! network-state streams recomputing after every commit on two cores, the leader's heartbeats
//! left late enough for followers to campaign (`cargo xtask bench scale` at 1 000 nodes saw
//! dozens of elections). On a runtime of their own, on their own thread, they compete with
//! the rest of the process in the kernel's scheduler instead of waiting in tokio's queue.
//!
//! What still runs on the main runtime: the gRPC server, including the Raft service that
//! receives other managers' AppendEntries and votes (one port for every service), and
//! everything that reads the store.

use std::future::Future;

use tokio::sync::oneshot;

/// A single-threaded tokio runtime on a thread named `raft`, alive until this value is
/// dropped. Tasks still running then are cancelled, so shut Raft down first.
pub struct RaftRuntime {
    handle: tokio::runtime::Handle,
    /// Dropping it ends the thread's `block_on`, which drops the runtime.
    _stop: oneshot::Sender<()>,
}

impl RaftRuntime {
    pub fn start() -> std::io::Result<RaftRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("raft-blocking")
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("raft".to_string())
            .spawn(move || {
                // Returns when the sender is dropped; the runtime then drops here, on its
                // own thread, outside any async context (dropping it inside one panics).
                let _ = rt.block_on(stopped);
            })?;
        Ok(RaftRuntime {
            handle,
            _stop: stop,
        })
    }

    /// Spawns `fut` on the Raft runtime, detached; it is cancelled when the runtime drops.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }

    /// Runs `fut` on the Raft runtime and waits for it from the caller's runtime. Whatever
    /// `fut` spawns (openraft's tasks, the transport's connections) stays on the Raft thread.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(fut).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the raft runtime stopped while starting raft: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_raft_thread_and_its_spawned_tasks_stay_there() {
        let rt = RaftRuntime::start().unwrap();
        let (outer, inner) = rt
            .run(async {
                let outer = std::thread::current().name().map(str::to_string);
                let inner =
                    tokio::spawn(async { std::thread::current().name().map(str::to_string) })
                        .await
                        .unwrap();
                (outer, inner)
            })
            .await;
        assert_eq!(outer.as_deref(), Some("raft"));
        assert_eq!(inner.as_deref(), Some("raft"));
        assert_ne!(
            std::thread::current().name(),
            Some("raft"),
            "the caller stays on its own runtime"
        );
    }

    #[tokio::test]
    async fn dropping_it_ends_the_thread() {
        let rt = RaftRuntime::start().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        // A task that would run forever; it is dropped (tx with it) when the runtime drops.
        rt.handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(rt);
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("the raft runtime dropped its tasks")
            .expect_err("the task ended by being dropped, not by sending");
    }
}
