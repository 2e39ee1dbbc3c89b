//! Prometheus metrics of the containerd executor, in the process's registry
//! (`swarm_common::metrics`): where the time of starting and stopping tasks goes.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Phase {
    /// `pull` (resolve, fetch, unpack), `create` (namespace, spec, container, rootfs),
    /// `start` (Tasks.Create + Start), `stop` (signal to exit), `adopt`.
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullResult {
    /// `fetched` (blobs downloaded), `present` (nothing to download), `error`.
    pub result: String,
}

pub struct ExecutorMetrics {
    pub phase_seconds: Family<Phase, Histogram, fn() -> Histogram>,
    pub pulls: Family<PullResult, Counter>,
}

fn buckets() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub static METRICS: LazyLock<ExecutorMetrics> = LazyLock::new(|| {
    let m = ExecutorMetrics {
        phase_seconds: Family::new_with_constructor(buckets),
        pulls: Family::default(),
    };
    swarm_common::metrics::register(
        "executor_phase_seconds",
        "Time of each phase of running a task in containerd",
        m.phase_seconds.clone(),
    );
    swarm_common::metrics::register(
        "executor_image_pulls",
        "Image pulls by result",
        m.pulls.clone(),
    );
    m
});

pub fn observe(phase: &str, took: Duration) {
    METRICS
        .phase_seconds
        .get_or_create(&Phase {
            phase: phase.to_string(),
        })
        .observe(took.as_secs_f64());
}

pub fn pulled(result: &str) {
    METRICS
        .pulls
        .get_or_create(&PullResult {
            result: result.to_string(),
        })
        .inc();
}
