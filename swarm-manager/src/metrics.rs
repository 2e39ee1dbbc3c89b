//! Prometheus metrics of the manager, in one registry per process. Components record into
//! [`METRICS`]; the daemon serves [`encode`] on `/metrics`.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `assigned` or `unschedulable`
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub status: String,
    pub availability: String,
}

fn latency() -> Histogram {
    // 50 µs … ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_leader_id: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_apply_seconds: Histogram,
    pub api_requests: Family<MethodCode, Counter>,
    pub api_seconds: Family<Method, Histogram, fn() -> Histogram>,
    pub scheduler_decisions: Family<Outcome, Counter>,
    pub scheduler_pass_seconds: Histogram,
    pub tasks: Family<StateLabel, Gauge>,
    pub nodes: Family<NodeLabels, Gauge>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("swarm")),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_seconds: latency(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency),
            scheduler_decisions: Family::default(),
            scheduler_pass_seconds: latency(),
            tasks: Family::default(),
            nodes: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap();
            r.register("raft_term", "Current Raft term", m.raft_term.clone());
            r.register(
                "raft_is_leader",
                "1 if this manager is the Raft leader",
                m.raft_is_leader.clone(),
            );
            r.register(
                "raft_leader_id",
                "Raft id of the current leader (0: none known)",
                m.raft_leader_id.clone(),
            );
            r.register(
                "raft_commit_index",
                "Index of the last committed Raft entry",
                m.raft_commit_index.clone(),
            );
            r.register(
                "raft_applied_index",
                "Index of the last Raft entry applied to the store",
                m.raft_applied_index.clone(),
            );
            r.register(
                "raft_apply_seconds",
                "Time to apply one batch of committed entries",
                m.raft_apply_seconds.clone(),
            );
            r.register(
                "api_requests",
                "Control API requests by method and gRPC code",
                m.api_requests.clone(),
            );
            r.register(
                "api_request_seconds",
                "Control API latency by method",
                m.api_seconds.clone(),
            );
            r.register(
                "scheduler_decisions",
                "Scheduler decisions by result",
                m.scheduler_decisions.clone(),
            );
            r.register(
                "scheduler_pass_seconds",
                "Time of one scheduling pass",
                m.scheduler_pass_seconds.clone(),
            );
            r.register(
                "tasks",
                "Tasks by observed state (leader only)",
                m.tasks.clone(),
            );
            r.register(
                "nodes",
                "Nodes by status and availability (leader only)",
                m.nodes.clone(),
            );
        }
        m
    }

    /// Registers a collector (metrics read at scrape time, e.g. from eBPF maps) of another
    /// component in the same registry.
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.lock().unwrap().register_collector(collector);
    }

    /// Registers a metric of another component (the agent's) in the same registry.
    pub fn register<M: prometheus_client::registry::Metric>(
        &self,
        name: &str,
        help: &str,
        metric: M,
    ) {
        self.registry.lock().unwrap().register(name, help, metric);
    }
}

/// The registry in Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    let r = METRICS.registry.lock().unwrap();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("encoding to a String");
    out
}
