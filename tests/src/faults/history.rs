//! The recorded history of the clients' operations and its check for linearizability with
//! stateright's [`LinearizabilityTester`] against [`Counter`], the sequential specification
//! of one service as the workload uses it (created once, a counter label bumped by
//! compare-and-set, read).
//!
//! Every operation is recorded with its invocation and completion times; an operation whose
//! outcome is unknown (timed out, connection lost, "unavailable") is recorded with no
//! completion: it may have taken effect at any point after its invocation, or never, and
//! its client continues as a new process (as Jepsen does), since a linearizability tester
//! allows one operation in flight per process. Each service is an independent object, so
//! the history is checked per service (linearizability is local), which keeps each search
//! small.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// One service under test: absent until created, then its counter label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counter(Option<u64>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// CreateService with the key's unique name and counter 0.
    Create,
    /// UpdateService naming the version at which the counter read `expect`, setting it to
    /// `expect + 1`.
    Cas { expect: u64 },
    /// GetService (linearizable on the managers).
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    Created,
    AlreadyExists,
    CasOk,
    /// The version named was not the service's: nothing changed. The managers also bump
    /// the version on their own (update status), so a mismatch is allowed whatever the
    /// counter; an `CasOk` is not.
    CasMismatch,
    NotFound,
    Value(u64),
}

impl SequentialSpec for Counter {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match (op, self.0) {
            (Op::Create, None) => {
                self.0 = Some(0);
                Ret::Created
            }
            (Op::Create, Some(_)) => Ret::AlreadyExists,
            (Op::Cas { .. }, None) | (Op::Read, None) => Ret::NotFound,
            (Op::Cas { expect }, Some(v)) if v == *expect => {
                self.0 = Some(v + 1);
                Ret::CasOk
            }
            (Op::Cas { .. }, Some(_)) => Ret::CasMismatch,
            (Op::Read, Some(v)) => Ret::Value(v),
        }
    }

    fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        match (op, ret, self.0) {
            // Spurious mismatches (the version moved for another reason) change nothing.
            (Op::Cas { .. }, Ret::CasMismatch, Some(_)) => true,
            _ => &self.invoke(op) == ret,
        }
    }
}

/// One operation as recorded: which key, which process, when, and how it ended (None:
/// unknown).
#[derive(Clone, Debug)]
pub struct Record {
    pub key: String,
    pub process: u64,
    pub op: Op,
    pub invoked: Instant,
    pub completed: Option<(Instant, Ret)>,
    /// Which manager served it (for the report).
    pub via: String,
}

/// The history of a run, shared by the client threads.
#[derive(Default)]
pub struct History {
    records: Mutex<Vec<Record>>,
}

impl History {
    pub fn record(&self, r: Record) {
        self.records.lock().expect("history lock").push(r);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("history lock").clone()
    }
}

/// What the checker found in one history.
#[derive(Debug, Default)]
pub struct Verdict {
    pub keys: usize,
    pub ops: usize,
    pub ok: usize,
    pub indeterminate: usize,
    /// The keys whose history has no linearization, with their records.
    pub violations: Vec<(String, Vec<Record>)>,
}

impl Verdict {
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks every key's history for linearizability.
pub fn check(records: &[Record]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_key.entry(&r.key).or_default().push(r);
    }
    let mut v = Verdict {
        keys: by_key.len(),
        ops: records.len(),
        ..Default::default()
    };
    for (key, recs) in by_key {
        v.ok += recs.iter().filter(|r| r.completed.is_some()).count();
        v.indeterminate += recs.iter().filter(|r| r.completed.is_none()).count();
        if !linearizable(&recs) {
            v.violations
                .push((key.to_string(), recs.into_iter().cloned().collect()));
        }
    }
    v
}

/// Feeds one key's records to the tester in real-time order: invocations and completions
/// sorted by time, an invocation before a completion at the same instant (so they count as
/// concurrent, the weaker claim).
fn linearizable(recs: &[&Record]) -> bool {
    enum Ev<'a> {
        Invoke(&'a Record),
        Return(&'a Record),
    }
    let mut evs: Vec<(Instant, u8, Ev)> = Vec::new();
    for r in recs {
        evs.push((r.invoked, 0, Ev::Invoke(r)));
        if let Some((t, _)) = &r.completed {
            evs.push((*t, 1, Ev::Return(r)));
        }
    }
    evs.sort_by_key(|e| (e.0, e.1));
    let mut tester = LinearizabilityTester::new(Counter::default());
    for (_, _, ev) in evs {
        let step = match ev {
            Ev::Invoke(r) => tester.on_invoke(r.process, r.op.clone()).map(|_| ()),
            Ev::Return(r) => {
                let ret = r.completed.as_ref().map(|(_, ret)| ret.clone());
                tester
                    .on_return(r.process, ret.expect("a return has its value"))
                    .map(|_| ())
            }
        };
        // A malformed history (two operations in flight in one process) is a bug of the
        // recorder: count it as a failure rather than hide it.
        if step.is_err() {
            return false;
        }
    }
    tester.is_consistent()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(p: u64, op: Op, from: u64, to: Option<(u64, Ret)>) -> Record {
        let t0 = base();
        Record {
            key: "k".into(),
            process: p,
            op,
            invoked: t0 + Duration::from_millis(from),
            completed: to.map(|(t, r)| (t0 + Duration::from_millis(t), r)),
            via: "node1".into(),
        }
    }

    fn base() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    #[test]
    fn a_read_after_a_completed_cas_must_see_it() {
        let ok = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(1, Op::Cas { expect: 0 }, 20, Some((30, Ret::CasOk))),
            rec(2, Op::Read, 40, Some((50, Ret::Value(1)))),
        ];
        assert!(check(&ok).linearizable());
        let stale = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(1, Op::Cas { expect: 0 }, 20, Some((30, Ret::CasOk))),
            rec(2, Op::Read, 40, Some((50, Ret::Value(0)))),
        ];
        let v = check(&stale);
        assert!(!v.linearizable(), "a stale read passed: {v:?}");
        assert_eq!(v.violations.len(), 1);
    }

    #[test]
    fn a_read_concurrent_with_a_cas_may_see_either_value() {
        for seen in [0, 1] {
            let h = [
                rec(1, Op::Create, 0, Some((10, Ret::Created))),
                rec(1, Op::Cas { expect: 0 }, 20, Some((40, Ret::CasOk))),
                rec(2, Op::Read, 25, Some((35, Ret::Value(seen)))),
            ];
            assert!(check(&h).linearizable(), "read of {seen}");
        }
    }

    #[test]
    fn two_cas_of_the_same_value_cannot_both_succeed() {
        let lost_update = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(1, Op::Cas { expect: 0 }, 20, Some((40, Ret::CasOk))),
            rec(2, Op::Cas { expect: 0 }, 21, Some((41, Ret::CasOk))),
        ];
        assert!(!check(&lost_update).linearizable());
    }

    #[test]
    fn an_indeterminate_write_may_or_may_not_have_happened() {
        // Its effect seen later, or never: both linearizable.
        for seen in [0, 1] {
            let h = [
                rec(1, Op::Create, 0, Some((10, Ret::Created))),
                rec(1, Op::Cas { expect: 0 }, 20, None),
                rec(2, Op::Read, 100, Some((110, Ret::Value(seen)))),
            ];
            assert!(check(&h).linearizable(), "read of {seen}");
        }
        // But it cannot be seen before it was invoked.
        let h = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(2, Op::Read, 12, Some((15, Ret::Value(1)))),
            rec(1, Op::Cas { expect: 0 }, 20, None),
        ];
        assert!(!check(&h).linearizable());
    }

    #[test]
    fn an_acknowledged_create_is_never_lost() {
        let h = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(2, Op::Read, 20, Some((30, Ret::NotFound))),
        ];
        assert!(!check(&h).linearizable());
    }

    #[test]
    fn a_mismatch_changes_nothing() {
        let h = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(1, Op::Cas { expect: 0 }, 20, Some((30, Ret::CasMismatch))),
            rec(2, Op::Read, 40, Some((50, Ret::Value(0)))),
        ];
        assert!(check(&h).linearizable());
        let h = [
            rec(1, Op::Create, 0, Some((10, Ret::Created))),
            rec(1, Op::Cas { expect: 0 }, 20, Some((30, Ret::CasMismatch))),
            rec(2, Op::Read, 40, Some((50, Ret::Value(1)))),
        ];
        assert!(!check(&h).linearizable());
    }
}
