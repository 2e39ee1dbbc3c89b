//! The benchmarks: `cargo xtask bench scheduler|dns|failover|create|scale|overlay|lb|ingress`, one
//! file each. This file is where the command line reaches them: each runs here when this
//! build has what it needs (its feature, a release build), or re-runs xtask as that build.
//!
//! - `scheduler` (feature `scheduler`): the scheduler's throughput on an in-memory store;
//! - `dns` (feature `dns-bench`): the embedded DNS server against dnsmasq, with dnsperf;
//! - `failover`, `create` (feature `lab`): leader failover time, and `service create` until
//!   all tasks run in a 3-node lab;
//! - `scale` (feature `lab`): 3 real managers and thousands of simulated agents in one process
//!   (`tests::sim_agents`): join, convergence, the CLI under load, manager CPU and memory,
//!   Raft sizes, network state bytes per node, settling after a leader kill.
//!
//! Data-plane benchmarks (feature `netbench`) on namespace topologies
//! (`swarm_agent::network::testbed`), each measuring ours and a peer in the same run,
//! alternately, on the same kind of topology:
//!
//! - `overlay`: task → task across two nodes (iperf3 throughput, sockperf TCP ping-pong),
//!   ours (the real eBPF programs, metadata-mode VXLAN) against Docker's layout (a Linux
//!   bridge and a static kernel VXLAN device per node);
//! - `lb`: connections to a service at 1, 1 000 and 10 000 services: through our VIP (the
//!   socket load balancer), straight to a task's address, and through a kube-proxy-style
//!   iptables DNAT chain with as many services;
//! - `ingress`: connections through a published port (the routing mesh) from a client
//!   outside the nodes, at 1 and 1 000 ports: the task on the ingress node, the task on
//!   another node, the server on the node itself (the limit), and kube-proxy-style nftables
//!   NodePorts (DNAT + masquerade + conntrack) with as many ports.
//!
//! `lb` and `ingress` share their load generator (`load_generator`, run by
//! `connections::ClientRun`), the rounds of a scale (`connections::run_rounds`, over the
//! modes of a `modes::BenchMode`), their server (`responder`) and the table that opens their
//! report (`report`). All three run their processes through `cpu` (pinning) and `process`
//! (namespaces, cgroups).
//!
//! All need root and a release build (they re-run themselves as one). No timed
//! assertions: the targets are printed next to the figures.

#[cfg(feature = "netbench")]
mod connections;
#[cfg(feature = "netbench")]
mod cpu;
#[cfg(feature = "lab")]
mod create;
#[cfg(feature = "dns-bench")]
mod dns;
#[cfg(feature = "lab")]
mod failover;
#[cfg(feature = "netbench")]
mod ingress;
#[cfg(feature = "netbench")]
mod lb;
#[cfg(feature = "netbench")]
mod load_generator;
#[cfg(feature = "netbench")]
mod modes;
#[cfg(feature = "netbench")]
mod overlay;
#[cfg(feature = "netbench")]
mod process;
#[cfg(feature = "netbench")]
mod report;
#[cfg(feature = "netbench")]
mod responder;
#[cfg(feature = "lab")]
mod scale;
#[cfg(feature = "scheduler")]
mod scheduler;

use crate::workspace::cargo;
#[cfg(not(feature = "lab"))]
use crate::workspace::rerun_with_lab;

/// Which iptables the kube-proxy peer of `bench lb` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IptablesVariant {
    /// iptables-nft (the nf_tables backend; Debian's default `iptables`).
    Nft,
    /// iptables-legacy (x_tables).
    Legacy,
}

impl IptablesVariant {
    #[cfg_attr(not(feature = "netbench"), allow(dead_code))] // read by the `netbench` build only
    pub fn restore(self) -> &'static str {
        match self {
            IptablesVariant::Nft => "iptables-nft-restore",
            IptablesVariant::Legacy => "iptables-legacy-restore",
        }
    }
}

/// The scheduler benchmark, always measured as a release build with only what it needs.
pub fn scheduler_bench(runs: usize, only: Option<String>, allow_debug: bool) -> anyhow::Result<()> {
    #[cfg(feature = "scheduler")]
    if !cfg!(debug_assertions) || allow_debug {
        if cfg!(debug_assertions) {
            eprintln!("WARNING: debug build: these numbers are not representative");
        }
        return scheduler::scheduler(runs, only.as_deref());
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

/// `bench dns`, always measured as a release build with the `dns-bench` feature.
pub fn dns_bench(
    services: usize,
    tasks: usize,
    rounds: usize,
    seconds: u64,
    rate: Option<u64>,
    allow_debug: bool,
) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && !allow_debug {
        // Its release build needs the eBPF toolchain (swarm-agent), dnsmasq, dnsperf.
        crate::setup::ensure_for_bench()?;
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
    run_dns(services, tasks, rounds, seconds.max(1), rate)
}

#[cfg(feature = "dns-bench")]
fn run_dns(
    services: usize,
    tasks: usize,
    rounds: usize,
    seconds: u64,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    dns::run(dns::Options {
        services,
        tasks,
        rounds,
        seconds,
        rate,
    })
}

#[cfg(not(feature = "dns-bench"))]
fn run_dns(
    _services: usize,
    _tasks: usize,
    _rounds: usize,
    _seconds: u64,
    _rate: Option<u64>,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "this xtask was built without the `dns-bench` feature; run `cargo xtask bench dns`"
    )
}

#[cfg(feature = "lab")]
pub fn failover(rounds: usize, port: u16) -> anyhow::Result<()> {
    failover::run(rounds, port)
}

#[cfg(feature = "lab")]
pub fn create_bench(replicas: usize, rounds: usize) -> anyhow::Result<()> {
    create::run(replicas, rounds)
}

#[cfg(feature = "lab")]
pub fn scale_bench(o: ScaleOpts) -> anyhow::Result<()> {
    if o.release && cfg!(debug_assertions) {
        return rerun_scale_release();
    }
    scale::run(o)
}

#[cfg(not(feature = "lab"))]
pub fn scale_bench(o: ScaleOpts) -> anyhow::Result<()> {
    if o.release {
        return rerun_scale_release();
    }
    rerun_with_lab()
}

/// `bench scale --release`: the same command line again as a release build of xtask with
/// the lab, which then starts release managers and agents. xtask, the CLI and the agents
/// are built in one cargo call ([`SCALE_RELEASE_BUILD`]), as the bench itself builds them,
/// so that both see the same features and nothing is built twice.
fn rerun_scale_release() -> anyhow::Result<()> {
    crate::setup::ensure_for_bench()?;
    cargo(SCALE_RELEASE_BUILD)?;
    let xtask = crate::workspace::workspace_root().join("target/release/xtask");
    let rest: Vec<String> = std::env::args().skip(1).collect();
    eprintln!(
        "re-running as a release build: {} {}",
        xtask.display(),
        rest.join(" ")
    );
    let status = std::process::Command::new(&xtask)
        .args(&rest)
        .status()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", xtask.display()))?;
    if !status.success() {
        anyhow::bail!("{} {}: {status}", xtask.display(), rest.join(" "));
    }
    Ok(())
}

/// The one cargo call that builds what `bench scale --release` runs.
pub(crate) const SCALE_RELEASE_BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "xtask",
    "--features",
    "lab",
    "-p",
    "swarm-cli",
    "-p",
    "tests",
    "--bins",
];

#[cfg_attr(not(feature = "lab"), allow(dead_code))] // read by the `lab` build only
/// What `bench scale` builds.
#[derive(clap::Args)]
pub struct ScaleOpts {
    /// Simulated nodes (workers).
    #[arg(long, default_value_t = 5000)]
    pub nodes: usize,
    /// Tasks in all (one global service counts one per node).
    #[arg(long, default_value_t = 150_000)]
    pub tasks: usize,
    #[arg(long, default_value_t = 300)]
    pub services: usize,
    /// Overlay networks (the overlay services are spread over them, round robin). A node
    /// holds the endpoints of every network it has a task on, and this process holds every
    /// simulated node's: at thousands of nodes, more networks (Docker's stacks each have
    /// their own) or fewer overlay services keep that within the machine's memory. The
    /// defaults (30 networks, one service in 10) fit 5 000 × 150 000 in 24 GiB (the
    /// simulated agents peak near 8 GiB, each node's view about 1 400 endpoints); 8 networks
    /// with one service in 4 put about 20 000 endpoints in each node's view, and the
    /// simulated agents then passed 16 GiB at 2 000 nodes.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=150))]
    pub networks: u16,
    /// One replicated service in this many is on an overlay network with a VIP.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub overlay_every: u16,
    /// Manager port of the three local managers.
    #[arg(long, default_value_t = 29301)]
    pub port: u16,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// The cluster's dispatcher heartbeat period (Docker's default: 5s).
    #[arg(long, default_value = "5s")]
    pub heartbeat: String,
    /// Minutes from the first create until every task must run; past them the bench stops
    /// with what it reached.
    #[arg(long, default_value_t = 60)]
    pub converge_minutes: u64,
    /// Release builds of the managers, the simulated agents and the CLI (a deployment's
    /// speed; the first build takes several minutes). Without it, the debug builds `cargo
    /// xtask` makes, as `bench failover` uses.
    #[arg(long)]
    pub release: bool,
}

#[cfg(not(feature = "lab"))]
pub fn create_bench(_replicas: usize, _rounds: usize) -> anyhow::Result<()> {
    rerun_with_lab()
}

#[cfg(not(feature = "lab"))]
pub fn failover(_rounds: usize, _port: u16) -> anyhow::Result<()> {
    rerun_with_lab()
}

/// `--cpu N` / `--no-pin` of the data-plane benchmarks (read by the `netbench` build only).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "netbench"), allow(dead_code))]
pub struct Pin {
    pub cpu: Option<usize>,
    pub no_pin: bool,
}

#[cfg(feature = "netbench")]
impl Pin {
    fn cpu(self) -> cpu::Cpu {
        if self.no_pin {
            None
        } else {
            Some(self.cpu.unwrap_or_else(cpu::default_cpu))
        }
    }
}

/// `bench overlay`, always measured as a release build with the `netbench` feature.
pub fn overlay_bench(rounds: usize, secs: u64, pin: Pin, allow_debug: bool) -> anyhow::Result<()> {
    #[cfg(feature = "netbench")]
    if !cfg!(debug_assertions) || allow_debug {
        warn_if_debug();
        return overlay::run(rounds, secs, pin.cpu());
    }
    let _ = (rounds, secs, pin, allow_debug);
    rerun_netbench_release()
}

/// What `bench lb` measures (its options but the CPU's).
#[cfg_attr(not(feature = "netbench"), allow(dead_code))]
pub struct LbRun<'a> {
    pub rounds: usize,
    pub secs: f64,
    pub services: &'a [usize],
    pub iptables: IptablesVariant,
    pub modes: &'a [String],
    /// Request/response exchanges per connection.
    pub requests: u32,
}

/// `bench lb`, always measured as a release build with the `netbench` feature.
pub fn lb_bench(run: LbRun<'_>, pin: Pin, allow_debug: bool) -> anyhow::Result<()> {
    #[cfg(feature = "netbench")]
    if !cfg!(debug_assertions) || allow_debug {
        warn_if_debug();
        return lb::run(
            run.rounds,
            run.secs,
            run.services,
            run.iptables,
            pin.cpu(),
            run.modes,
            run.requests,
        );
    }
    let _ = (run, pin, allow_debug);
    rerun_netbench_release()
}

/// `bench ingress`, always measured as a release build with the `netbench` feature.
pub fn ingress_bench(
    rounds: usize,
    secs: f64,
    ports: &[usize],
    modes: &[String],
    pin: Pin,
    allow_debug: bool,
) -> anyhow::Result<()> {
    #[cfg(feature = "netbench")]
    if !cfg!(debug_assertions) || allow_debug {
        warn_if_debug();
        return ingress::run(rounds, secs, ports, pin.cpu(), modes);
    }
    let _ = (rounds, secs, ports, modes, pin, allow_debug);
    rerun_netbench_release()
}

#[cfg(feature = "netbench")]
fn warn_if_debug() {
    if cfg!(debug_assertions) {
        eprintln!("WARNING: debug build: these numbers are not representative");
    }
}

/// Numbers from a debug build mean nothing: the same command line again as a release build
/// with the data-plane benchmarks (after installing what they need on a fresh machine).
fn rerun_netbench_release() -> anyhow::Result<()> {
    crate::setup::ensure_for_bench()?;
    let rest: Vec<String> = std::env::args().skip(1).collect();
    let mut args = vec![
        "run",
        "--release",
        "--package",
        "xtask",
        "--features",
        "netbench",
        "--",
    ];
    args.extend(rest.iter().map(String::as_str));
    eprintln!("re-running as a release build: cargo {}", args.join(" "));
    cargo(&args)
}

#[cfg(feature = "netbench")]
pub fn lb_client(
    secs: f64,
    seed: u64,
    connect_timeout_ms: Option<u64>,
    requests: u32,
) -> anyhow::Result<()> {
    load_generator::run(
        secs,
        seed,
        connect_timeout_ms.map(std::time::Duration::from_millis),
        requests,
    )
}

#[cfg(not(feature = "netbench"))]
pub fn lb_client(
    _secs: f64,
    _seed: u64,
    _connect_timeout_ms: Option<u64>,
    _requests: u32,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "bench-lb-client runs inside `cargo xtask bench lb` (built with --features netbench)"
    )
}

#[cfg(feature = "scheduler")]
pub fn bench_child(nodes: usize, tasks: usize) -> anyhow::Result<()> {
    scheduler::child(nodes, tasks)
}

#[cfg(not(feature = "scheduler"))]
pub fn bench_child(_nodes: usize, _tasks: usize) -> anyhow::Result<()> {
    anyhow::bail!(
        "bench-child runs inside `cargo xtask bench scheduler` (built with --features scheduler)"
    )
}
