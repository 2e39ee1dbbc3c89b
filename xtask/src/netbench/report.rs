//! What the connection benchmarks ([`lb`](super::lb), [`ingress`](super::ingress)) print:
//! the results of a scale's rounds by mode ([`Samples`], filled by
//! [`run_rounds`](super::run_rounds)), the table of every mode at every scale that opens
//! their report ([`modes_table`]), and how counts and ratios read.

use super::client::ClientResult;
use super::{median, spread, BenchMode};

/// The results of one scale's rounds, by mode.
pub struct Samples<M>(Vec<(M, ClientResult)>);

impl<M> Default for Samples<M> {
    fn default() -> Self {
        Samples(Vec::new())
    }
}

impl<M: BenchMode> Samples<M> {
    pub fn push(&mut self, mode: M, r: ClientResult) {
        self.0.push((mode, r));
    }

    /// The rounds of `mode`, in their order.
    fn of(&self, mode: M) -> impl Iterator<Item = &ClientResult> {
        self.0
            .iter()
            .filter(move |(m, _)| *m == mode)
            .map(|(_, r)| r)
    }

    pub fn measured(&self, mode: M) -> bool {
        self.of(mode).next().is_some()
    }

    /// The median of `f` over the rounds of `mode`; NaN for a mode that was not measured: its
    /// ratios show as "-".
    fn median_of(&self, mode: M, f: impl Fn(&ClientResult) -> f64) -> f64 {
        let v: Vec<f64> = self.of(mode).map(f).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            median(&v)
        }
    }

    /// Median connections per second.
    pub fn rate(&self, mode: M) -> f64 {
        self.median_of(mode, |r| r.conns_per_sec)
    }

    /// Median p50 latency, µs.
    pub fn p50(&self, mode: M) -> f64 {
        self.median_of(mode, |r| r.p50_us)
    }

    /// Median p99 latency, µs.
    pub fn p99(&self, mode: M) -> f64 {
        self.median_of(mode, |r| r.p99_us)
    }
}

/// The width of a column of mode names: the longest.
pub fn name_width<M: BenchMode>() -> usize {
    M::ALL.iter().map(|m| m.name().len()).max().unwrap_or(0)
}

/// The table that opens a report, after a blank line: a row for every mode measured at every
/// scale (`label` heads the column of the scales' counts, `width` wide) with the median
/// conn/s, how far the rounds spread, the median p50 and p99, and the failed connections.
pub fn modes_table<'a, M: BenchMode>(
    label: &str,
    width: usize,
    scales: impl IntoIterator<Item = (usize, &'a Samples<M>)>,
) {
    let w = name_width::<M>();
    println!();
    println!(
        "{label:>width$}  {:<w$} {:>9} {:>7} {:>8} {:>8} {:>7}",
        "MODE", "CONN/s", "SPREAD", "p50 µs", "p99 µs", "ERRORS"
    );
    for (n, s) in scales {
        for &m in M::ALL {
            if !s.measured(m) {
                continue;
            }
            let rates: Vec<f64> = s.of(m).map(|r| r.conns_per_sec).collect();
            let errors: u64 = s.of(m).map(|r| r.errors).sum();
            println!(
                "{:>width$}  {:<w$} {:>9.0} {:>6.0}% {:>8.1} {:>8.1} {:>7}",
                human(n),
                m.name(),
                s.rate(m),
                spread(&rates),
                s.p50(m),
                s.p99(m),
                errors
            );
        }
    }
}

/// A count as the tables show it: "10 000".
pub fn human(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{} 000", n / 1000)
    } else {
        n.to_string()
    }
}

/// A ratio for the tables: "-" when a side was not measured.
pub fn show(r: f64, decimals: usize) -> String {
    if r.is_finite() {
        format!("{r:.decimals$}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum M {
        A,
        Longer,
    }

    impl BenchMode for M {
        const ALL: &'static [M] = &[M::A, M::Longer];

        fn name(self) -> &'static str {
            match self {
                M::A => "a",
                M::Longer => "longer",
            }
        }
    }

    fn result(conns_per_sec: f64, p50_us: f64) -> ClientResult {
        ClientResult {
            conns_per_sec,
            p50_us,
            p90_us: 0.0,
            p99_us: 2.0 * p50_us,
            p999_us: 0.0,
            mean_us: 0.0,
            errors: 0,
        }
    }

    #[test]
    fn medians_by_mode() {
        let mut s = Samples::default();
        for (r, p) in [(300.0, 10.0), (100.0, 30.0), (200.0, 20.0)] {
            s.push(M::A, result(r, p));
        }
        assert!(s.measured(M::A));
        assert!(!s.measured(M::Longer));
        assert_eq!(s.rate(M::A), 200.0);
        assert_eq!(s.p50(M::A), 20.0);
        assert_eq!(s.p99(M::A), 40.0);
        assert!(s.rate(M::Longer).is_nan());
        assert_eq!(name_width::<M>(), 6);
    }

    #[test]
    fn counts_and_ratios() {
        assert_eq!(human(1), "1");
        assert_eq!(human(1500), "1500");
        assert_eq!(human(10_000), "10 000");
        assert_eq!(show(1.23456, 3), "1.235");
        assert_eq!(show(f64::NAN, 3), "-");
    }
}
