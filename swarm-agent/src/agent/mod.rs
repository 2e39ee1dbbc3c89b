//! The node's agent: the `Agent` type, what it holds (the membership and credentials, the
//! in-process manager when the node's role is manager, the node's network view) and the work
//! it keeps running while the node is in a swarm. Each job has a file of its own:
//! `membership` (init, join, leave, resume), `role` (promotion and demotion), `renewal`
//! (certificate renewal), `session` (the session with the leader's dispatcher) and
//! `addresses` (the listen and advertise addresses).

mod addresses;
mod membership;
mod renewal;
mod role;
mod session;
mod unlock;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use proto::{NodeDescription, NodeRole, Platform};
use swarm_manager::control::ControlApi;
use swarm_manager::manager::{Bootstrap, Credentials, Manager, ManagerConfig, UnlockKey};
use tokio::task::JoinHandle;

use crate::executor::Executor;
use crate::network::view::ViewHandle;
use crate::network::Networking;
use crate::state::{NodeState, Paths};
use crate::worker::Worker;

pub use addresses::{with_default_port, DEFAULT_PORT};
pub use membership::{InitOptions, JoinOptions, DEFAULT_CERT_EXPIRY};
pub use role::role_name;
pub use swarm_manager::raft::config::RaftTiming;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_root: PathBuf,
    pub socket: PathBuf,
    pub hostname: String,
    pub metrics_addr: Option<SocketAddr>,
    /// The data plane the agent chose at start, reported in the node's description
    /// (`node inspect`); None when the daemon has none to report (the test agent).
    pub data_plane: Option<proto::DataPlaneInfo>,
    /// The Raft timing of the node's manager when it is one (`--raft-heartbeat`).
    pub raft_timing: RaftTiming,
    /// Entries between the manager's Raft snapshots (`--raft-snapshot-interval`).
    pub raft_snapshot_interval: u64,
}

/// `--raft-heartbeat`: a Go duration within [`RaftTiming`]'s range.
pub fn parse_raft_heartbeat(s: &str) -> Result<RaftTiming, String> {
    let d = swarm_common::duration::parse_go_duration(s)?;
    RaftTiming::new(d).map_err(|e| e.to_string())
}

/// The default of `--raft-snapshot-interval` (Docker's `--snapshot-interval`: 10 000).
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = swarm_manager::raft::config::SNAPSHOT_EVERY_LOGS;

/// `--raft-snapshot-interval`: a number of log entries, 1 to 1 000 000.
pub fn parse_snapshot_interval(s: &str) -> Result<u64, String> {
    let max = swarm_manager::raft::config::MAX_SNAPSHOT_INTERVAL;
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "a Raft snapshot interval of {n} entries is out of range: give 1 to {max} (default {DEFAULT_SNAPSHOT_INTERVAL})"
        )),
        Err(_) => Err(format!(
            "{s:?} is not a number of Raft log entries: give 1 to {max} (default {DEFAULT_SNAPSHOT_INTERVAL})"
        )),
    }
}

/// What `swarm info` and the CLI's node marker need, readable without locks held long.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub state: Option<NodeState>,
    pub error: String,
    /// A manager locked since its restart (autolock): it serves nothing until `swarm unlock`.
    pub locked: bool,
}

struct Inner {
    state: Option<NodeState>,
    creds: Option<Credentials>,
    manager: Option<Manager>,
    session: Option<JoinHandle<()>>,
    renewal: Option<JoinHandle<()>>,
    /// The membership of a manager locked since its restart (autolock), its key still
    /// sealed: nothing runs until `swarm unlock` (`unlock.rs`).
    locked: Option<(NodeState, Credentials)>,
}

/// The key the node's TLS key is sealed by: the running manager's unlock key under
/// autolock, else None (PEM).
fn seal_key(inner: &Inner) -> Option<UnlockKey> {
    inner
        .manager
        .as_ref()
        .and_then(|m| m.unlock_key().borrow().clone())
}

pub struct Agent {
    pub cfg: AgentConfig,
    paths: Paths,
    worker: Arc<Worker>,
    inner: tokio::sync::Mutex<Inner>,
    control: RwLock<Option<ControlApi>>,
    snapshot: RwLock<Snapshot>,
    role_change: tokio::sync::Mutex<()>,
    /// The role the managers last said this node has.
    wanted_role: std::sync::Mutex<Option<NodeRole>>,
    /// The managers' view of the networks this node has tasks on (`Dispatcher.NetworkState`).
    network: ViewHandle,
    /// A manager without `NetworkState` was met (logged once).
    network_state_unsupported: AtomicBool,
    /// Bytes of network state messages received (their encoded size), across sessions.
    network_state_bytes: AtomicU64,
    /// The node's data plane (None: control-plane-only agents, e.g. the test harness).
    networking: Option<Arc<Networking>>,
    /// Set when the in-process manager's Raft core stopped on a storage failure.
    raft_failed: tokio::sync::watch::Sender<Option<String>>,
    /// The roots the managers last said nodes trust (`SessionMessage.root_ca`); a node whose
    /// own differ renews its certificate now (root rotation), woken through `renew_now`.
    session_root: std::sync::Mutex<String>,
    renew_now: tokio::sync::Notify,
}

impl Agent {
    pub fn new(cfg: AgentConfig, executor: Arc<dyn Executor>) -> Arc<Agent> {
        Agent::with_networking(cfg, executor, None)
    }

    /// An agent whose data plane is `networking` (its view is the one the managers send).
    pub fn with_networking(
        cfg: AgentConfig,
        executor: Arc<dyn Executor>,
        networking: Option<Arc<Networking>>,
    ) -> Arc<Agent> {
        let paths = Paths::new(&cfg.data_root);
        let network = networking.as_ref().map(|n| n.view()).unwrap_or_default();
        Arc::new(Agent {
            cfg,
            paths,
            worker: Worker::new(executor),
            inner: tokio::sync::Mutex::new(Inner {
                state: None,
                creds: None,
                manager: None,
                session: None,
                renewal: None,
                locked: None,
            }),
            control: RwLock::new(None),
            snapshot: RwLock::new(Snapshot::default()),
            role_change: tokio::sync::Mutex::new(()),
            wanted_role: std::sync::Mutex::new(None),
            network,
            network_state_unsupported: AtomicBool::new(false),
            network_state_bytes: AtomicU64::new(0),
            networking,
            raft_failed: tokio::sync::watch::channel(None).0,
            session_root: std::sync::Mutex::new(String::new()),
            renew_now: tokio::sync::Notify::new(),
        })
    }

    /// The network state this node's agent received from the managers: what the data plane
    /// and `network inspect --verbose` read.
    pub fn network_view(&self) -> ViewHandle {
        self.network.clone()
    }

    /// The encoded size of every network state message this agent received since it started
    /// (all sessions): what the managers' `Dispatcher.NetworkState` cost this node.
    pub fn network_state_bytes(&self) -> u64 {
        self.network_state_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn control(&self) -> Option<ControlApi> {
        self.control
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The in-process manager's log broker (None unless this node is a manager).
    pub async fn log_broker(&self) -> Option<swarm_manager::logbroker::LogBroker> {
        let inner = self.inner.lock().await;
        inner.manager.as_ref().map(|m| m.logs.clone())
    }

    /// Resolves, with the reason, once the in-process manager's Raft core stopped on a
    /// storage failure (a full disk, an I/O error). The daemon then exits non-zero: a
    /// restarted process resumes from the data root, as etcd does on a fatal storage error.
    pub async fn raft_failure(&self) -> String {
        let mut rx = self.raft_failed.subscribe();
        let reason = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone(),
            // The sender lives as long as the agent.
            Err(_) => None,
        };
        match reason {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, inner: &Inner) {
        let mut s = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        s.state = inner.state.clone();
        s.locked = inner.locked.is_some();
        *self.control.write().unwrap_or_else(|e| e.into_inner()) =
            inner.manager.as_ref().map(|m| m.control.clone());
    }

    pub fn description(&self) -> NodeDescription {
        let d = self.worker.executor().describe();
        NodeDescription {
            hostname: self.cfg.hostname.clone(),
            platform: Some(Platform {
                os: std::env::consts::OS.to_string(),
                architecture: std::env::consts::ARCH.to_string(),
            }),
            resources: Some(d.resources),
            engine_labels: d.engine_labels,
            engine_version: d.engine_version,
            // The CA records it when it issues the node's certificate.
            tls_info: None,
            data_plane: self.cfg.data_plane.clone(),
        }
    }

    /// Starts the in-process manager (`unlock`: the key `swarm unlock` gave a locked one),
    /// and keeps the node's TLS key sealed by the unlock key its data key is wrapped by.
    async fn start_manager(
        self: &Arc<Self>,
        state: &NodeState,
        creds: &Credentials,
        bootstrap: Bootstrap,
        unlock: Option<UnlockKey>,
    ) -> anyhow::Result<Manager> {
        let listen: SocketAddr = state
            .listen_addr
            .parse()
            .with_context(|| format!("invalid listen address {:?}", state.listen_addr))?;
        let manager = Manager::start(
            ManagerConfig {
                raft_dir: self.paths.raft(),
                raft_id: state.raft_id,
                node_id: state.node_id.clone(),
                listen_addr: listen,
                advertise_addr: state.advertise_addr.clone(),
                credentials: creds.clone(),
                unlock_key: unlock,
                raft_timing: self.cfg.raft_timing,
                raft_snapshot_interval: self.cfg.raft_snapshot_interval,
            },
            bootstrap,
        )
        .await?;
        tokio::spawn(seal_tls_key(Arc::downgrade(self), manager.unlock_key()));
        let failure = manager.failure();
        let failed = self.raft_failed.clone();
        tokio::spawn(async move {
            if let Some(reason) = failure.await {
                tracing::error!("the manager's Raft stopped: {reason}");
                failed.send_replace(Some(reason));
            }
        });
        Ok(manager)
    }

    fn start_background(self: &Arc<Self>, inner: &mut Inner) {
        if let Some(h) = inner.session.take() {
            h.abort();
        }
        if let Some(h) = inner.renewal.take() {
            h.abort();
        }
        inner.session = Some(tokio::spawn(session::session_loop(self.clone())));
        inner.renewal = Some(tokio::spawn(renewal::renewal_loop(self.clone())));
    }

    async fn current(&self) -> Option<(NodeState, Credentials)> {
        let inner = self.inner.lock().await;
        Some((inner.state.clone()?, inner.creds.clone()?))
    }
}

/// Saves the node's credentials again whenever the manager's data key is re-wrapped
/// (autolock turned on or off, the unlock key rotated): the TLS key is sealed by the same
/// unlock key, or kept in PEM without autolock. Ends with the manager.
async fn seal_tls_key(
    agent: std::sync::Weak<Agent>,
    mut key: tokio::sync::watch::Receiver<Option<UnlockKey>>,
) {
    while key.changed().await.is_ok() {
        let Some(agent) = agent.upgrade() else {
            return;
        };
        let inner = agent.inner.lock().await;
        let seal = key.borrow_and_update().clone();
        if let Some(creds) = &inner.creds {
            match agent.paths.save_credentials(creds, seal.as_ref()) {
                Ok(()) => tracing::info!(sealed = seal.is_some(), "saved the node key"),
                Err(e) => {
                    tracing::error!("saving the node key after the unlock key changed: {e:#}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn raft_heartbeat_flag_defaults_to_the_managers_default_and_refuses_bad_values() {
        // The flag's default_value in main.rs and test-agent.rs.
        assert_eq!(parse_raft_heartbeat("150ms"), Ok(RaftTiming::default()));
        assert_eq!(
            parse_raft_heartbeat("1s").map(|t| t.heartbeat()),
            Ok(Duration::from_secs(1))
        );
        let e = parse_raft_heartbeat("10ms").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = parse_raft_heartbeat("500").unwrap_err();
        assert!(e.contains("missing unit"), "{e}");
    }

    #[test]
    fn raft_snapshot_interval_flag_takes_1_to_a_million_entries() {
        assert_eq!(DEFAULT_SNAPSHOT_INTERVAL, 10_000, "Docker's default");
        assert_eq!(parse_snapshot_interval("10000"), Ok(10_000));
        assert_eq!(parse_snapshot_interval("1"), Ok(1));
        assert_eq!(parse_snapshot_interval("1000000"), Ok(1_000_000));
        for bad in ["0", "1000001"] {
            let e = parse_snapshot_interval(bad).unwrap_err();
            assert!(e.contains("out of range") && e.contains(bad), "{e}");
        }
        for bad in ["-1", "10k", ""] {
            let e = parse_snapshot_interval(bad).unwrap_err();
            assert!(e.contains("not a number of Raft log entries"), "{e}");
        }
    }
}
