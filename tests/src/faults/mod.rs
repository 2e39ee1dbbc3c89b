//! The fault suite's parts (issue 15): partitions on real processes, a recorded history
//! checked for linearizability, and task safety as the executors see it.
//! - [`net`]: [`FaultNet`], a network namespace per node on a bridge; links cut and healed
//!   with nftables, slowed and made lossy with tc netem or, on a kernel without `sch_netem`,
//!   with [`nfqueue`];
//! - [`nfqueue`]: delay (± jitter) and loss without `sch_netem`: an iptables NFQUEUE rule in
//!   a node's namespace and a thread of the test process that holds, accepts and drops its
//!   packets;
//! - [`schedule`]: the seeded schedule of faults (replayed with its seed);
//! - [`workload`]: clients writing and reading services through every manager;
//! - [`history`]: the recorded operations and their check (stateright's
//!   `LinearizabilityTester`), indeterminate operations modelled as such;
//! - [`replicas`]: the copies of a service the simulated executors actually run;
//! - [`liveness`]: how soon after each heal the managers acknowledged a write again;
//! - [`run`]: one run of a seed, and its report.

pub mod history;
pub mod liveness;
pub mod net;
pub mod nfqueue;
pub mod replicas;
pub mod run;
pub mod schedule;
pub mod workload;

pub use net::FaultNet;
