//! Raft timing and log compaction settings of the managers.
//!
//! Failover budget: openraft 0.9 makes a follower wait `leader_lease + election_timeout`
//! after the last message of a leader before it campaigns, where `leader_lease` is
//! `election_timeout_max` and `election_timeout` is drawn once per node from
//! `election_timeout_min..election_timeout_max`; the timers are checked on a tick of
//! 1.5 × `heartbeat_interval`. With 150 ms / 500–750 ms that is at most
//! 750 + 750 + 225 ms ≈ 1.73 s, plus one vote round trip: a new leader within 2 s.

use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};

/// Leader heartbeat interval. It is also openraft's timeout of one AppendEntries RPC.
pub const HEARTBEAT_MS: u64 = 150;
/// Randomized election timeout range (see the module docs for the failover budget).
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 750;
/// Time to send and install one snapshot chunk (the last chunk installs the whole state).
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 30_000;
/// A snapshot is built after this many entries were applied since the previous one.
pub const SNAPSHOT_EVERY_LOGS: u64 = 10_000;
/// A snapshot is also built once the entries appended since the previous one take this many
/// bytes (`raft/snapshot.rs`), so a few large entries cannot grow the log without bound.
pub const SNAPSHOT_EVERY_BYTES: u64 = 64 * 1024 * 1024;
/// Entries already in a snapshot that are kept, so slightly lagging followers catch up
/// from the log rather than with a snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
/// Purge snapshotted entries in batches of at least this many.
pub const PURGE_BATCH: u64 = 256;
/// Largest gRPC message of the Raft transport (snapshot chunks are 3 MiB; one entry is
/// sent alone whatever its size).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest AppendEntries batch of several entries, encoded (see `network.rs`).
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// The validated openraft configuration shared by every manager of the cluster.
pub fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "swarm".to_string(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        max_payload_entries: 300,
        // A follower further behind than this is reported as lagging by `wait` helpers;
        // keep it above the snapshot interval, as openraft advises.
        replication_lag_threshold: 2 * SNAPSHOT_EVERY_LOGS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_LOGS),
        snapshot_max_chunk_size: 3 * 1024 * 1024,
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        purge_batch_size: PURGE_BATCH,
        ..Default::default()
    };
    // The values above are constants that satisfy openraft's rules (min < max,
    // heartbeat < min, payload > 0); the unit test below checks it.
    Arc::new(
        config
            .validate()
            .expect("constant raft configuration is valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_and_fails_over_within_two_seconds() {
        let c = raft_config();
        assert_eq!(c.heartbeat_interval, 150);
        assert!(c.election_timeout_min > c.heartbeat_interval * 3);
        // lease (= max) + worst election timeout (< max) + one tick (1.5 heartbeats)
        let worst = c.election_timeout_max * 2 + c.heartbeat_interval * 3 / 2;
        assert!(worst < 2000, "worst-case failover {worst} ms");
        assert_eq!(c.snapshot_policy, SnapshotPolicy::LogsSinceLast(10_000));
        assert_eq!(c.max_in_snapshot_log_to_keep, 1000);
        assert!(c.replication_lag_threshold > 10_000);
    }
}
