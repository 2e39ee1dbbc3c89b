//! Liveness once a fault healed: how long the managers took to acknowledge a write again.
//!
//! Safety (the history linearizable) says nothing about a cluster that stops answering. After
//! each heal the cluster is whole for the step's rest (3–6 s): a leader that kept its majority
//! goes on, and one that lost it is replaced within an election timeout. A run fails when,
//! after some heal, no write (a create or a compare-and-set that took effect) was
//! acknowledged within [`BOUND`].
//!
//! While a fault holds, a majority of the managers can still reach each other (every fault of
//! the schedule cuts, slows or isolates one node, or splits 2|1), so writes through that
//! majority should go on. [`stalls`] measures, for each fault, the longest stretch with no
//! write acknowledged, and a run fails when one is longer than the fault's [`stall_bound`]:
//! [`STALL_BOUND`], but none for latency on a manager that brings its round trip near the
//! Raft heartbeat (openraft 0.9 gives up on each replication call after one heartbeat, so a
//! leader that slow commits nothing until the fault heals: the documented limit of
//! `--raft-heartbeat`, which the managers report as late answers).

use std::time::{Duration, Instant};

use swarm_manager::raft::config::RaftTiming;

use super::history::{Record, Ret};
use super::schedule::Fault;

/// The longest a fault may stop every write: twice the worst stall measured in the runs
/// that set it (3.5 s, a leader isolated: the others elect one, and the calls in flight
/// through them end and are retried). A leader elected within the 2 s target after a split
/// vote takes about that.
pub const STALL_BOUND: Duration = Duration::from_secs(7);

/// A manager's added delay at or above this share of the heartbeat may bring the leader's
/// round trip to it (the rest is the handling of the call).
const NEAR_HEARTBEAT_PERCENT: u32 = 80;

/// The bound of the longest stall while `fault` holds, on a cluster of `managers` managers
/// (nodes `0..managers`) at the default Raft timing; `None` where no bound holds.
pub fn stall_bound(fault: &Fault, managers: usize) -> Option<Duration> {
    match fault {
        Fault::Netem {
            node,
            delay_ms,
            jitter_ms,
            ..
        } if *node < managers => {
            let heartbeat_ms = RaftTiming::default().heartbeat().as_millis() as u32;
            let near = heartbeat_ms * NEAR_HEARTBEAT_PERCENT / 100;
            (delay_ms + jitter_ms < near).then_some(STALL_BOUND)
        }
        _ => Some(STALL_BOUND),
    }
}

/// The faults whose stall was longer than their bound: (index, stall, bound).
pub fn stalls_over_bound(
    stalls: &[Duration],
    bounds: &[Option<Duration>],
) -> Vec<(usize, Duration, Duration)> {
    stalls
        .iter()
        .zip(bounds)
        .enumerate()
        .filter_map(|(i, (s, b))| b.filter(|b| s > b).map(|b| (i, *s, b)))
        .collect()
}

/// How long after a heal the first acknowledged write may come: the shortest rest of a
/// schedule (3 s), which is two election timeouts (at most 750 ms each) plus a client's
/// retry with room to spare.
pub const BOUND: Duration = Duration::from_secs(3);

/// When the writes that took effect (creates and compare-and-sets) were acknowledged, in
/// order.
fn acknowledged(records: &[Record]) -> Vec<Instant> {
    let mut acked: Vec<Instant> = records
        .iter()
        .filter_map(|r| match &r.completed {
            Some((t, Ret::Created | Ret::CasOk)) => Some(*t),
            _ => None,
        })
        .collect();
    acked.sort();
    acked
}

/// For each heal (when it healed, when the next fault began): the time from the heal to the
/// first write acknowledged at or after it, or `None` when none came before the next fault.
pub fn recoveries(records: &[Record], heals: &[(Instant, Instant)]) -> Vec<Option<Duration>> {
    let acked = acknowledged(records);
    heals
        .iter()
        .map(|(healed, until)| {
            let i = acked.partition_point(|t| t < healed);
            acked.get(i).filter(|t| *t <= until).map(|t| *t - *healed)
        })
        .collect()
}

/// For each fault (when it began, when it was healed): the longest stretch inside it with no
/// write acknowledged, from its start to the first acknowledgement, between two, or from the
/// last to the heal.
pub fn stalls(records: &[Record], faults: &[(Instant, Instant)]) -> Vec<Duration> {
    let acked = acknowledged(records);
    faults
        .iter()
        .map(|(began, healed)| {
            let first = acked.partition_point(|t| t < began);
            let mut last = *began;
            let mut worst = Duration::ZERO;
            for t in acked[first..].iter().take_while(|t| *t <= healed) {
                worst = worst.max(*t - last);
                last = *t;
            }
            worst.max(healed.saturating_duration_since(last))
        })
        .collect()
}

/// Whether every heal was followed by a write within [`BOUND`].
pub fn within_bound(recoveries: &[Option<Duration>]) -> bool {
    recoveries.iter().all(|r| r.is_some_and(|d| d <= BOUND))
}

#[cfg(test)]
mod tests {
    use super::super::history::Op;
    use super::*;

    #[test]
    fn the_first_acknowledged_write_after_each_heal_counts() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rec = |invoked: u64, done: Option<(u64, Ret)>| Record {
            key: "k".into(),
            process: 0,
            op: Op::Create,
            invoked: at(invoked),
            completed: done.map(|(ms, r)| (at(ms), r)),
            via: "node1".into(),
        };
        let records = [
            rec(0, Some((100, Ret::Created))),
            // A read and a refused compare-and-set are not writes that took effect.
            rec(900, Some((1_100, Ret::Value(1)))),
            rec(900, Some((1_200, Ret::CasMismatch))),
            rec(1_000, Some((1_700, Ret::CasOk))),
            rec(1_000, None),
            rec(5_000, Some((9_500, Ret::Created))),
        ];
        let heals = [
            (at(1_000), at(4_000)),
            (at(4_000), at(7_000)),
            (at(8_000), at(12_000)),
        ];
        let got = recoveries(&records, &heals);
        assert_eq!(
            got,
            vec![
                Some(Duration::from_millis(700)),
                None,
                Some(Duration::from_millis(1_500))
            ]
        );
        assert!(!within_bound(&got));
        assert!(within_bound(&[got[0], got[2]]));
        assert!(!within_bound(&[Some(BOUND + Duration::from_millis(1))]));
    }

    #[test]
    fn latency_near_the_heartbeat_on_a_manager_is_the_one_fault_without_a_stall_bound() {
        let netem = |node, delay_ms, jitter_ms| Fault::Netem {
            node,
            delay_ms,
            jitter_ms,
            loss_pct: 10,
        };
        // 80 % of the default 150 ms heartbeat is 120 ms.
        assert_eq!(stall_bound(&netem(1, 100, 19), 3), Some(STALL_BOUND));
        assert_eq!(stall_bound(&netem(1, 100, 20), 3), None);
        assert_eq!(stall_bound(&netem(0, 171, 28), 3), None);
        // A worker's latency slows no Raft call.
        assert_eq!(stall_bound(&netem(3, 192, 15), 3), Some(STALL_BOUND));
        assert_eq!(stall_bound(&Fault::IsolateLeader, 3), Some(STALL_BOUND));
        let s = Duration::from_secs;
        assert_eq!(
            stalls_over_bound(
                &[s(8), s(8), s(2)],
                &[Some(STALL_BOUND), None, Some(STALL_BOUND)]
            ),
            vec![(0, s(8), STALL_BOUND)]
        );
    }

    #[test]
    fn a_stall_is_the_longest_stretch_inside_a_fault_without_an_acknowledged_write() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rec = |done: u64, ret: Ret| Record {
            key: "k".into(),
            process: 0,
            op: Op::Create,
            invoked: at(0),
            completed: Some((at(done), ret)),
            via: "node1".into(),
        };
        let records = [
            rec(500, Ret::Created),
            rec(1_300, Ret::CasOk),
            // A read and a refused compare-and-set do not end a stall.
            rec(2_000, Ret::Value(1)),
            rec(2_100, Ret::CasMismatch),
            rec(3_800, Ret::Created),
            rec(6_500, Ret::Created),
        ];
        let got = stalls(
            &records,
            &[
                // From the start to the first write (300 ms), between writes (2 500 ms), to
                // the heal (200 ms).
                (at(1_000), at(4_000)),
                // No write at all: the whole fault.
                (at(4_000), at(6_000)),
                // Writes before and after only: the stretch to the heal.
                (at(6_600), at(7_000)),
            ],
        );
        assert_eq!(
            got,
            vec![
                Duration::from_millis(2_500),
                Duration::from_millis(2_000),
                Duration::from_millis(400)
            ]
        );
    }
}
