//! Prometheus metrics of the manager. Components record into [`METRICS`], whose families
//! are registered in the process registry (`swarm_common::metrics`) on first use; the
//! daemon serves that registry on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use swarm_common::metrics::register;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

/// A Raft call to another manager: `append_entries`, `vote` or `install_snapshot`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    pub rpc: String,
}

/// A Raft call and the Raft id of the manager it went to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcPeer {
    pub rpc: String,
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `assigned` or `unschedulable`
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Component {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentResult {
    pub component: String,
    /// `applied`, `skipped` (a version check lost a race, or the object was gone) or
    /// `failed` (the proposal was not committed)
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

/// A tokio runtime of the manager: `main` or `raft`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabel {
    pub runtime: String,
}

fn latency() -> Histogram {
    swarm_common::metrics::latency_histogram()
}

pub struct Metrics {
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_leader_id: Gauge,
    pub raft_commit_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_apply_seconds: Histogram,
    pub raft_log_bytes: Gauge,
    pub raft_snapshot_bytes: Gauge,
    pub raft_heartbeat_seconds: Gauge<f64, AtomicU64>,
    pub raft_rpc_seconds: Family<Rpc, Histogram, fn() -> Histogram>,
    pub raft_rpc_timeouts: Family<RpcPeer, Counter>,
    pub raft_rpc_late_answers: Family<RpcPeer, Counter>,
    pub api_requests: Family<MethodCode, Counter>,
    pub api_seconds: Family<Method, Histogram, fn() -> Histogram>,
    pub scheduler_decisions: Family<Outcome, Counter>,
    pub scheduler_pass_seconds: Histogram,
    pub tasks: Family<StateLabel, Gauge>,
    pub nodes: Family<NodeLabels, Gauge>,
    pub allocator_ipam_rebuilds: Counter,
    pub allocator_nodes_without_ingress_address: Gauge,
    pub reconciler_ops: Family<ComponentResult, Counter>,
    pub reconciler_round_seconds: Family<Component, Histogram, fn() -> Histogram>,
    pub runtime_tick_lateness_seconds: Family<RuntimeLabel, Histogram, fn() -> Histogram>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_id: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_seconds: latency(),
            raft_log_bytes: Gauge::default(),
            raft_snapshot_bytes: Gauge::default(),
            raft_heartbeat_seconds: Gauge::default(),
            raft_rpc_seconds: Family::new_with_constructor(latency),
            raft_rpc_timeouts: Family::default(),
            raft_rpc_late_answers: Family::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency),
            scheduler_decisions: Family::default(),
            scheduler_pass_seconds: latency(),
            tasks: Family::default(),
            nodes: Family::default(),
            allocator_ipam_rebuilds: Counter::default(),
            allocator_nodes_without_ingress_address: Gauge::default(),
            reconciler_ops: Family::default(),
            reconciler_round_seconds: Family::new_with_constructor(latency),
            runtime_tick_lateness_seconds: Family::new_with_constructor(latency),
        };
        register("raft_term", "Current Raft term", m.raft_term.clone());
        register(
            "raft_is_leader",
            "1 if this manager is the Raft leader",
            m.raft_is_leader.clone(),
        );
        register(
            "raft_leader_id",
            "Raft id of the current leader (0: none known)",
            m.raft_leader_id.clone(),
        );
        register(
            "raft_commit_index",
            "Index of the last committed Raft entry",
            m.raft_commit_index.clone(),
        );
        register(
            "raft_applied_index",
            "Index of the last Raft entry applied to the store",
            m.raft_applied_index.clone(),
        );
        register(
            "raft_apply_seconds",
            "Time to apply one batch of committed entries",
            m.raft_apply_seconds.clone(),
        );
        register(
            "raft_log_bytes",
            "Bytes of Raft log entries written since the last snapshot",
            m.raft_log_bytes.clone(),
        );
        register(
            "raft_snapshot_bytes",
            "Size of the latest Raft snapshot stored (sealed), in bytes",
            m.raft_snapshot_bytes.clone(),
        );
        register(
            "raft_heartbeat_seconds",
            "The Raft heartbeat interval of this manager (--raft-heartbeat), also the time openraft allows one AppendEntries call",
            m.raft_heartbeat_seconds.clone(),
        );
        register(
            "raft_rpc_seconds",
            "Round trip of the Raft calls to the other managers that were answered, by call",
            m.raft_rpc_seconds.clone(),
        );
        register(
            "raft_rpc_timeouts",
            "Raft calls to another manager that openraft gave up on (no answer within its timeout), by call and peer",
            m.raft_rpc_timeouts.clone(),
        );
        register(
            "raft_rpc_late_answers",
            "Raft calls answered after openraft gave up on them (a link slower than the timeout, not a cut one), by call and peer",
            m.raft_rpc_late_answers.clone(),
        );
        register(
            "api_requests",
            "Control API requests by method and gRPC code",
            m.api_requests.clone(),
        );
        register(
            "api_request_seconds",
            "Control API latency by method",
            m.api_seconds.clone(),
        );
        register(
            "scheduler_decisions",
            "Scheduler decisions by result",
            m.scheduler_decisions.clone(),
        );
        register(
            "scheduler_pass_seconds",
            "Time of one scheduling pass",
            m.scheduler_pass_seconds.clone(),
        );
        register(
            "tasks",
            "Tasks by observed state (leader only)",
            m.tasks.clone(),
        );
        register(
            "nodes",
            "Nodes by status and availability (leader only)",
            m.nodes.clone(),
        );
        register(
            "allocator_ipam_rebuilds",
            "Times the allocator rebuilt its view of the network addresses from every task in the store (one pass over the state)",
            m.allocator_ipam_rebuilds.clone(),
        );
        register(
            "allocator_nodes_without_ingress_address",
            "Nodes with no address on the ingress network in the allocator's last round (its subnet is full; leader only)",
            m.allocator_nodes_without_ingress_address.clone(),
        );
        register(
            "reconciler_ops",
            "Ops proposed by the leader's reconcilers (orchestrators, allocator, reaper) by component and result",
            m.reconciler_ops.clone(),
        );
        register(
            "reconciler_round_seconds",
            "Time of one reconciler round, computing the plan and proposing it, by component",
            m.reconciler_round_seconds.clone(),
        );
        register(
            "runtime_tick_lateness_seconds",
            "How late a 50 ms tick ran on each of the manager's runtimes (main, raft): time its tasks could not run",
            m.runtime_tick_lateness_seconds.clone(),
        );
        m
    }
}
