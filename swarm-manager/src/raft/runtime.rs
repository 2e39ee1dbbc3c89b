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
//! The other managers' Raft calls (AppendEntries, votes, snapshots) are read and answered
//! here too, by a Raft-only gRPC server: the port is shared with every other service, and
//! the accept loop tells Raft's connections by their ClientHello (`tls::incoming_split`). A
//! follower whose main runtime stalled (`stall.rs` measures it: hundreds of milliseconds at
//! 5 000 nodes) otherwise read the leader's heartbeats too late and started elections.
//!
//! The thread also runs at a higher priority than the rest of the process ([`RAFT_NICE`]
//! below it, where the process may: root, or `CAP_SYS_NICE`). A runtime of its own keeps
//! Raft's tasks out of tokio's queue, not out of the kernel's: on two cores loaded by the
//! rest of the manager and by everything else on the machine, the thread waited for a CPU
//! about four times as long as it ran (`/proc/<pid>/task/<tid>/schedstat` during `bench
//! scale` at 5 000 nodes), and its ticks ran up to 1.6 s late. etcd's tuning guide gives the
//! same advice for the whole etcd process (`nice -n -19`).
//!
//! What still runs on the main runtime: every other gRPC service, and everything else that
//! reads the store.

use std::future::Future;

use tokio::sync::oneshot;

/// How much nicer than the process the Raft thread asks to be (lower is more CPU): a
/// weight about nine times the process's other threads' under Linux's scheduler.
pub const RAFT_NICE: i32 = -10;

/// Lowers the calling thread's nice value by `RAFT_NICE` (bounded at -20); the nice value
/// it runs at, or why it was refused. Linux applies `setpriority` on a thread id to that
/// thread alone.
fn raise_this_threads_priority() -> Result<i32, std::io::Error> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // getpriority can return -1 as a value: errno tells an error from it.
    // SAFETY: errno is this thread's; the calls take plain integers.
    let current = unsafe {
        *libc::__errno_location() = 0;
        let p = libc::getpriority(libc::PRIO_PROCESS, tid);
        if p == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        p
    };
    let wanted = (current + RAFT_NICE).max(-20);
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, wanted) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wanted)
}

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
                match raise_this_threads_priority() {
                    Ok(nice) => tracing::debug!(nice, "the Raft thread runs at a higher priority"),
                    Err(e) => tracing::warn!(
                        "the Raft thread runs at the process's priority: raising it was refused ({e}); under CPU load its heartbeats may then leave late and start elections (give the agent CAP_SYS_NICE, as root has)"
                    ),
                }
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

    /// The calling thread's nice value, from /proc.
    fn nice_of_this_thread() -> i32 {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the command's closing parenthesis: state is the 3rd field, nice the 19th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn the_raft_thread_runs_nicer_than_the_process_where_it_may() {
        let rt = RaftRuntime::start().unwrap();
        let outside = nice_of_this_thread();
        let inside = rt.run(async { nice_of_this_thread() }).await;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(inside, (outside + RAFT_NICE).max(-20), "as root");
        } else {
            assert!(
                inside == outside || inside == (outside + RAFT_NICE).max(-20),
                "{inside} (process {outside})"
            );
        }
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
