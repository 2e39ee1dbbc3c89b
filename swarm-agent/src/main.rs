//! `swarm-agent [--data-root DIR] [--socket PATH] [--hostname NAME] [--metrics-addr ADDR]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use swarm_agent::{AgentConfig, UnsupportedExecutor};

#[derive(Parser)]
#[command(name = "swarm-agent", version, about = "The swarm node daemon")]
struct Args {
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
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
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
    let args = Args::parse();
    let metrics_addr =
        if args.metrics_addr.is_empty() {
            None
        } else {
            Some(args.metrics_addr.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!("invalid --metrics-addr {:?}: {e}", args.metrics_addr)
            })?)
        };
    swarm_agent::run(
        AgentConfig {
            data_root: args.data_root,
            socket: args.socket,
            hostname: args.hostname.unwrap_or_else(host_name),
            metrics_addr,
        },
        Arc::new(UnsupportedExecutor),
    )
    .await
}
