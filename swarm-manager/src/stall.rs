//! Stalls of the manager's tokio runtimes, measured from inside: a task on each runtime asks
//! to wake every [`TICK`] and records how late it woke (`swarm_runtime_tick_lateness_seconds`
//! by runtime, and a warning past [`SLOW`]). A late tick means every task of that runtime
//! waited as long: on `main`, the gRPC server with the Raft service's answers to the other
//! managers; on `raft`, the heartbeats. The figure tells a stalled process (both late), a
//! runtime whose worker threads are blocked (one late), and a slow network (neither).

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{RuntimeLabel, METRICS};

/// How often each watcher asks to wake.
pub const TICK: Duration = Duration::from_millis(50);

/// A tick at least this late is logged.
pub const SLOW: Duration = Duration::from_millis(250);

/// Runs until dropped: wakes every [`TICK`] on the runtime it is spawned on (`runtime` names
/// it in the metric and the log) and records the lateness of each wake-up.
pub async fn watch(runtime: &'static str) {
    let label = RuntimeLabel {
        runtime: runtime.to_string(),
    };
    let lateness = METRICS
        .runtime_tick_lateness_seconds
        .get_or_create(&label)
        .clone();
    loop {
        let due = Instant::now() + TICK;
        tokio::time::sleep_until(due).await;
        let late = Instant::now().saturating_duration_since(due);
        lateness.observe(late.as_secs_f64());
        if late >= SLOW {
            tracing::warn!(
                runtime,
                "the {runtime} runtime ran a {TICK:?} tick {late:?} late: none of its tasks ran meanwhile (worker threads blocked, or the process not scheduled)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_shows_as_a_late_tick() {
        let label = RuntimeLabel {
            runtime: "test-blocked".to_string(),
        };
        let h = METRICS
            .runtime_tick_lateness_seconds
            .get_or_create(&label)
            .clone();
        let watcher = tokio::spawn(watch("test-blocked"));
        // Let it arm its first tick, then block the only thread past it.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(400));
        // The watcher runs once this task yields; give it a few ticks.
        tokio::time::sleep(TICK * 3).await;
        watcher.abort();
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("h", "h", h);
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        // The 400 ms block lands in a bucket above 0.2 s; the sum holds it.
        let sum: f64 = text
            .lines()
            .find(|l| l.starts_with("h_sum"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!(sum >= 0.3, "lateness sum {sum}: {text}");
    }
}
