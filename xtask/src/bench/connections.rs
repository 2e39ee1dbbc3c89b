//! How a connection benchmark (`lb`, `ingress`) measures: a run of the load generator
//! ([`ClientRun`], the process of [`load_generator`]) and the rounds
//! of one scale over the modes ([`run_rounds`]).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::cpu::{pinned, Cpu};
use super::load_generator::{self, ClientResult};
use super::modes::BenchMode;
use super::process::output_in;
use super::report::{self, loadavg, Samples};

/// A run of the load generator of the connection benchmarks (`bench-lb-client`,
/// [`load_generator`]).
pub struct ClientRun<'a> {
    /// Where it runs: a namespace, and a cgroup (none: this process's).
    pub ns: &'a Path,
    pub cgroup: Option<&'a Path>,
    /// `ip:port` lines: each connection goes to one of them, drawn uniformly.
    pub targets: &'a str,
    pub secs: f64,
    pub seed: u64,
    /// Bounds each connect (none: a connect waits for the kernel's SYN retries).
    pub connect_timeout: Option<Duration>,
    /// Request/response exchanges per connection.
    pub requests: u32,
    pub cpu: Cpu,
}

impl ClientRun<'_> {
    /// Runs it to its end (killed a minute after `secs`). `what` names the run in the messages
    /// ("mode vip, 1000 services"): an error when no connection succeeded, a line on stderr
    /// when some failed.
    pub fn run(&self, what: &str) -> anyhow::Result<ClientResult> {
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench-lb-client",
            "--secs",
            &self.secs.to_string(),
            "--seed",
            &self.seed.to_string(),
            "--requests",
            &self.requests.to_string(),
        ]);
        if let Some(t) = self.connect_timeout {
            cmd.args(["--connect-timeout-ms", &t.as_millis().to_string()]);
        }
        let out = output_in(
            pinned(cmd, self.cpu),
            self.ns,
            self.cgroup,
            self.targets.as_bytes(),
            Duration::from_secs_f64(self.secs + 60.0),
        )
        .with_context(|| format!("load generator, {what}"))?;
        let (r, first_error) = load_generator::parse(&out)?;
        if r.conns_per_sec == 0.0 {
            bail!("{what}: no connection succeeded ({first_error})");
        }
        if r.errors > 0 {
            eprintln!(
                "  {what}: {} failed connections, the first: {first_error}",
                r.errors
            );
        }
        Ok(r)
    }
}

/// The rounds of one scale of a connection benchmark: each round runs every mode of `modes`
/// once, in an order that rotates every round, as `measure(mode, seed)` with the next `seed`
/// (a sequence that goes on across scales), which gives the result and what to print after
/// its figures. A line a run on stderr (`scale` names the scale: "1000 services"), and the
/// load average after each round.
pub fn run_rounds<M: BenchMode>(
    rounds: usize,
    modes: &[M],
    seed: &mut u64,
    scale: &str,
    mut measure: impl FnMut(M, u64) -> anyhow::Result<(ClientResult, String)>,
) -> anyhow::Result<Samples<M>> {
    let w = report::name_width::<M>();
    let mut samples = Samples::default();
    for r in 0..rounds {
        for k in 0..modes.len() {
            let mode = modes[(k + r) % modes.len()];
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (res, extra) = measure(mode, *seed)?;
            eprintln!(
                "  {scale}, round {}: {:<w$} {:>8.0} conn/s, mean {:>7.1} µs, p50 {:>7.1}, p90 {:>7.1}, p99 {:>7.1}, p99.9 {:>8.1} µs{extra}",
                r + 1,
                mode.name(),
                res.conns_per_sec,
                res.mean_us,
                res.p50_us,
                res.p90_us,
                res.p99_us,
                res.p999_us
            );
            samples.push(mode, res);
        }
        eprintln!("  load average: {}", loadavg());
    }
    Ok(samples)
}
