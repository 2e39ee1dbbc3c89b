//! Raft timing and log compaction settings of the managers.
//!
//! Timing has one knob, the leader's heartbeat interval ([`RaftTiming`], the agent's
//! `--raft-heartbeat`); the election timeouts follow from it. The heartbeat is also
//! openraft 0.9's timeout of one AppendEntries call: while the round trip between the leader
//! and the other managers exceeds it, no call succeeds and nothing commits (no election
//! either: the heartbeats still arrive). `raft/rpc_timing.rs` measures the round trips and
//! says so when an answer comes after the timeout.
//!
//! Failover budget: openraft 0.9 makes a follower wait `leader_lease + election_timeout`
//! after the last message of a leader before it campaigns, where `leader_lease` is
//! `election_timeout_max` and `election_timeout` is drawn once per node from
//! `election_timeout_min..election_timeout_max`; the timers are checked on a tick of
//! 1.5 × `heartbeat_interval`. With the default 150 ms / 500–750 ms that is at most
//! 750 + 750 + 225 ms ≈ 1.73 s, plus one vote round trip: a new leader within 2 s. In
//! general 11.5 heartbeats ([`RaftTiming::worst_failover`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};

/// The default leader heartbeat interval.
pub const HEARTBEAT_MS: u64 = 150;

/// The managers' Raft timing: the leader's heartbeat interval, from which the election
/// timeouts follow in the default's proportions. Every manager of a cluster should be given
/// the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    heartbeat: Duration,
}

/// A heartbeat interval [`RaftTiming::new`] refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "Raft heartbeat {given:?} is out of range: give one from {:?} to {:?}, at least the \
     round trip between the managers (failover then takes up to 11.5 heartbeats)",
    RaftTiming::MIN_HEARTBEAT,
    RaftTiming::MAX_HEARTBEAT
)]
pub struct HeartbeatOutOfRange {
    pub given: Duration,
}

impl RaftTiming {
    /// Below this, heartbeats cost more than they buy and a loaded machine's scheduling
    /// delays alone would time calls out.
    pub const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
    /// Above this, a failover takes minutes.
    pub const MAX_HEARTBEAT: Duration = Duration::from_secs(10);

    /// The timing of a leader heartbeat every `heartbeat` (whole milliseconds; openraft
    /// counts in them).
    pub fn new(heartbeat: Duration) -> Result<RaftTiming, HeartbeatOutOfRange> {
        let heartbeat = Duration::from_millis(heartbeat.as_millis() as u64);
        if !(Self::MIN_HEARTBEAT..=Self::MAX_HEARTBEAT).contains(&heartbeat) {
            return Err(HeartbeatOutOfRange { given: heartbeat });
        }
        Ok(RaftTiming { heartbeat })
    }

    /// The leader's heartbeat interval, and openraft's timeout of one AppendEntries call.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    fn heartbeat_ms(&self) -> u64 {
        self.heartbeat.as_millis() as u64
    }

    /// The shortest election timeout, 10/3 heartbeats (also openraft's timeout of a vote).
    pub fn election_timeout_min(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms() * 10 / 3)
    }

    /// The longest election timeout, 5 heartbeats.
    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms() * 5)
    }

    /// The longest a follower may wait after a dead leader's last message before it
    /// campaigns (the module docs): lease + election timeout + one tick.
    pub fn worst_failover(&self) -> Duration {
        self.election_timeout_max() * 2 + self.heartbeat * 3 / 2
    }
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming {
            heartbeat: Duration::from_millis(HEARTBEAT_MS),
        }
    }
}
/// Time to send and install one snapshot chunk (the last chunk installs the whole state).
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 30_000;
/// A snapshot is built after this many entries were applied since the previous one: the
/// default of the agent's `--raft-snapshot-interval` (Docker's `--snapshot-interval`).
pub const SNAPSHOT_EVERY_LOGS: u64 = 10_000;
/// The largest `--raft-snapshot-interval`: past it a restarted manager re-applies more
/// than a million entries, and the log of a busy cluster grows by gigabytes between
/// snapshots (the size trigger, [`SNAPSHOT_EVERY_BYTES`], still bounds that).
pub const MAX_SNAPSHOT_INTERVAL: u64 = 1_000_000;
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

/// The validated openraft configuration of the default timing.
pub fn raft_config() -> Arc<Config> {
    raft_config_for(RaftTiming::default(), SNAPSHOT_EVERY_LOGS)
}

/// The validated openraft configuration of a manager with `timing`.
/// `snapshot_interval`: entries between snapshots, 1 ..= [`MAX_SNAPSHOT_INTERVAL`] (the
/// agent's flag checks it; a value out of range is clamped).
pub fn raft_config_for(timing: RaftTiming, snapshot_interval: u64) -> Arc<Config> {
    let snapshot_interval = snapshot_interval.clamp(1, MAX_SNAPSHOT_INTERVAL);
    let config = Config {
        cluster_name: "swarm".to_string(),
        heartbeat_interval: timing.heartbeat_ms(),
        election_timeout_min: timing.election_timeout_min().as_millis() as u64,
        election_timeout_max: timing.election_timeout_max().as_millis() as u64,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        max_payload_entries: 300,
        // A follower further behind than this is reported as lagging by `wait` helpers;
        // keep it above the snapshot interval, as openraft advises.
        replication_lag_threshold: 2 * snapshot_interval,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_interval),
        snapshot_max_chunk_size: 3 * 1024 * 1024,
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        purge_batch_size: PURGE_BATCH,
        ..Default::default()
    };
    // Any RaftTiming satisfies openraft's rules (heartbeat < min < max, from 50 ms up: min
    // is at least 166 ms), and the rest are constants (payload > 0); the unit tests below
    // check both ends of the range.
    Arc::new(
        config
            .validate()
            .expect("a RaftTiming's raft configuration is valid"),
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
        assert_eq!(
            RaftTiming::default().worst_failover(),
            Duration::from_millis(1725)
        );
    }

    #[test]
    fn a_longer_heartbeat_stretches_the_election_timeouts_alike() {
        let t = RaftTiming::new(Duration::from_millis(600)).unwrap();
        let c = raft_config_for(t, SNAPSHOT_EVERY_LOGS);
        assert_eq!(c.heartbeat_interval, 600);
        assert_eq!(c.election_timeout_min, 2000);
        assert_eq!(c.election_timeout_max, 3000);
        assert_eq!(t.worst_failover(), Duration::from_millis(6900));
        // Both ends of the range give a configuration openraft accepts.
        for hb in [RaftTiming::MIN_HEARTBEAT, RaftTiming::MAX_HEARTBEAT] {
            let c = raft_config_for(RaftTiming::new(hb).unwrap(), SNAPSHOT_EVERY_LOGS);
            assert!(c.heartbeat_interval < c.election_timeout_min);
        }
    }

    #[test]
    fn a_heartbeat_out_of_range_is_refused_with_the_range() {
        let e = RaftTiming::new(Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.given, Duration::from_millis(20));
        let msg = e.to_string();
        assert!(msg.contains("50ms") && msg.contains("10s"), "{msg}");
        assert!(RaftTiming::new(Duration::from_secs(11)).is_err());
        // Sub-millisecond parts are dropped (openraft counts milliseconds).
        let t = RaftTiming::new(Duration::from_micros(150_900)).unwrap();
        assert_eq!(t.heartbeat(), Duration::from_millis(150));
    }
}
