//! `swarm-agent` with the simulated executor, for end-to-end tests and the lab.
//! Same flags as `swarm-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use swarm_agent::AgentConfig;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "/var/lib/swarm")]
    data_root: PathBuf,
    #[arg(long, default_value = "/run/swarm/swarm.sock")]
    socket: PathBuf,
    #[arg(long, default_value = "sim-node")]
    hostname: String,
    #[arg(long, default_value = "")]
    metrics_addr: String,
    #[arg(long, default_value = "150ms", value_parser = swarm_agent::parse_raft_heartbeat)]
    raft_heartbeat: swarm_agent::RaftTiming,
    #[arg(long, default_value_t = swarm_agent::DEFAULT_SNAPSHOT_INTERVAL, value_parser = swarm_agent::parse_snapshot_interval)]
    raft_snapshot_interval: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    let metrics_addr: Option<SocketAddr> = if a.metrics_addr.is_empty() {
        None
    } else {
        Some(a.metrics_addr.parse()?)
    };
    swarm_agent::run(
        AgentConfig {
            data_root: a.data_root,
            socket: a.socket,
            hostname: a.hostname,
            metrics_addr,
            data_plane: None,
            raft_timing: a.raft_heartbeat,
            raft_snapshot_interval: a.raft_snapshot_interval,
        },
        Arc::new(tests::sim_executor::SimExecutor),
    )
    .await
}
