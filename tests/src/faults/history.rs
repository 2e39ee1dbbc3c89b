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
//!
//! The search is exponential in the operations concurrent on one key (stateright's tester
//! tries their interleavings depth-first, without memoization), so each key gets a budget of
//! [`STEP_BUDGET`] model steps: a key over it is reported as not checked, with its size,
//! instead of keeping the run busy for hours, and a run whose unchecked operations are more
//! than [`MAX_UNCHECKED_PERCENT`] of all fails ([`Verdict::passed`]). The workload keeps keys
//! small and their writers few so that this stays the exception.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Instant;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// Model steps (an operation tried at a point of the order) the search may take for one key.
/// A history of the workload's size (two dozen operations, two or three writers) takes a few
/// hundred; the tester runs about 50 000 a second in the test profile on a loaded two-core
/// machine, so a key over budget costs a few seconds.
pub const STEP_BUDGET: u64 = 300_000;
/// Model steps for all the keys of a run together; the keys left when it is spent are not
/// checked.
pub const TOTAL_STEP_BUDGET: u64 = 20 * STEP_BUDGET;
/// The share of a run's operations (in percent) that may be on keys over the budget.
pub const MAX_UNCHECKED_PERCENT: usize = 5;

thread_local! {
    /// Steps left to the search running on this thread (`u64::MAX` outside [`check`]).
    static STEPS_LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The unwinding payload that ends a search over its budget (not a panic: no hook runs).
struct OverBudget;

/// Counts one step of the search; unwinds out of it with [`OverBudget`] when none is left.
fn step() {
    STEPS_LEFT.with(|left| {
        let n = left.get();
        if n == 0 {
            resume_unwind(Box::new(OverBudget));
        }
        left.set(n - 1);
    });
}

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
        step();
        self.apply(op)
    }

    fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        step();
        match (op, ret, self.0) {
            // Spurious mismatches (the version moved for another reason) change nothing.
            (Op::Cas { .. }, Ret::CasMismatch, Some(_)) => true,
            _ => &self.apply(op) == ret,
        }
    }
}

impl Counter {
    fn apply(&mut self, op: &Op) -> Ret {
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
    /// The keys whose search went over the step budget, with their number of operations:
    /// neither linearizable nor not, as far as this check knows.
    pub unchecked: Vec<(String, usize)>,
    /// The step budget each key had.
    pub budget: u64,
}

impl Verdict {
    /// No key's history without a linearization (of the keys checked).
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty()
    }

    /// Operations on keys over the budget.
    pub fn unchecked_ops(&self) -> usize {
        self.unchecked.iter().map(|(_, n)| n).sum()
    }

    /// Too many operations went unchecked for the run to count as checked.
    pub fn too_much_unchecked(&self) -> bool {
        self.unchecked_ops() * 100 > self.ops * MAX_UNCHECKED_PERCENT
    }

    /// Linearizable, with at most [`MAX_UNCHECKED_PERCENT`] of the operations unchecked.
    pub fn passed(&self) -> bool {
        self.linearizable() && !self.too_much_unchecked()
    }

    /// The unchecked keys for a report: "fk1-3 (40 operations), ...", or "none".
    pub fn unchecked_summary(&self) -> String {
        if self.unchecked.is_empty() {
            return "none".into();
        }
        let keys: Vec<String> = self
            .unchecked
            .iter()
            .map(|(k, n)| format!("{k} ({n} operations)"))
            .collect();
        format!(
            "{} of {} operations, over the budget of {} steps: {}",
            self.unchecked_ops(),
            self.ops,
            self.budget,
            keys.join(", ")
        )
    }
}

/// Checks every key's history for linearizability, each within [`STEP_BUDGET`], all within
/// [`TOTAL_STEP_BUDGET`].
pub fn check(records: &[Record]) -> Verdict {
    check_within(records, STEP_BUDGET, TOTAL_STEP_BUDGET)
}

/// [`check`] with a step budget of `budget` per key and `total` for all.
pub fn check_within(records: &[Record], budget: u64, total: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_key.entry(&r.key).or_default().push(r);
    }
    let mut v = Verdict {
        keys: by_key.len(),
        ops: records.len(),
        budget,
        ..Default::default()
    };
    let mut total_left = total;
    for (key, recs) in by_key {
        v.ok += recs.iter().filter(|r| r.completed.is_some()).count();
        v.indeterminate += recs.iter().filter(|r| r.completed.is_none()).count();
        let (found, used) = linearizable(&recs, budget.min(total_left));
        total_left -= used;
        match found {
            Some(true) => {}
            Some(false) => v
                .violations
                .push((key.to_string(), recs.into_iter().cloned().collect())),
            None => v.unchecked.push((key.to_string(), recs.len())),
        }
    }
    v
}

/// Feeds one key's records to the tester in real-time order: invocations and completions
/// sorted by time, an invocation before a completion at the same instant (so they count as
/// concurrent, the weaker claim). None when the search went over `budget` steps; with the
/// steps it took.
fn linearizable(recs: &[&Record], budget: u64) -> (Option<bool>, u64) {
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
        let fed = match ev {
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
        if fed.is_err() {
            return (Some(false), 0);
        }
    }
    STEPS_LEFT.with(|left| left.set(budget));
    let searched = catch_unwind(AssertUnwindSafe(|| tester.is_consistent()));
    let used = budget - STEPS_LEFT.with(|left| left.replace(u64::MAX));
    match searched {
        Ok(found) => (Some(found), used),
        Err(payload) if payload.is::<OverBudget>() => (None, used),
        Err(payload) => resume_unwind(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(p: u64, op: Op, from: u64, to: Option<(u64, Ret)>) -> Record {
        rec_on("k", p, op, from, to)
    }

    fn rec_on(key: &str, p: u64, op: Op, from: u64, to: Option<(u64, Ret)>) -> Record {
        let t0 = base();
        Record {
            key: key.into(),
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

    /// A history the search cannot settle cheaply: `n` processes whose reads all overlap and
    /// see 0, and one read overlapping them that saw a value never written, so that every
    /// interleaving of the others is tried before the answer (no linearization) is known.
    fn explosive(key: &str, n: u64) -> Vec<Record> {
        let mut h = vec![rec_on(key, 0, Op::Create, 0, Some((10, Ret::Created)))];
        for p in 1..=n {
            h.push(rec_on(
                key,
                p,
                Op::Read,
                20 + p,
                Some((100 + p, Ret::Value(0))),
            ));
        }
        h.push(rec_on(key, n + 1, Op::Read, 20, Some((200, Ret::Value(7)))));
        h
    }

    /// Twelve operations on a key of their own, easily checked.
    fn small(key: &str) -> Vec<Record> {
        let mut h = vec![rec_on(key, 0, Op::Create, 0, Some((10, Ret::Created)))];
        for i in 0..11 {
            let t = 20 + 10 * i;
            h.push(rec_on(key, 0, Op::Read, t, Some((t + 5, Ret::Value(0)))));
        }
        h
    }

    #[test]
    fn a_small_explosive_history_is_checked_and_refused() {
        let v = check_within(&explosive("k", 5), STEP_BUDGET, TOTAL_STEP_BUDGET);
        assert!(v.unchecked.is_empty(), "{v:?}");
        assert!(!v.linearizable());
        assert!(!v.passed());
    }

    #[test]
    fn a_key_over_the_step_budget_is_unchecked_and_fails_the_run() {
        // Tens of millions of steps without a budget: over the real one.
        let start = Instant::now();
        let v = check(&explosive("big", 10));
        eprintln!("{STEP_BUDGET} steps in {:?}", start.elapsed());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the budget did not stop the search: {:?}",
            start.elapsed()
        );
        assert_eq!(v.unchecked, vec![("big".to_string(), 12)]);
        assert!(v.violations.is_empty(), "nothing was found either way");
        assert!(v.too_much_unchecked());
        assert!(!v.passed(), "a run with nothing checked passed");
        assert!(v.unchecked_summary().contains("big (12 operations)"));
    }

    #[test]
    fn a_few_unchecked_operations_among_many_checked_pass() {
        // 11 unchecked of 11 + 20 × 12 = 251 operations (4.4 %): passes; the other keys
        // are checked after the one over budget (the budget is per key).
        let mut h = explosive("big", 9);
        for i in 0..20 {
            h.extend(small(&format!("s{i:02}")));
        }
        let v = check_within(&h, 10_000, TOTAL_STEP_BUDGET);
        assert_eq!(v.unchecked_ops(), 11);
        assert!(v.linearizable());
        assert!(v.passed(), "{}", v.unchecked_summary());
        // With a stale read on a small key, the keys after the unchecked one still fail it.
        h.push(rec_on("s05", 9, Op::Read, 500, Some((510, Ret::NotFound))));
        assert!(!check_within(&h, 10_000, TOTAL_STEP_BUDGET).passed());
        // 11 of 11 + 10 × 12 = 131 (8.4 %): too much unchecked.
        let mut h = explosive("big", 9);
        for i in 0..10 {
            h.extend(small(&format!("s{i:02}")));
        }
        let v = check_within(&h, 10_000, TOTAL_STEP_BUDGET);
        assert!(v.linearizable());
        assert!(!v.passed());
    }

    #[test]
    fn the_keys_after_the_total_budget_is_spent_are_unchecked() {
        let mut h = explosive("a", 9);
        h.extend(small("b"));
        let v = check_within(&h, 10_000, 10_000);
        assert_eq!(
            v.unchecked,
            vec![("a".to_string(), 11), ("b".to_string(), 12)]
        );
        assert!(!v.passed());
        let v = check_within(&h, 10_000, 20_000);
        assert_eq!(v.unchecked, vec![("a".to_string(), 11)]);
    }
}
