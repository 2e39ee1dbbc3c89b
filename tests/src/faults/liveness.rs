//! Liveness once a fault healed: how long the managers took to acknowledge a write again.
//!
//! Safety (the history linearizable) says nothing about a cluster that stops answering. After
//! each heal the cluster is whole for the step's rest (3–6 s): a leader that kept its majority
//! goes on, and one that lost it is replaced within an election timeout. A run fails when,
//! after some heal, no write (a create or a compare-and-set that took effect) was
//! acknowledged within [`BOUND`].

use std::time::{Duration, Instant};

use super::history::{Record, Ret};

/// How long after a heal the first acknowledged write may come: the shortest rest of a
/// schedule (3 s), which is two election timeouts (at most 750 ms each) plus a client's
/// retry with room to spare.
pub const BOUND: Duration = Duration::from_secs(3);

/// For each heal (when it healed, when the next fault began): the time from the heal to the
/// first write acknowledged at or after it, or `None` when none came before the next fault.
pub fn recoveries(records: &[Record], heals: &[(Instant, Instant)]) -> Vec<Option<Duration>> {
    let mut acked: Vec<Instant> = records
        .iter()
        .filter_map(|r| match &r.completed {
            Some((t, Ret::Created | Ret::CasOk)) => Some(*t),
            _ => None,
        })
        .collect();
    acked.sort();
    heals
        .iter()
        .map(|(healed, until)| {
            let i = acked.partition_point(|t| t < healed);
            acked.get(i).filter(|t| *t <= until).map(|t| *t - *healed)
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
}
