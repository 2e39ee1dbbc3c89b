//! `swarm-agent [--data-root DIR] [--socket PATH] [--hostname NAME] [--metrics-addr ADDR]
//! [--executor containerd|none] [--containerd-socket PATH] [--containerd-namespace NS]
//! [--cgroup-parent NAME] [--exec-root DIR] [--bpf-root DIR] [--data-plane auto|ebpf|ipvs|none]
//! [--tc-attach auto|tcx|legacy] [--resolv-conf PATH]`; `swarm-agent probe` prints what the
//! kernel offers the data plane and what the agent would choose.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use swarm_agent::containerd::{ContainerdExecutor, RegistryAccess};
use swarm_agent::network::probe::{
    self, Choice, DataPlaneRequest, KernelProbe, Mode, TcAttachRequest,
};
use swarm_agent::network::view::ViewHandle;
use swarm_agent::network::{Networking, NetworkingConfig, ServiceLb};
use swarm_agent::{AgentConfig, Executor, UnsupportedExecutor};

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExecutorKind {
    /// Tasks are containerd containers.
    Containerd,
    /// No executor: every task is rejected (a node that only manages).
    None,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DataPlaneKind {
    /// The best the kernel runs (probed at start): the eBPF data plane; the agent refuses to
    /// start, naming what is missing, on a kernel without what it needs.
    Auto,
    /// The eBPF data plane: overlay networks, service VIPs, DNS at 127.0.0.11.
    Ebpf,
    /// The IPVS data plane for older kernels: refused for now, naming the missing `ip_vs`
    /// module on a kernel without IPVS, and as not built yet on one with it.
    Ipvs,
    /// None: tasks attached to networks are rejected (for hosts that must not be touched).
    None,
}

impl From<DataPlaneKind> for DataPlaneRequest {
    fn from(k: DataPlaneKind) -> Self {
        match k {
            DataPlaneKind::Auto => DataPlaneRequest::Auto,
            DataPlaneKind::Ebpf => DataPlaneRequest::Ebpf,
            DataPlaneKind::Ipvs => DataPlaneRequest::Ipvs,
            DataPlaneKind::None => DataPlaneRequest::None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TcAttachKind {
    /// TCX links where the kernel has them (6.6+), clsact qdisc filters elsewhere.
    Auto,
    /// TCX links (refused on a kernel without them).
    Tcx,
    /// clsact qdisc filters, even where TCX exists.
    Legacy,
}

impl From<TcAttachKind> for TcAttachRequest {
    fn from(k: TcAttachKind) -> Self {
        match k {
            TcAttachKind::Auto => TcAttachRequest::Auto,
            TcAttachKind::Tcx => TcAttachRequest::Tcx,
            TcAttachKind::Legacy => TcAttachRequest::Legacy,
        }
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// Probe what the kernel offers the data plane, print it and the mode `--data-plane` and
    /// `--tc-attach` would give, and exit (status 1 when no mode fits).
    Probe,
}

#[derive(Parser)]
#[command(name = "swarm-agent", version, about = "The swarm node daemon")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the node keeps its membership, certificates and Raft data.
    #[arg(long, default_value = "/var/lib/swarm")]
    data_root: PathBuf,
    /// Unix socket the `swarm` CLI talks to.
    #[arg(long, default_value = "/run/swarm/swarm.sock")]
    socket: PathBuf,
    /// Node hostname shown in `swarm node ls` (default: the host's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Address of the Prometheus /metrics endpoint ("" to disable).
    #[arg(long, default_value = "127.0.0.1:9323")]
    metrics_addr: String,
    /// What runs the tasks.
    #[arg(long, value_enum, default_value = "containerd")]
    executor: ExecutorKind,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// The containerd namespace of the node's containers, images and snapshots.
    #[arg(long, default_value = "swarm")]
    containerd_namespace: String,
    /// Parent cgroup of the containers: a task's cgroup is /<NAME>/<task id>.
    #[arg(long, default_value = "swarm")]
    cgroup_parent: String,
    /// Run-time state: the tasks' network namespaces are mounted under <DIR>/netns, their
    /// secret and config files (a tmpfs per task) under <DIR>/files.
    #[arg(long, default_value = "/run/swarm")]
    exec_root: PathBuf,
    /// bpffs directory of the data plane's pinned maps and links (they outlive the agent, so
    /// traffic keeps flowing across a restart). Mounted at /sys/fs/bpf when missing.
    #[arg(long, default_value = "/sys/fs/bpf/swarm")]
    bpf_root: PathBuf,
    /// The network data plane.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    data_plane: DataPlaneKind,
    /// How the eBPF data plane attaches its tc programs.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    tc_attach: TcAttachKind,
    /// The node's resolvers: where the embedded DNS server (127.0.0.11 in tasks) forwards
    /// names it does not know. Re-read when it changes.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// A registry (`HOST[:PORT]`, or `HOST` for every port) pulled from over plain HTTP
    /// instead of HTTPS (Docker's insecure-registries); repeat for several.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// PEM file of registry CA certificates trusted besides the system's roots.
    #[arg(long, value_name = "FILE")]
    registry_ca: Option<PathBuf>,
    /// The Raft heartbeat interval of this node's manager (50ms to 10s). It is also how long
    /// the leader waits for one replication call: while the round trip between managers
    /// stays above it, no write commits (the log then warns of late answers). A longer one
    /// tolerates slower links between managers, and failover takes up to 11.5 heartbeats
    /// (1.7 s at the default). Give every manager the same.
    #[arg(long, value_name = "DURATION", default_value = "150ms", value_parser = swarm_agent::parse_raft_heartbeat)]
    raft_heartbeat: swarm_agent::RaftTiming,
    /// Raft log entries between the manager's snapshots (Docker's `--snapshot-interval`).
    /// A snapshot is also taken once 64 MiB of entries were appended since the last one.
    #[arg(long, value_name = "ENTRIES", default_value_t = swarm_agent::DEFAULT_SNAPSHOT_INTERVAL, value_parser = swarm_agent::parse_snapshot_interval)]
    raft_snapshot_interval: u64,
}

/// How the node reaches registries, from `--insecure-registry` and `--registry-ca`.
fn registry_access(args: &Args) -> anyhow::Result<RegistryAccess> {
    let ca_pem = match &args.registry_ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "--registry-ca {}: {e}; give a PEM file of CA certificates",
                path.display()
            )
        })?),
        None => None,
    };
    let access = RegistryAccess {
        insecure: args.insecure_registries.clone(),
        ca_pem,
        login: None,
    };
    access.check()?;
    Ok(access)
}

/// The cgroup v2 directory the socket hooks attach to (None, and said, when there is none).
fn cgroup_dir(parent: &str) -> Option<PathBuf> {
    match swarm_agent::network::cgroup2_dir(parent) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(
                "no cgroup v2 directory for --cgroup-parent {parent}: {e}; tasks get no service load balancing at connect time and no resolver at 127.0.0.11"
            );
            None
        }
    }
}

/// What containerd's shim runs as the tasks' log driver: this executable, or its copy in the
/// data root when the agent runs as a container (see `containerized`).
fn log_driver_exe(args: &Args) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("finding the agent's own executable: {e}"))?;
    Ok(swarm_agent::containerized::log_driver_exe(
        &args.containerd_socket,
        &exe,
        &args.data_root,
    )?)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn main() -> anyhow::Result<()> {
    // containerd's shim starts `swarm-agent log-driver DIR` for every task's stdout and
    // stderr (binary:// logging): no tokio runtime there, and it must start before one exists.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "log-driver") {
        let Some(dir) = argv.get(2) else {
            anyhow::bail!("usage: swarm-agent log-driver TASK_DIR (started by containerd's shim)");
        };
        return swarm_agent::logs::driver::run(std::path::Path::new(dir));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(daemon())
}

async fn daemon() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Command::Probe) = args.command {
        let mut p = KernelProbe::run();
        p.probe_ipvs();
        print!("{}", probe::report(&p));
        match probe::choose(args.data_plane.into(), args.tc_attach.into(), &p) {
            Ok(c) => {
                println!("{c}");
                return Ok(());
            }
            Err(e) => {
                println!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    if args.cgroup_parent.trim_matches('/').is_empty() || args.cgroup_parent.contains("..") {
        anyhow::bail!(
            "invalid --cgroup-parent {:?}: give a cgroup name such as \"swarm\"",
            args.cgroup_parent
        );
    }
    // The manager's metrics come first on /metrics, before the executor's and the data plane's.
    std::sync::LazyLock::force(&swarm_manager::metrics::METRICS);
    let choice = match args.executor {
        ExecutorKind::None => Choice::none("--executor none: the node runs no tasks"),
        ExecutorKind::Containerd => match args.data_plane {
            DataPlaneKind::None => Choice::none("--data-plane none"),
            requested => {
                let requested = requested.into();
                let p = KernelProbe::run_for(requested);
                probe::choose(requested, args.tc_attach.into(), &p)?
            }
        },
    };
    tracing::info!(
        mode = choice.mode.as_str(),
        tc_attach = choice.attach_str(),
        missing = %choice.missing.join(","),
        kernel = %choice.kernel,
        "{choice}"
    );
    swarm_common::metrics::register(
        "agent_data_plane",
        "The data plane the agent chose at start: its mode, how tc programs attach, and the kernel features it works around",
        prometheus_client::metrics::info::Info::new(vec![
            ("mode", choice.mode.as_str().to_string()),
            ("attach", choice.attach_str().to_string()),
            ("missing", choice.missing.join(",")),
            ("kernel", choice.kernel.clone()),
        ]),
    );
    let (executor, networking): (Arc<dyn Executor>, _) = match args.executor {
        ExecutorKind::None => (Arc::new(UnsupportedExecutor), None),
        ExecutorKind::Containerd => {
            let executor = ContainerdExecutor::new(
                args.containerd_socket.clone(),
                args.containerd_namespace.clone(),
                args.cgroup_parent.clone(),
            )
            .with_log_driver(log_driver_exe(&args)?)
            .with_state_dir(args.data_root.join("tasks"))
            .with_volumes_dir(args.data_root.join("volumes"))
            .with_netns_dir(args.exec_root.join("netns"))
            .with_files_dir(args.exec_root.join("files"))
            .with_registries(registry_access(&args)?);
            match (choice.mode, choice.attach) {
                (mode @ (Mode::Ebpf | Mode::Ipvs), Some(tc_attach)) => {
                    let lb = if mode == Mode::Ipvs {
                        ServiceLb::Ipvs
                    } else {
                        ServiceLb::Ebpf
                    };
                    let networking = Networking::new(
                        NetworkingConfig {
                            bpf_dir: args.bpf_root.clone(),
                            // IPVS mode: no socket hooks.
                            cgroup_dir: match lb {
                                ServiceLb::Ebpf => cgroup_dir(&args.cgroup_parent),
                                ServiceLb::Ipvs => None,
                            },
                            resolv_conf: args.resolv_conf.clone(),
                            tc_attach,
                            lb,
                            // The routing mesh's namespace in IPVS mode (not among the
                            // tasks' namespaces: the orphan sweep lists those).
                            ingress_sbox_dir: Some(args.exec_root.clone()),
                        },
                        ViewHandle::default(),
                    );
                    let executor = executor.with_network(networking.clone());
                    (Arc::new(executor) as Arc<dyn Executor>, Some(networking))
                }
                _ => (Arc::new(executor) as Arc<dyn Executor>, None),
            }
        }
    };
    let metrics_addr =
        if args.metrics_addr.is_empty() {
            None
        } else {
            Some(args.metrics_addr.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!("invalid --metrics-addr {:?}: {e}", args.metrics_addr)
            })?)
        };
    swarm_agent::run_with_networking(
        AgentConfig {
            data_root: args.data_root,
            socket: args.socket,
            hostname: args.hostname.unwrap_or_else(host_name),
            metrics_addr,
            data_plane: Some(choice.to_proto()),
            raft_timing: args.raft_heartbeat,
            raft_snapshot_interval: args.raft_snapshot_interval,
        },
        executor,
        networking,
    )
    .await
}
