//! `cargo xtask fuzz [--target T] [--seconds S]`: the cargo-fuzz targets of `fuzz/` (what
//! reaches swarm from outside: DNS queries, Raft entries and snapshots read from disk, Control
//! API requests, OCI manifests and references, CSRs, resolv.conf), each run for S seconds;
//! `cargo xtask test` runs every target briefly ([`ci`]).
//!
//! The targets are built once with the nightly toolchain (`cargo +nightly fuzz build`,
//! libFuzzer's coverage instrumentation, debug assertions on, no sanitizer: the code is safe
//! Rust and an ASan build runs at half the speed) into `fuzz/target`. Each run starts from
//! the seeds of `fuzz/seeds/T` and keeps what it finds in `fuzz/corpus/T` (not in git); a
//! crash stops the run, is saved under `fuzz/artifacts/T/` and fails the command with the
//! path, which `cargo +nightly fuzz run T PATH` replays.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

/// Every target (`fuzz/fuzz_targets/T.rs`).
pub const TARGETS: &[&str] = &[
    "dns_query",
    "raft_entry",
    "raft_snapshot",
    "control_spec",
    "oci_manifest",
    "oci_reference",
    "ca_csr",
    "resolv_conf",
];

/// What one run did.
struct Run {
    target: &'static str,
    execs: u64,
    seconds: f64,
}

fn fuzz_dir() -> PathBuf {
    crate::workspace::workspace_root().join("fuzz")
}

/// `cargo +nightly fuzz ARGS` in `fuzz/` (the rustup proxy picks the nightly toolchain).
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        // The targets link swarm-agent, whose eBPF object they never load: skip its build.
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn build() -> anyhow::Result<()> {
    let start = Instant::now();
    let status = cargo_fuzz(&["build", "-s", "none"])
        .status()
        .context("starting cargo +nightly fuzz build")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    println!(
        "fuzz targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// libFuzzer's closing line: `Done 1234567 runs in 10 second(s)`.
fn parse_done(stderr: &str) -> Option<u64> {
    stderr.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("Done ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn run_one(target: &'static str, seconds: u64) -> anyhow::Result<Run> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = dir.join("seeds").join(target);
    let mut dirs = vec![corpus.to_string_lossy().into_owned()];
    if seeds.is_dir() {
        dirs.push(seeds.to_string_lossy().into_owned());
    }
    let mut args = vec!["run", "-s", "none", target];
    args.extend(dirs.iter().map(String::as_str));
    let time = format!("-max_total_time={seconds}");
    args.extend([
        "--",
        &time,
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]);
    let start = Instant::now();
    let out = cargo_fuzz(&args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({}):\n{}\nthe input is under {}; replay it with \
             `cd fuzz && cargo +nightly fuzz run -s none {target} <file>`",
            out.status,
            tail.join("\n"),
            artifacts(&dir, target).display()
        );
    }
    let execs = parse_done(&stderr).with_context(|| {
        format!("fuzz target {target} ended without libFuzzer's \"Done N runs\" line")
    })?;
    Ok(Run {
        target,
        execs,
        seconds: elapsed,
    })
}

fn artifacts(dir: &Path, target: &str) -> PathBuf {
    dir.join("artifacts").join(target)
}

/// Builds the targets, runs each (`only`, or all) for `seconds`, prints what each ran.
pub fn run(only: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    let targets: Vec<&'static str> = match only {
        Some(t) => match TARGETS.iter().find(|x| **x == t) {
            Some(x) => vec![*x],
            None => bail!(
                "no fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            ),
        },
        None => TARGETS.to_vec(),
    };
    crate::setup::ensure_cargo_fuzz()?;
    build()?;
    let mut runs = Vec::new();
    for t in targets {
        println!("fuzzing {t} for {seconds} s");
        runs.push(run_one(t, seconds)?);
    }
    println!(
        "{:<15} {:>12} {:>8} {:>10}",
        "target", "executions", "seconds", "exec/s"
    );
    for r in &runs {
        println!(
            "{:<15} {:>12} {:>8.1} {:>10.0}",
            r.target,
            r.execs,
            r.seconds,
            r.execs as f64 / r.seconds.max(0.001)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_closing_line() {
        let stderr = "#1024\tpulse  cov: 10 ft: 11\nDone 1234567 runs in 11 second(s)\nstat::number_of_executed_units: 1234567\n";
        assert_eq!(parse_done(stderr), Some(1_234_567));
        assert_eq!(parse_done("INFO: Seed: 1\n"), None);
    }

    #[test]
    fn every_target_has_its_source() {
        for t in TARGETS {
            let src = fuzz_dir().join("fuzz_targets").join(format!("{t}.rs"));
            assert!(src.is_file(), "{} is missing", src.display());
        }
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("manifest");
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} not in fuzz/Cargo.toml"
            );
        }
    }
}
