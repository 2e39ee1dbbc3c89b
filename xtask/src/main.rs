//! Developer tasks. `cargo xtask …` is an alias (in .cargo/config.toml) for
//! `cargo run --package xtask -- …`. That first build is the light xtask (no `lab` feature:
//! stable Rust only), so it works on a fresh machine: it installs what the project needs
//! ([`setup`]) and re-runs the command as the full xtask where one is needed.
//!
//! - `cargo xtask test [-- ARGS]`: what CI runs (every binary built, every test run).
//! - `cargo xtask lab [up|exec|registry|status|down]`: the multi-node lab (a network namespace,
//!   containerd and swarm-agent per node; see xtask/src/lab.rs).
//! - `cargo xtask bench scheduler [--runs 3] [--only NODESxTASKS]`: the scheduler benchmark
//!   (re-runs itself as a release build).
//! - `cargo xtask bench dns [--services 1000] [--tasks 10] [--rounds 3] [--seconds 5]`: the
//!   embedded DNS server against dnsmasq with dnsperf (root; re-runs itself as a release build).
//! - `cargo xtask bench failover [--rounds 5]`: leader failover time.
//! - `cargo xtask bench create [--replicas 20] [--rounds 3]`: `service create` to all tasks
//!   running in a 3-node lab, and where the time goes.

#[cfg(feature = "scheduler")]
mod bench;
#[cfg(feature = "lab")]
mod create_bench;
#[cfg(feature = "dns-bench")]
mod dns_bench;
#[cfg(feature = "lab")]
mod failover;
#[cfg(feature = "lab")]
mod lab;
mod setup;
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
    /// The multi-node lab: one network namespace, containerd and swarm-agent per node, and a
    /// registry with the test images. Without a verb: `up --managers 3 --workers 2`, a demo
    /// service, then exit leaving the lab running.
    Lab {
        /// Where the lab keeps its files, sockets and logs.
        #[arg(long, global = true, default_value = "/run/swarm-lab")]
        root: PathBuf,
        #[command(subcommand)]
        verb: Option<LabCmd>,
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
enum LabCmd {
    /// Create the namespaces, registry, containerds and agents; init node1, join the rest.
    Up {
        #[arg(long, default_value_t = 3)]
        managers: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Manager port on every node.
        #[arg(long, default_value_t = 2377)]
        port: u16,
    },
    /// Run a command in a node's network namespace (`swarm` talks to that node's daemon).
    Exec {
        /// node1, node2 … (or `underlay`: the bridge and registry namespace).
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print the registry's host:port.
    Registry,
    /// Nodes, their processes, and `swarm node ls` from node1.
    Status,
    /// Remove every namespace, mount, process, cgroup and file of the lab (also after a crash).
    Down,
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Build the static (musl) whoami binary the whoami image is made of.
    Build,
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
    /// The embedded DNS server against dnsmasq serving the same names, with dnsperf (needs
    /// root, dnsmasq, dnsperf).
    Dns {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Serving tasks per service.
        #[arg(long, default_value_t = 10)]
        tasks: usize,
        /// Rounds (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Length of each dnsperf run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Query rate of the latency runs (default: half the lower throughput of round 1).
        #[arg(long)]
        rate: Option<u64>,
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
    /// `service create --replicas N` until all run, in a 3-node lab (needs root).
    Create {
        #[arg(long, default_value_t = 20)]
        replicas: usize,
        /// Rounds (the first is cold: the image is fetched; the others find it present).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Test { extra } => test::run(&extra),
        Cmd::Lab { root, verb } => lab(&root, verb),
        Cmd::Bench {
            what:
                BenchCmd::Scheduler {
                    runs,
                    only,
                    allow_debug,
                },
        } => scheduler_bench(runs, only, allow_debug),
        Cmd::Bench {
            what:
                BenchCmd::Dns {
                    services,
                    tasks,
                    rounds,
                    seconds,
                    rate,
                    allow_debug,
                },
        } => {
            if cfg!(debug_assertions) && !allow_debug {
                // Its release build needs the eBPF toolchain (swarm-agent), dnsmasq, dnsperf.
                setup::ensure_for_bench()?;
                let (s, t, r, secs) = (
                    services.to_string(),
                    tasks.to_string(),
                    rounds.to_string(),
                    seconds.to_string(),
                );
                let rate = rate.map(|r| r.to_string());
                let mut args = vec![
                    "run",
                    "--release",
                    "--package",
                    "xtask",
                    "--features",
                    "dns-bench",
                    "--",
                    "bench",
                    "dns",
                    "--services",
                    s.as_str(),
                    "--tasks",
                    t.as_str(),
                    "--rounds",
                    r.as_str(),
                    "--seconds",
                    secs.as_str(),
                ];
                if let Some(rate) = &rate {
                    args.extend(["--rate", rate.as_str()]);
                }
                eprintln!("re-running as a release build: cargo {}", args.join(" "));
                return cargo(&args);
            }
            if cfg!(debug_assertions) {
                eprintln!("WARNING: debug build: these numbers are not representative");
            }
            dns_bench(services, tasks, rounds, seconds.max(1), rate)
        }
        Cmd::Bench {
            what: BenchCmd::Failover { rounds, port },
        } => failover(rounds.max(1), port),
        Cmd::Bench {
            what: BenchCmd::Create { replicas, rounds },
        } => create_bench(replicas, rounds),
        Cmd::BenchChild { nodes, tasks } => bench_child(nodes, tasks),
        Cmd::Images {
            what: ImagesCmd::Push { registry },
        } => images_push(&registry),
        Cmd::Images {
            what: ImagesCmd::Build,
        } => images_build(),
    }
}

/// The scheduler benchmark, always measured as a release build with only what it needs.
fn scheduler_bench(runs: usize, only: Option<String>, allow_debug: bool) -> anyhow::Result<()> {
    #[cfg(feature = "scheduler")]
    if !cfg!(debug_assertions) || allow_debug {
        if cfg!(debug_assertions) {
            eprintln!("WARNING: debug build: these numbers are not representative");
        }
        return bench::scheduler(runs, only.as_deref());
    }
    // Numbers from a debug build mean nothing: run the release build instead.
    let mut args = vec![
        "run",
        "--release",
        "--package",
        "xtask",
        "--features",
        "scheduler",
        "--",
        "bench",
        "scheduler",
    ];
    let runs = runs.to_string();
    args.extend(["--runs", runs.as_str()]);
    if let Some(o) = &only {
        args.extend(["--only", o.as_str()]);
    }
    if allow_debug {
        args.push("--allow-debug");
    }
    eprintln!("re-running as a release build: cargo {}", args.join(" "));
    cargo(&args)
}

#[cfg(feature = "scheduler")]
fn bench_child(nodes: usize, tasks: usize) -> anyhow::Result<()> {
    bench::child(nodes, tasks)
}

#[cfg(not(feature = "scheduler"))]
fn bench_child(_nodes: usize, _tasks: usize) -> anyhow::Result<()> {
    bail!("bench-child runs inside `cargo xtask bench scheduler` (built with --features scheduler)")
}

#[cfg(feature = "lab")]
fn lab(root: &std::path::Path, verb: Option<LabCmd>) -> anyhow::Result<()> {
    match verb {
        None => lab::demo(root),
        Some(LabCmd::Up {
            managers,
            workers,
            port,
        }) => lab::cmd_up(root, managers, workers, port),
        Some(LabCmd::Exec { node, cmd }) => lab::exec(root, &node, &cmd),
        Some(LabCmd::Registry) => lab::registry(root),
        Some(LabCmd::Status) => lab::status(root),
        Some(LabCmd::Down) => lab::down(root),
    }
}

#[cfg(feature = "lab")]
fn images_push(registry: &str) -> anyhow::Result<()> {
    tests::images::push(registry)
}

#[cfg(feature = "lab")]
fn images_build() -> anyhow::Result<()> {
    let path = tests::images::build_whoami()?;
    println!("{}", path.display());
    Ok(())
}

#[cfg(not(feature = "lab"))]
fn images_build() -> anyhow::Result<()> {
    rerun_with_lab()
}

#[cfg(not(feature = "lab"))]
fn images_push(_registry: &str) -> anyhow::Result<()> {
    rerun_with_lab()
}

#[cfg(feature = "dns-bench")]
fn dns_bench(
    services: usize,
    tasks: usize,
    rounds: usize,
    seconds: u64,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    dns_bench::run(dns_bench::Options {
        services,
        tasks,
        rounds,
        seconds,
        rate,
    })
}

#[cfg(not(feature = "dns-bench"))]
fn dns_bench(
    _services: usize,
    _tasks: usize,
    _rounds: usize,
    _seconds: u64,
    _rate: Option<u64>,
) -> anyhow::Result<()> {
    bail!("this xtask was built without the `dns-bench` feature; run `cargo xtask bench dns`")
}

#[cfg(feature = "lab")]
fn failover(rounds: usize, port: u16) -> anyhow::Result<()> {
    failover::run(rounds, port)
}

#[cfg(feature = "lab")]
fn create_bench(replicas: usize, rounds: usize) -> anyhow::Result<()> {
    create_bench::run(replicas, rounds)
}

#[cfg(not(feature = "lab"))]
fn create_bench(_replicas: usize, _rounds: usize) -> anyhow::Result<()> {
    rerun_with_lab()
}

#[cfg(not(feature = "lab"))]
fn failover(_rounds: usize, _port: u16) -> anyhow::Result<()> {
    rerun_with_lab()
}

#[cfg(not(feature = "lab"))]
fn lab(_root: &std::path::Path, _verb: Option<LabCmd>) -> anyhow::Result<()> {
    rerun_with_lab()
}

/// Runs this same command again as the full xtask (`--features lab`: the lab, the images and
/// the benchmarks that need the daemon), after making sure everything that build needs is on
/// the machine. The light xtask that gets here compiles with stable Rust alone.
#[cfg(not(feature = "lab"))]
fn rerun_with_lab() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "bench") {
        setup::ensure_for_bench()?;
    } else {
        setup::ensure()?;
    }
    let mut cmd = vec![
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--features",
        "lab",
        "--",
    ];
    cmd.extend(args.iter().map(String::as_str));
    cargo(&cmd)
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
