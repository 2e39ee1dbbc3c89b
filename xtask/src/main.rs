//! Developer tasks. `cargo xtask …` is an alias (in .cargo/config.toml) for
//! `cargo run --package xtask -- …`. That first build is the light xtask (no `lab` feature:
//! stable Rust only), so it works on a fresh machine: it installs what the project needs
//! ([`setup`]) and re-runs the command as the full xtask where one is needed.
//!
//! - `cargo xtask test [-- ARGS]`: what CI runs (every binary built, every test run).
//! - `cargo xtask faults --seeds N --minutes M [--seed S]`: the long fault suite (partitions,
//!   a linearizability-checked history, task safety) for N new seeds or to replay seed S.
//! - `cargo xtask vm-test`: the data-plane tests on Debian 12's 6.1 kernel (no TCX) in a VM
//!   (virtme-ng, QEMU without KVM); part of `test`.
//! - `cargo xtask powerloss [--without-raft-fsync]`: acknowledged writes survive a power cut
//!   (QEMU killed under a manager in a VM, then a reboot over the same disk); part of `test`.
//! - `cargo xtask image agent --registry HOST:PORT [--insecure] [--tag TAG]`: the agent image (static
//!   `swarm-agent` and `swarm`), built and pushed.
//! - `cargo xtask lab [up|exec|registry|status|down]`: the multi-node lab (a network namespace,
//!   containerd and swarm-agent per node; see xtask/src/lab.rs).
//! - `cargo xtask fuzz [--target T] [--seconds 60]`: the libFuzzer targets of `fuzz/`, each
//!   (or T alone) replayed over its committed inputs then run for the given time, with what
//!   each ran (`test` runs every one 20 s).
//! - `cargo xtask bench scheduler [--runs 3] [--only NODESxTASKS]`: the scheduler benchmark
//!   (re-runs itself as a release build).
//! - `cargo xtask bench dns [--services 1000] [--tasks 10] [--rounds 3] [--seconds 5]`: the
//!   embedded DNS server against dnsmasq with dnsperf (root; re-runs itself as a release build).
//! - `cargo xtask bench failover [--rounds 5]`: leader failover time.
//! - `cargo xtask bench create [--replicas 20] [--rounds 3]`: `service create` to all tasks
//!   running in a 3-node lab, and where the time goes.
//! - `cargo xtask bench scale [--nodes 5000] [--tasks 150000] [--services 300] [--release]`: 3 real
//!   managers and N simulated agents (real agent sessions in one process, tasks RUNNING at
//!   once): join and convergence times, `service ls`/`node ls`/`service ps` p50/p99, leader
//!   CPU, managers' peak RSS, Raft sizes, network state bytes per node, settling after a
//!   leader kill.
//! - `cargo xtask bench overlay [--rounds 5] [--secs 5]`: task-to-task across two nodes, ours
//!   against Docker's bridge + kernel VXLAN layout (iperf3, sockperf; release build, root).
//! - `cargo xtask bench lb [--rounds 3] [--secs 3] [--services 1,1000,10000]`: connections to
//!   a service through our VIP, straight to a task, and through kube-proxy-style iptables DNAT
//!   (release build, root).
//! - `cargo xtask bench ingress [--rounds 3] [--secs 3] [--ports 1,1000]`: connections from
//!   outside the nodes through a published port (task on the ingress node, on another node),
//!   straight to a server on the node, and through kube-proxy-style nftables NodePorts
//!   (release build, root).

mod bench;
mod faults;
mod fuzz;
#[cfg(feature = "lab")]
mod lab;
mod powerloss;
mod setup;
mod test;
mod vm;
mod workspace;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use bench::{IptablesVariant, Pin};
#[cfg(not(feature = "lab"))]
use workspace::rerun_with_lab;

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
    /// The long fault suite: partitions, one-way cuts, a flapping link, latency and loss
    /// between the managers and workers while clients write and read; the history checked
    /// for linearizability, the copies of a service checked against their bounds (root).
    Faults {
        /// How many new seeds to run (printed, each replayable with `--seed`).
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Minutes of faults per seed.
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// Replay this seed alone (instead of new seeds).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The data-plane tests on Debian 12's 6.1 kernel (no TCX: legacy tc) booted in a VM
    /// (virtme-ng, QEMU without KVM), with the host-built binaries.
    VmTest,
    /// Acknowledged writes survive a power cut: a manager in a VM (Debian 12's 6.1 kernel,
    /// QEMU without KVM) on a virtual disk of its own takes writes, QEMU is killed, and after
    /// a reboot over the same disk every acknowledged write is there; part of `test`.
    Powerloss {
        /// Run it against a `test-agent` whose Raft log is committed without fsync (the
        /// test-only feature `swarm-manager/test-unsafe-no-raft-fsync`): the test must fail.
        #[arg(long)]
        without_raft_fsync: bool,
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
    /// The fuzz targets of `fuzz/` (libFuzzer, nightly): built, their committed inputs
    /// replayed, then each run for a while.
    Fuzz {
        /// Only this target (dns_query, raft_entry, raft_snapshot, control_spec,
        /// oci_manifest, oci_reference, ca_csr, resolv_conf).
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The images the project ships.
    Image {
        #[command(subcommand)]
        what: ImageCmd,
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
    /// The load generator of `bench lb` and `bench ingress` (targets `ip:port` on stdin, one
    /// per line).
    #[command(hide = true)]
    BenchLbClient {
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give a connection up when its connect takes longer (default: the kernel's SYN
        /// retries, about 2 minutes).
        #[arg(long)]
        connect_timeout_ms: Option<u64>,
        /// Request/response exchanges per connection.
        #[arg(long, default_value_t = 1)]
        requests: u32,
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
        /// Run every node's agent as the agent image's container in the node's containerd
        /// (built from the debug binaries), not as a process.
        #[arg(long)]
        agent_container: bool,
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
enum ImageCmd {
    /// The agent image: `swarm-agent` and `swarm` built static (musl, release, stripped) in
    /// one layer, pushed as REGISTRY/swarm-agent:TAG (README: "The agent as a container").
    Agent {
        /// host:port of the registry (HTTPS).
        #[arg(long)]
        registry: String,
        /// The registry serves plain HTTP (Docker's insecure registry).
        #[arg(long)]
        insecure: bool,
        #[arg(long, default_value = "latest")]
        tag: String,
    },
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
    /// 3 real managers and N simulated agents in one process: join, convergence, the CLI
    /// under load, manager CPU and memory, Raft sizes, network state bytes, leader kill.
    Scale(bench::ScaleOpts),
    /// `service create --replicas N` until all run, in a 3-node lab (needs root).
    Create {
        #[arg(long, default_value_t = 20)]
        replicas: usize,
        /// Rounds (the first is cold: the image is fetched; the others find it present).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Task-to-task across two nodes: our eBPF overlay against Docker's layout (Linux bridge
    /// + kernel VXLAN), iperf3 throughput and sockperf TCP round trips (needs root).
    Overlay {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// The CPU the clients and servers are pinned to (default: the last one).
        #[arg(long, conflicts_with = "no_pin")]
        cpu: Option<usize>,
        /// Leave the placement of clients and servers to the scheduler.
        #[arg(long)]
        no_pin: bool,
        /// Measure this (debug) build instead of re-running as a release build.
        #[arg(long)]
        allow_debug: bool,
    },
    /// Connections to a service at several service counts: our VIP, straight to the task,
    /// kube-proxy-style iptables DNAT (needs root).
    Lb {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Service counts, comma-separated.
        #[arg(long, default_value = "1,1000,10000", value_delimiter = ',')]
        services: Vec<usize>,
        /// The iptables of the kube-proxy peer.
        #[arg(long, value_enum, default_value_t = IptablesVariant::Nft)]
        iptables: IptablesVariant,
        /// Which of vip, direct, iptables to measure, comma-separated.
        #[arg(long, default_value = "vip,direct,iptables", value_delimiter = ',')]
        modes: Vec<String>,
        /// Request/response exchanges per connection (HTTP/1.1 keep-alive before the last):
        /// above 1, the established connection's packets weigh more than its connect.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        requests: u32,
        /// The CPU the load generator and the servers are pinned to (default: the last one).
        #[arg(long, conflicts_with = "no_pin")]
        cpu: Option<usize>,
        /// Leave the placement of the load generator and the servers to the scheduler.
        #[arg(long)]
        no_pin: bool,
        /// Measure this (debug) build instead of re-running as a release build.
        #[arg(long)]
        allow_debug: bool,
    },
    /// Connections from outside the nodes through a published port (the routing mesh): task
    /// on the ingress node, task on another node, straight to a server on the node, and
    /// kube-proxy-style nftables NodePorts (needs root).
    Ingress {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Published port counts, comma-separated.
        #[arg(long, default_value = "1,1000", value_delimiter = ',')]
        ports: Vec<usize>,
        /// Which of local, remote, task, direct, nft to measure, comma-separated.
        #[arg(
            long,
            default_value = "local,remote,task,direct,nft",
            value_delimiter = ','
        )]
        modes: Vec<String>,
        /// The CPU the load generator and the servers are pinned to (default: the last one).
        #[arg(long, conflicts_with = "no_pin")]
        cpu: Option<usize>,
        /// Leave the placement of the load generator and the servers to the scheduler.
        #[arg(long)]
        no_pin: bool,
        /// Measure this (debug) build instead of re-running as a release build.
        #[arg(long)]
        allow_debug: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Test { extra } => test::run(&extra),
        Cmd::Faults {
            seeds,
            minutes,
            seed,
        } => faults::run(seeds, minutes, seed),
        Cmd::VmTest => vm::run(),
        Cmd::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Cmd::Powerloss { without_raft_fsync } => powerloss::run(without_raft_fsync),
        Cmd::Lab { root, verb } => lab(&root, verb),
        Cmd::Bench {
            what:
                BenchCmd::Scheduler {
                    runs,
                    only,
                    allow_debug,
                },
        } => bench::scheduler_bench(runs, only, allow_debug),
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
        } => bench::dns_bench(services, tasks, rounds, seconds, rate, allow_debug),
        Cmd::Bench {
            what: BenchCmd::Failover { rounds, port },
        } => bench::failover(rounds.max(1), port),
        Cmd::Bench {
            what: BenchCmd::Scale(o),
        } => bench::scale_bench(o),
        Cmd::Bench {
            what: BenchCmd::Create { replicas, rounds },
        } => bench::create_bench(replicas, rounds),
        Cmd::Bench {
            what:
                BenchCmd::Overlay {
                    rounds,
                    secs,
                    cpu,
                    no_pin,
                    allow_debug,
                },
        } => bench::overlay_bench(rounds, secs, Pin { cpu, no_pin }, allow_debug),
        Cmd::Bench {
            what:
                BenchCmd::Lb {
                    rounds,
                    secs,
                    services,
                    iptables,
                    modes,
                    requests,
                    cpu,
                    no_pin,
                    allow_debug,
                },
        } => bench::lb_bench(
            bench::LbRun {
                rounds,
                secs,
                services: &services,
                iptables,
                modes: &modes,
                requests,
            },
            Pin { cpu, no_pin },
            allow_debug,
        ),
        Cmd::Bench {
            what:
                BenchCmd::Ingress {
                    rounds,
                    secs,
                    ports,
                    modes,
                    cpu,
                    no_pin,
                    allow_debug,
                },
        } => bench::ingress_bench(
            rounds,
            secs,
            &ports,
            &modes,
            Pin { cpu, no_pin },
            allow_debug,
        ),
        Cmd::BenchChild { nodes, tasks } => bench::bench_child(nodes, tasks),
        Cmd::BenchLbClient {
            secs,
            seed,
            connect_timeout_ms,
            requests,
        } => bench::lb_client(secs, seed, connect_timeout_ms, requests),
        Cmd::Images {
            what: ImagesCmd::Push { registry },
        } => images_push(&registry),
        Cmd::Image {
            what:
                ImageCmd::Agent {
                    registry,
                    insecure,
                    tag,
                },
        } => image_agent(&registry, insecure, &tag),
        Cmd::Images {
            what: ImagesCmd::Build,
        } => images_build(),
    }
}

#[cfg(feature = "lab")]
fn lab(root: &std::path::Path, verb: Option<LabCmd>) -> anyhow::Result<()> {
    match verb {
        None => lab::demo(root),
        Some(LabCmd::Up {
            managers,
            workers,
            port,
            agent_container,
        }) => lab::cmd_up(root, managers, workers, port, agent_container),
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
fn image_agent(registry: &str, insecure: bool, tag: &str) -> anyhow::Result<()> {
    tests::agent_image::build_and_push(registry, insecure, tag)
}

#[cfg(not(feature = "lab"))]
fn image_agent(_registry: &str, _insecure: bool, _tag: &str) -> anyhow::Result<()> {
    rerun_with_lab()
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

#[cfg(not(feature = "lab"))]
fn lab(_root: &std::path::Path, _verb: Option<LabCmd>) -> anyhow::Result<()> {
    rerun_with_lab()
}
