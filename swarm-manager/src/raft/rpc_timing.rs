//! How long the other managers take to answer this manager's Raft calls, and what a late
//! answer means.
//!
//! openraft 0.9 gives each call a timeout (an AppendEntries call the heartbeat interval, a
//! vote the shortest election timeout) and gives up on it then. A link slower than that is
//! not a cut link, but to openraft it looks the same: while the leader's round trip to the
//! others stays above its heartbeat, no AppendEntries call succeeds and nothing commits,
//! although the heartbeats still arrive and no election replaces the leader. The transport
//! (`network.rs`) therefore keeps waiting for an answer [`LATE_ANSWER_WAIT`] beyond the
//! timeout, and [`RpcTiming::finished`] records each call:
//! - `swarm_raft_rpc_seconds{rpc}`: the round trip of every answered call;
//! - `swarm_raft_rpc_timeouts_total{rpc,peer}`: calls openraft gave up on;
//! - `swarm_raft_rpc_late_answers_total{rpc,peer}`: of those, the ones answered afterwards;
//!   each is also a warning in the log (at most one per peer every [`WARN_EVERY`]) naming
//!   the round trip and the heartbeat that would tolerate it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::RPCTypes;

use super::config::RaftTiming;
use crate::metrics::{Rpc, RpcPeer, METRICS};

/// How long a call is still awaited after openraft gave up on it, to tell a slow link
/// (an answer comes) from a cut one.
pub const LATE_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// At most one warning per peer this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Shared by the connections of one manager's Raft transport.
#[derive(Default)]
pub struct RpcTiming {
    /// When a late answer of each peer was last said in the log.
    warned: Mutex<HashMap<u64, Instant>>,
}

/// The `rpc` label of a call.
fn rpc_label(kind: RPCTypes) -> &'static str {
    match kind {
        RPCTypes::AppendEntries => "append_entries",
        RPCTypes::Vote => "vote",
        RPCTypes::InstallSnapshot => "install_snapshot",
    }
}

impl RpcTiming {
    /// A call of `kind` to manager `peer` at `addr` ended after `took`, answered or not;
    /// openraft gave up on it after `timeout`.
    pub fn finished(
        &self,
        peer: u64,
        addr: &str,
        kind: RPCTypes,
        took: Duration,
        timeout: Duration,
        answered: bool,
    ) {
        let rpc = rpc_label(kind).to_string();
        if answered {
            METRICS
                .raft_rpc_seconds
                .get_or_create(&Rpc { rpc: rpc.clone() })
                .observe(took.as_secs_f64());
        }
        if took <= timeout {
            return;
        }
        let labels = RpcPeer {
            rpc,
            peer: peer.to_string(),
        };
        METRICS.raft_rpc_timeouts.get_or_create(&labels).inc();
        if !answered {
            return;
        }
        METRICS.raft_rpc_late_answers.get_or_create(&labels).inc();
        if self.should_warn(peer, Instant::now()) {
            tracing::warn!("{}", late_answer_message(peer, addr, kind, took, timeout));
        }
    }

    /// Whether a late answer of `peer` at `now` is said (none said in the last
    /// [`WARN_EVERY`]); records it when it is.
    fn should_warn(&self, peer: u64, now: Instant) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        match warned.get(&peer) {
            Some(last) if now.saturating_duration_since(*last) < WARN_EVERY => false,
            _ => {
                warned.insert(peer, now);
                true
            }
        }
    }
}

/// The warning of a call answered after openraft's timeout: what it means and the fix.
fn late_answer_message(
    peer: u64,
    addr: &str,
    kind: RPCTypes,
    took: Duration,
    timeout: Duration,
) -> String {
    let (call, what) = match kind {
        RPCTypes::AppendEntries => ("an AppendEntries", "no write commits"),
        RPCTypes::Vote => ("a Vote", "no leader can be elected"),
        RPCTypes::InstallSnapshot => {
            return format!(
                "manager {peer} at {addr} answered an InstallSnapshot call after {took:.0?}, \
                 later than the {timeout:.0?} one snapshot chunk may take: that manager cannot \
                 catch up while its link stays this slow"
            )
        }
    };
    format!(
        "manager {peer} at {addr} answered {call} call after {took:.0?}, later than the \
         {timeout:.0?} openraft waits for it (set by the Raft heartbeat): while the round trip \
         between the managers stays above that, {what}; start every manager with a longer \
         --raft-heartbeat (at least {:.0?}; failover then takes up to 11.5 heartbeats)",
        suggested_heartbeat(took)
    )
}

/// A heartbeat that tolerates a round trip of `took`: twice it, rounded up to 100 ms,
/// within [`RaftTiming`]'s range.
fn suggested_heartbeat(took: Duration) -> Duration {
    let ms = (took.as_millis() as u64).saturating_mul(2).div_ceil(100) * 100;
    Duration::from_millis(ms).clamp(RaftTiming::MIN_HEARTBEAT, RaftTiming::MAX_HEARTBEAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_is_said_once_per_peer_and_period() {
        let t = RpcTiming::default();
        let now = Instant::now();
        assert!(t.should_warn(2, now));
        assert!(!t.should_warn(2, now + Duration::from_secs(1)));
        // Another peer has its own period.
        assert!(t.should_warn(3, now + Duration::from_secs(1)));
        assert!(t.should_warn(2, now + WARN_EVERY));
    }

    #[test]
    fn the_warning_names_the_round_trip_and_a_heartbeat_that_tolerates_it() {
        let msg = late_answer_message(
            2,
            "10.0.0.2:2377",
            RPCTypes::AppendEntries,
            Duration::from_millis(251),
            Duration::from_millis(150),
        );
        assert!(
            msg.contains("manager 2 at 10.0.0.2:2377 answered an AppendEntries call"),
            "{msg}"
        );
        assert!(msg.contains("after 251ms"), "{msg}");
        assert!(msg.contains("no write commits"), "{msg}");
        assert!(msg.contains("--raft-heartbeat (at least 600ms"), "{msg}");
        // Rounded up to 100 ms, and never above the range.
        assert_eq!(
            suggested_heartbeat(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(
            suggested_heartbeat(Duration::from_secs(60)),
            RaftTiming::MAX_HEARTBEAT
        );
    }

    #[test]
    fn only_calls_beyond_the_timeout_count_as_timed_out() {
        let t = RpcTiming::default();
        let labels = RpcPeer {
            rpc: "vote".into(),
            peer: "77".into(),
        };
        let timeouts = || METRICS.raft_rpc_timeouts.get_or_create(&labels).get();
        let late = || METRICS.raft_rpc_late_answers.get_or_create(&labels).get();
        let ms = Duration::from_millis;
        t.finished(77, "a:1", RPCTypes::Vote, ms(100), ms(500), true);
        t.finished(77, "a:1", RPCTypes::Vote, ms(100), ms(500), false);
        assert_eq!((timeouts(), late()), (0, 0));
        t.finished(77, "a:1", RPCTypes::Vote, ms(2600), ms(500), false);
        assert_eq!((timeouts(), late()), (1, 0));
        t.finished(77, "a:1", RPCTypes::Vote, ms(700), ms(500), true);
        assert_eq!((timeouts(), late()), (2, 1));
    }
}
