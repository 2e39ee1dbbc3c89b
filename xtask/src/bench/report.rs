//! What the data-plane benchmarks print: medians, spreads, ratios and verdicts over the
//! rounds, the load average ([`overlay`](super::overlay) too); for the connection benchmarks
//! ([`lb`](super::lb), [`ingress`](super::ingress)) the results of a scale's rounds by mode
//! ([`Samples`], filled by [`run_rounds`](super::connections::run_rounds)), the table of
//! every mode at every scale that opens their report ([`modes_table`]), and how counts and
//! ratios read.

use super::load_generator::ClientResult;
use super::modes::BenchMode;

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// How far the rounds spread: (max − min) / median, in percent.
pub fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    if m == 0.0 || v.is_empty() {
        return 0.0;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    (hi - lo) / m * 100.0
}

/// `a / b`, or NaN when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// "met" / "MISSED" for a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// The load average, to show how busy the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

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

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(spread(&[1.0, 2.0, 3.0]), 100.0);
        assert!(ratio(1.0, 0.0).is_nan());
    }

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
