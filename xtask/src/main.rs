//! Developer tasks. `cargo xtask …` is an alias (in .cargo/config.toml) for
//! `cargo run --package xtask -- …`.
//!
//! - `cargo xtask test [-- ARGS]`: what CI runs (every binary built, every test run).
//! - `cargo xtask lab [--exit] [--port 2377]`: a local five-node cluster.
//! - `cargo xtask bench scheduler [--runs 3] [--only NODESxTASKS]`: the scheduler benchmark
//!   (re-runs itself as a release build).

mod bench;
#[cfg(feature = "lab")]
mod failover;
#[cfg(feature = "lab")]
mod images;
#[cfg(feature = "lab")]
mod lab;
mod test;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Developer tasks of the swarm workspace")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build every binary the end-to-end tests start, then run the whole test suite.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Start a local five-node swarm (3 managers, 2 workers) on 127.0.0.1-5 with a demo service.
    Lab {
        /// Stop once the cluster is up and the demo service runs.
        #[arg(long)]
        exit: bool,
        /// Manager port every node listens on (each node has its own loopback address).
        #[arg(long, default_value_t = 2377)]
        port: u16,
    },
    /// Test images built from source (whoami for musl, Debian's busybox-static).
    Images {
        #[command(subcommand)]
        what: ImagesCmd,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// One benchmark configuration in a fresh process (used by `bench`).
    #[command(hide = true)]
    BenchChild {
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        tasks: usize,
    },
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Build the test images and push them as REGISTRY/whoami:latest and REGISTRY/busybox:latest.
    Push {
        /// host:port of the registry (plain HTTP).
        #[arg(long)]
        registry: String,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Scheduler throughput: store insert of PENDING tasks until all are ASSIGNED.
    Scheduler {
        /// Runs per configuration (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only this configuration, e.g. `1000x100000` or `1kx100k`.
        #[arg(long)]
        only: Option<String>,
        /// Measure this (debug) build instead of re-running as a release build.
        #[arg(long)]
        allow_debug: bool,
    },
    /// Leader failover: time from killing the leader process until a write is accepted.
    Failover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Manager port of the three local managers.
        #[arg(long, default_value_t = 24990)]
        port: u16,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Test { extra } => test::run(&extra),
        Cmd::Lab { exit, port } => lab(exit, port),
        Cmd::Bench {
            what:
                BenchCmd::Scheduler {
                    runs,
                    only,
                    allow_debug,
                },
        } => {
            if cfg!(debug_assertions) && !allow_debug {
                // Numbers from a debug build mean nothing: run the release build instead.
                let mut args = vec![
                    "run",
                    "--release",
                    "--package",
                    "xtask",
                    "--no-default-features",
                    "--",
                    "bench",
                    "scheduler",
                ];
                let runs = runs.to_string();
                args.extend(["--runs", runs.as_str()]);
                if let Some(o) = &only {
                    args.extend(["--only", o.as_str()]);
                }
                eprintln!("re-running as a release build: cargo {}", args.join(" "));
                return cargo(&args);
            }
            if cfg!(debug_assertions) {
                eprintln!("WARNING: debug build: these numbers are not representative");
            }
            bench::scheduler(runs, only.as_deref())
        }
        Cmd::Bench {
            what: BenchCmd::Failover { rounds, port },
        } => failover(rounds.max(1), port),
        Cmd::BenchChild { nodes, tasks } => bench::child(nodes, tasks),
        Cmd::Images {
            what: ImagesCmd::Push { registry },
        } => images_push(&registry),
    }
}

#[cfg(feature = "lab")]
fn lab(exit: bool, port: u16) -> anyhow::Result<()> {
    lab::run(exit, port)
}

#[cfg(feature = "lab")]
fn images_push(registry: &str) -> anyhow::Result<()> {
    images::push(registry)
}

#[cfg(not(feature = "lab"))]
fn images_push(_registry: &str) -> anyhow::Result<()> {
    bail!("this xtask was built without the `lab` feature; run `cargo xtask images push`")
}

#[cfg(feature = "lab")]
fn failover(rounds: usize, port: u16) -> anyhow::Result<()> {
    failover::run(rounds, port)
}

#[cfg(not(feature = "lab"))]
fn failover(_rounds: usize, _port: u16) -> anyhow::Result<()> {
    bail!("this xtask was built without the `lab` feature; run `cargo xtask bench failover`")
}

#[cfg(not(feature = "lab"))]
fn lab(_exit: bool, _port: u16) -> anyhow::Result<()> {
    bail!("this xtask was built without the `lab` feature; run `cargo xtask lab`")
}

/// The workspace root (xtask's parent directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs cargo (the one that started us, if any) in the workspace root.
pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&bin)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {bin}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
