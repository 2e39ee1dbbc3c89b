//! `cargo xtask fuzz [--target T] [--seconds S]`: the libFuzzer targets of `fuzz/` (what
//! reaches swarm from outside: DNS queries, Raft entries and snapshots read from disk, Control
//! API requests, OCI manifests and references, CSRs, resolv.conf), each run for S seconds;
//! `cargo xtask test` runs every target for [`CI_SECONDS`] ([`ci`]).
//!
//! The targets are built in one `cargo +nightly build --profile fuzz` (fuzz/Cargo.toml's
//! profile: opt-level 1, debug assertions and overflow checks on; libFuzzer's coverage
//! instrumentation only on our crates and the parsers the inputs reach first, added by
//! `fuzz/rustc-wrapper.sh`; no sanitizer: the code is safe Rust) into `fuzz/target`, not with `cargo fuzz build`, whose release
//! build instruments every crate at opt-level 3 in one codegen unit (13 to 20 minutes here).
//! Each target's binary is libFuzzer itself: first every file of `fuzz/seeds/T` (seeds and the
//! inputs of crashes found and fixed) is replayed once, then the target runs from those seeds
//! and `fuzz/corpus/T` (what earlier runs found, not in git). A crash stops the command
//! with the input saved under `fuzz/artifacts/T/`, named in the error with the command that
//! replays it.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
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

/// Seconds per target in `cargo xtask test`.
pub const CI_SECONDS: u64 = 20;

/// The target triple and profile of the build (the binaries' directory under `fuzz/target`).
const TRIPLE: &str = "x86_64-unknown-linux-gnu";
const PROFILE: &str = "fuzz";

/// What one run did.
struct Run {
    target: &'static str,
    replayed: usize,
    execs: u64,
    seconds: f64,
}

fn fuzz_dir() -> PathBuf {
    crate::workspace::workspace_root().join("fuzz")
}

/// A target's libFuzzer binary.
fn binary(target: &str) -> PathBuf {
    fuzz_dir()
        .join("target")
        .join(TRIPLE)
        .join(PROFILE)
        .join(target)
}

/// Builds `targets` in one cargo invocation.
fn build(targets: &[&str]) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "build",
        "--profile",
        PROFILE,
        "--target",
        TRIPLE,
    ])
    .current_dir(fuzz_dir())
    // The targets link swarm-agent, whose eBPF object they never load: skip its build.
    .env("AYA_BUILD_SKIP", "1")
    // The instrumentation, on the crates it is for.
    .env("RUSTC_WRAPPER", fuzz_dir().join("rustc-wrapper.sh"))
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    // The flags are the profile's and the wrapper's: none from the calling environment.
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO")
    .env_remove("RUSTUP_TOOLCHAIN");
    for t in targets {
        cmd.args(["--bin", t]);
    }
    let status = cmd
        .status()
        .context("starting cargo +nightly build in fuzz/")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    println!(
        "{} fuzz target(s) built in {:.0} s",
        targets.len(),
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

/// Where libFuzzer saved the input of a crash: `Test unit written to PATH`.
fn parse_artifact(stderr: &str) -> Option<&str> {
    stderr.lines().rev().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, path)| path.trim())
    })
}

/// The input a replay was running when it failed: its last `Running: PATH`.
fn parse_running(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Running: ").map(str::trim))
}

/// The last lines of a failed run's output, for the error.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn run_binary(target: &str, args: &[String]) -> anyhow::Result<Output> {
    let bin = binary(target);
    Command::new(&bin)
        .args(args)
        .current_dir(fuzz_dir())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Runs every file of `fuzz/seeds/T` through the target once; how many there were.
fn replay(target: &'static str) -> anyhow::Result<usize> {
    let seeds = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<String> = std::fs::read_dir(&seeds)
        .with_context(|| format!("reading {}", seeds.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if files.is_empty() {
        bail!("{} holds no input to replay", seeds.display());
    }
    files.sort();
    let count = files.len();
    let out = run_binary(target, &files)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let input = parse_running(&stderr).unwrap_or("(not named in the output)");
        bail!(
            "fuzz target {target} fails on the committed input {input} ({}):\n{}\nreplay it with \
             `{} {input}`",
            out.status,
            tail(&stderr),
            binary(target).display()
        );
    }
    let executed = stderr
        .lines()
        .filter(|l| l.starts_with("Executed "))
        .count();
    if executed != count {
        bail!(
            "fuzz target {target} ran {executed} of the {count} inputs of {}:\n{}",
            seeds.display(),
            tail(&stderr)
        );
    }
    Ok(count)
}

fn run_one(target: &'static str, seconds: u64) -> anyhow::Result<Run> {
    let replayed = replay(target)?;
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let args = vec![
        format!("-max_total_time={seconds}"),
        "-timeout=10".into(),
        "-rss_limit_mb=2048".into(),
        "-print_final_stats=1".into(),
        format!("-artifact_prefix={}/", artifacts.display()),
        corpus.to_string_lossy().into_owned(),
        dir.join("seeds")
            .join(target)
            .to_string_lossy()
            .into_owned(),
    ];
    let start = Instant::now();
    let out = run_binary(target, &args)?;
    let elapsed = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let input = parse_artifact(&stderr)
            .map(str::to_string)
            .unwrap_or_else(|| format!("under {}", artifacts.display()));
        bail!(
            "fuzz target {target} crashed ({}):\n{}\nthe input is {input}; replay it with \
             `{} <file>`, and once fixed keep it in fuzz/seeds/{target}",
            out.status,
            tail(&stderr),
            binary(target).display()
        );
    }
    let execs = parse_done(&stderr).with_context(|| {
        format!("fuzz target {target} ended without libFuzzer's \"Done N runs\" line")
    })?;
    Ok(Run {
        target,
        replayed,
        execs,
        seconds: elapsed,
    })
}

/// Builds the targets, runs each (`only`, or all) for `seconds`, prints what each ran.
pub fn run(only: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    anyhow::ensure!(seconds > 0, "--seconds must be at least 1");
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
    build(&targets)?;
    let mut runs = Vec::new();
    for t in targets {
        println!("fuzzing {t} for {seconds} s (after replaying fuzz/seeds/{t})");
        runs.push(run_one(t, seconds)?);
    }
    println!(
        "{:<15} {:>9} {:>12} {:>8} {:>10}",
        "target", "replayed", "executions", "seconds", "exec/s"
    );
    for r in &runs {
        println!(
            "{:<15} {:>9} {:>12} {:>8.1} {:>10.0}",
            r.target,
            r.replayed,
            r.execs,
            r.seconds,
            r.execs as f64 / r.seconds.max(0.001)
        );
    }
    Ok(())
}

/// What `cargo xtask test` runs: every target, [`CI_SECONDS`] each.
pub fn ci() -> anyhow::Result<()> {
    let start = Instant::now();
    run(None, CI_SECONDS)?;
    println!(
        "fuzzing (build, replay, {CI_SECONDS} s per target) took {:.0} s",
        start.elapsed().as_secs_f64()
    );
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
    fn names_the_input_of_a_crash_and_of_a_failed_replay() {
        let crash = "==1== ERROR: libFuzzer: deadly signal\nMS: 1 ChangeByte-; base unit: 00\n\
                     artifact_prefix='/w/fuzz/artifacts/dns_query/'; Test unit written to /w/fuzz/artifacts/dns_query/crash-ab12\nBase64: AAE=\n";
        assert_eq!(
            parse_artifact(crash),
            Some("/w/fuzz/artifacts/dns_query/crash-ab12")
        );
        assert_eq!(parse_artifact("Done 3 runs in 1 second(s)\n"), None);
        let replay = "Running: seeds/t/a\nExecuted seeds/t/a in 0 ms\nRunning: seeds/t/b\n\
                      thread '<unnamed>' panicked at src/x.rs:1:1\n==1== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(parse_running(replay), Some("seeds/t/b"));
    }

    #[test]
    fn every_target_has_its_source_and_seeds() {
        for t in TARGETS {
            let src = fuzz_dir().join("fuzz_targets").join(format!("{t}.rs"));
            assert!(src.is_file(), "{} is missing", src.display());
            let seeds = fuzz_dir().join("seeds").join(t);
            let n = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
            assert!(n > 0, "{} has no seed to replay", seeds.display());
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
