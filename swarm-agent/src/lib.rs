//! `swarm-agent`, the node daemon: the agent session with the managers, the task
//! executor, the local CLI socket, `/metrics`, and the manager in-process when the
//! node's role is manager.

pub mod agent;
pub mod containerd;
pub mod containerized;
pub mod dependencies;
pub mod executor;
pub mod local;
pub mod logs;
pub mod metrics_http;
pub mod netns;
pub mod network;
pub mod reporter;
pub mod state;
pub mod worker;

use std::sync::Arc;

use anyhow::Context;

pub use agent::{
    parse_raft_heartbeat, parse_snapshot_interval, Agent, AgentConfig, RaftTiming,
    DEFAULT_SNAPSHOT_INTERVAL,
};
pub use executor::{Executor, ExecutorDescription, TaskReporter, UnsupportedExecutor};

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(cfg: AgentConfig, executor: Arc<dyn Executor>) -> anyhow::Result<()> {
    run_with_networking(cfg, executor, None).await
}

/// Runs the daemon with `networking` as the node's data plane.
pub async fn run_with_networking(
    cfg: AgentConfig,
    executor: Arc<dyn Executor>,
    networking: Option<Arc<network::Networking>>,
) -> anyhow::Result<()> {
    // The in-process manager's metrics are on /metrics from the start, on workers too.
    std::sync::LazyLock::force(&swarm_manager::metrics::METRICS);
    let _ = rustls::crypto::ring::default_provider().install_default();
    state::Paths::new(&cfg.data_root).secure()?;
    let agent = Agent::with_networking(cfg.clone(), executor, networking);
    agent
        .resume()
        .await
        .context("resuming the swarm membership from the data root")?;

    if let Some(addr) = cfg.metrics_addr {
        tokio::spawn(async move {
            if let Err(e) = metrics_http::serve(addr).await {
                tracing::warn!("metrics endpoint on {addr}: {e:#}");
            }
        });
    }

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Bound and listening under a temporary name, then renamed into place: whoever waits for
    // the socket file (the lab, a unit's ExecStartPost, a script) never finds it before it
    // accepts connections (between bind and listen a connect is refused) or with the
    // default permissions.
    let staging = cfg
        .socket
        .with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging)
        .with_context(|| format!("binding the control socket {}", staging.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o660))?;
    }
    std::fs::rename(&staging, &cfg.socket).with_context(|| {
        format!(
            "moving the control socket {} into place at {}",
            staging.display(),
            cfg.socket.display()
        )
    })?;
    tracing::info!(socket = %cfg.socket.display(), "swarm-agent ready");
    let api = local::LocalApi::new(agent.clone());
    let server = tonic::transport::Server::builder()
        .add_service(proto::local_node_server::LocalNodeServer::new(api.clone()))
        .add_service(proto::logs_server::LogsServer::new(api.clone()))
        .add_service(proto::control_server::ControlServer::new(api))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown_signal(),
        );
    let mut server = std::pin::pin!(server);
    tokio::select! {
        r = &mut server => r.context("serving the control socket")?,
        reason = agent.raft_failure() => {
            // A manager whose Raft storage failed leads nothing and serves nothing: it
            // answers every call with the fault for a moment (agent sessions end and move
            // to another manager), then the process exits non-zero so that a supervisor
            // restarts it from the data root, where every acknowledged write is.
            let _ = tokio::time::timeout(RAFT_FAILURE_GRACE, &mut server).await;
            let _ = std::fs::remove_file(&cfg.socket);
            anyhow::bail!(
                "the manager's Raft storage failed ({reason}); exiting: fix the disk of {} (free space, I/O errors) and start swarm-agent again",
                cfg.data_root.display()
            );
        }
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// How long a daemon whose manager's Raft storage failed keeps answering (with the fault)
/// before it exits.
const RAFT_FAILURE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
