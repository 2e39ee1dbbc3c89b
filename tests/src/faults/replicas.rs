//! Task safety as the executors see it: how many copies of a replicated service the
//! simulated executors of the reachable nodes actually run (their running markers), sampled
//! through a fault run, and how long it stayed above or below the replicas asked for.
//!
//! A node cut off from the managers is not counted while cut: its copies are out of the
//! cluster's reach (SwarmKit's semantics: the node becomes DOWN and its tasks are replaced;
//! when it comes back its old tasks are shut down, and from then they count again).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sim_executor::running_tasks;

/// One sample: when, and the copies running on the reachable nodes.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub running: usize,
}

/// Counts the copies of service `service_id` on the nodes whose data roots are `roots`,
/// skipping the nodes `cut` says are cut off.
pub fn count(roots: &[PathBuf], cut: &[bool], service_id: &str) -> usize {
    roots
        .iter()
        .zip(cut)
        .filter(|(_, cut)| !**cut)
        .map(|(root, _)| {
            running_tasks(root)
                .iter()
                .filter(|(_, s)| s == service_id)
                .count()
        })
        .sum()
}

/// The longest stretch of samples with more copies than `replicas`, and with fewer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stretches {
    pub longest_over: Duration,
    pub longest_under: Duration,
}

/// The longest stretches over and under `replicas` in `samples` (in time order): a stretch
/// runs from its first sample off the mark to the first sample back on it (or the last
/// sample).
pub fn stretches(samples: &[Sample], replicas: usize) -> Stretches {
    let mut out = Stretches::default();
    let mut over: Option<Instant> = None;
    let mut under: Option<Instant> = None;
    for s in samples {
        match s.running.cmp(&replicas) {
            std::cmp::Ordering::Greater => {
                over.get_or_insert(s.at);
            }
            std::cmp::Ordering::Less => {
                under.get_or_insert(s.at);
            }
            std::cmp::Ordering::Equal => {}
        }
        if s.running <= replicas {
            if let Some(t) = over.take() {
                out.longest_over = out.longest_over.max(s.at - t);
            }
        }
        if s.running >= replicas {
            if let Some(t) = under.take() {
                out.longest_under = out.longest_under.max(s.at - t);
            }
        }
    }
    if let Some(last) = samples.last() {
        if let Some(t) = over {
            out.longest_over = out.longest_over.max(last.at - t);
        }
        if let Some(t) = under {
            out.longest_under = out.longest_under.max(last.at - t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_measure_from_leaving_the_mark_to_returning() {
        let t0 = Instant::now();
        let s = |ms: u64, running: usize| Sample {
            at: t0 + Duration::from_millis(ms),
            running,
        };
        let samples = [
            s(0, 3),
            s(100, 2),
            s(200, 2),
            s(700, 3),
            s(800, 4),
            s(900, 3),
            s(1000, 5),
            s(1300, 4),
        ];
        assert_eq!(
            stretches(&samples, 3),
            Stretches {
                longest_over: Duration::from_millis(300),
                longest_under: Duration::from_millis(600),
            }
        );
        assert_eq!(stretches(&[s(0, 3), s(10, 3)], 3), Stretches::default());
    }

    #[test]
    fn cut_nodes_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let roots: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("n{i}"))).collect();
        for (i, r) in roots.iter().enumerate() {
            let d = r.join(crate::sim_executor::RUNNING_DIR);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("task{i}")), "svc").unwrap();
            std::fs::write(d.join(format!("other{i}")), "svc2").unwrap();
        }
        assert_eq!(count(&roots, &[false, false], "svc"), 2);
        assert_eq!(count(&roots, &[true, false], "svc"), 1);
    }
}
