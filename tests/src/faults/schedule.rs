//! The seeded fault schedule: which fault, for how long, and how long the cluster rests
//! after it is healed. The same seed gives the same schedule, so a failing run is replayed
//! with its seed (the leader a fault aims at is found when it starts).

use std::fmt;
use std::time::Duration;

/// SplitMix64: a small generator whose sequence is fixed by its seed, whatever the
/// version of any crate.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// One fault. Managers are nodes `0..managers`, workers the ones after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The current leader cut from every other manager, both ways (a minority leader).
    IsolateLeader,
    /// Manager `lone` cut from the two others both ways: a symmetric 2|1 split.
    Split { lone: usize },
    /// Packets from manager `from` to manager `to` dropped; the other way works.
    OneWay { from: usize, to: usize },
    /// The link between managers `a` and `b` cut and healed every `period`.
    Flap {
        a: usize,
        b: usize,
        period: Duration,
    },
    /// Delay (± jitter) and loss on everything `node` sends.
    Netem {
        node: usize,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: u32,
    },
    /// Worker `worker` cut from every manager, both ways.
    IsolateWorker { worker: usize },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::IsolateLeader => write!(f, "isolate the leader"),
            Fault::Split { lone } => write!(f, "split node{} | the other managers", lone + 1),
            Fault::OneWay { from, to } => {
                write!(f, "one-way cut node{} -> node{}", from + 1, to + 1)
            }
            Fault::Flap { a, b, period } => {
                write!(f, "flap node{} <-> node{} every {period:?}", a + 1, b + 1)
            }
            Fault::Netem {
                node,
                delay_ms,
                jitter_ms,
                loss_pct,
            } => write!(
                f,
                "netem on node{}: {delay_ms}ms ± {jitter_ms}ms, {loss_pct}% loss",
                node + 1
            ),
            Fault::IsolateWorker { worker } => write!(f, "isolate worker node{}", worker + 1),
        }
    }
}

/// One step of a schedule: the fault, held for `hold`, then everything healed for `rest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub hold: Duration,
    pub rest: Duration,
}

/// What the machine can inject besides cuts: latency and loss need tc netem (`sch_netem`) or,
/// without it, the NFQUEUE way ([`super::nfqueue`]); a machine where neither works leaves
/// those faults out of its schedules (and the run says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abilities {
    pub netem: bool,
}

/// The schedule of `seed` for a cluster of `managers` managers and `workers` workers,
/// steps until `budget` is spent. The same seed and abilities give the same schedule.
pub fn schedule(
    seed: u64,
    managers: usize,
    workers: usize,
    budget: Duration,
    can: Abilities,
) -> Vec<Step> {
    assert!(managers >= 3, "partitions need at least three managers");
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    let mut spent = Duration::ZERO;
    while spent < budget {
        let pair = |rng: &mut Rng| {
            let a = rng.pick(managers);
            let b = (a + 1 + rng.pick(managers - 1)) % managers;
            (a, b)
        };
        // Kinds 0–3 are cuts between managers, 4 is netem, 5 isolates a worker. A kind this
        // machine cannot inject is drawn again, so a seed that never draws it has the same
        // schedule everywhere (CI's seed included).
        let kinds = if workers > 0 { 6 } else { 5 };
        let kind = loop {
            let k = rng.pick(kinds);
            if k != 4 || can.netem {
                break k;
            }
        };
        let fault = match kind {
            0 => Fault::IsolateLeader,
            1 => Fault::Split {
                lone: rng.pick(managers),
            },
            2 => {
                let (from, to) = pair(&mut rng);
                Fault::OneWay { from, to }
            }
            3 => {
                let (a, b) = pair(&mut rng);
                Fault::Flap {
                    a,
                    b,
                    period: Duration::from_millis(rng.range(300, 1500)),
                }
            }
            4 => Fault::Netem {
                node: rng.pick(managers + workers),
                delay_ms: rng.range(20, 200) as u32,
                jitter_ms: rng.range(0, 50) as u32,
                loss_pct: rng.range(0, 20) as u32,
            },
            _ => Fault::IsolateWorker {
                worker: managers + rng.pick(workers),
            },
        };
        let hold = Duration::from_millis(rng.range(3_000, 10_000));
        let rest = Duration::from_millis(rng.range(3_000, 6_000));
        spent += hold + rest;
        steps.push(Step { fault, hold, rest });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Abilities = Abilities { netem: true };

    #[test]
    fn a_seed_gives_one_schedule_and_another_seed_another() {
        let a = schedule(7, 3, 2, Duration::from_secs(120), ALL);
        assert_eq!(a, schedule(7, 3, 2, Duration::from_secs(120), ALL));
        assert_ne!(a, schedule(8, 3, 2, Duration::from_secs(120), ALL));
        let total: Duration = a.iter().map(|s| s.hold + s.rest).sum();
        assert!(total >= Duration::from_secs(120));
    }

    #[test]
    fn faults_name_real_nodes_and_pairs_of_two_managers() {
        for seed in 0..200 {
            for s in schedule(seed, 3, 2, Duration::from_secs(60), ALL) {
                match s.fault {
                    Fault::Split { lone } => assert!(lone < 3),
                    Fault::OneWay { from: a, to: b } | Fault::Flap { a, b, .. } => {
                        assert!(a < 3 && b < 3 && a != b, "{:?}", s.fault)
                    }
                    Fault::Netem { node, .. } => assert!(node < 5),
                    Fault::IsolateWorker { worker } => assert!((3..5).contains(&worker)),
                    Fault::IsolateLeader => {}
                }
            }
        }
    }

    #[test]
    fn every_kind_of_fault_comes_up() {
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..50 {
            for s in schedule(seed, 3, 2, Duration::from_secs(60), ALL) {
                kinds.insert(std::mem::discriminant(&s.fault));
            }
        }
        assert_eq!(kinds.len(), 6);
    }

    #[test]
    fn without_netem_no_step_adds_latency_or_loss_and_the_other_kinds_still_come_up() {
        let no_netem = Abilities { netem: false };
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..50 {
            for s in schedule(seed, 3, 2, Duration::from_secs(60), no_netem) {
                assert!(
                    !matches!(s.fault, Fault::Netem { .. }),
                    "seed {seed}: {}",
                    s.fault
                );
                kinds.insert(std::mem::discriminant(&s.fault));
            }
        }
        assert_eq!(kinds.len(), 5);
    }

    #[test]
    fn a_seed_that_draws_no_netem_has_the_same_schedule_without_it() {
        let no_netem = Abilities { netem: false };
        let budget = Duration::from_secs(20);
        // CI's seed draws no netem: its schedule must not depend on the machine.
        let ci = schedule(1, 3, 2, budget, ALL);
        assert!(!ci.iter().any(|s| matches!(s.fault, Fault::Netem { .. })));
        assert_eq!(ci, schedule(1, 3, 2, budget, no_netem));
    }
}
