//! The node runtime: swarm membership (init, join, leave), the in-process manager when the
//! node's role is manager, certificate renewal, and the agent session with the leader.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use proto::ca_client::CaClient;
use proto::dispatcher_client::DispatcherClient;
use proto::node_ca_client::NodeCaClient;
use proto::{
    network_state_message, AssignmentsRequest, CaConfig, Cluster, ClusterSpec, DispatcherConfig,
    GetRootCaCertificateRequest, HeartbeatRequest, IssueNodeCertificateRequest, JoinTokens,
    ManagerStatus, NetworkStateMessage, Node, NodeAvailability, NodeDescription, NodeRole,
    NodeSpec, NodeStatus, OrchestrationConfig, Platform, Reachability, RootCa as RootCaObj,
    SessionMessage, SessionRequest, UpdateTaskStatusRequest,
};
use rand::Rng;
use swarm_common::id::new_id;
use swarm_manager::ca::{self, RootCa};
use swarm_manager::control::ControlApi;
use swarm_manager::manager::{Bootstrap, Credentials, Manager, ManagerConfig};
use swarm_manager::tls;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::executor::Executor;
use crate::network::stream::StreamEnd;
use crate::network::view::ViewHandle;
use crate::network::Networking;
use crate::state::{NodeState, Paths};
use crate::worker::Worker;

pub const DEFAULT_PORT: u16 = 2377;
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_root: PathBuf,
    pub socket: PathBuf,
    pub hostname: String,
    pub metrics_addr: Option<SocketAddr>,
}

/// What `swarm info` and the CLI's node marker need, readable without locks held long.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub state: Option<NodeState>,
    pub error: String,
}

struct Inner {
    state: Option<NodeState>,
    creds: Option<Credentials>,
    manager: Option<Manager>,
    session: Option<JoinHandle<()>>,
    renewal: Option<JoinHandle<()>>,
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
    /// The node's data plane (None: control-plane-only agents, e.g. the test harness).
    networking: Option<Arc<Networking>>,
}

pub struct InitOptions {
    pub advertise_addr: String,
    pub listen_addr: String,
    pub task_history_limit: i64,
    pub dispatcher_heartbeat: Duration,
    pub cert_expiry: Duration,
    pub availability: NodeAvailability,
    /// Pools network subnets are carved from; empty = 10.0.0.0/8.
    pub default_addr_pool: Vec<String>,
    /// Prefix length of carved subnets; 0 = 24.
    pub subnet_size: u32,
    /// VXLAN UDP port; 0 = 4789.
    pub vxlan_udp_port: u32,
}

pub struct JoinOptions {
    pub remote: String,
    pub token: String,
    pub advertise_addr: String,
    pub listen_addr: String,
    pub availability: NodeAvailability,
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
            }),
            control: RwLock::new(None),
            snapshot: RwLock::new(Snapshot::default()),
            role_change: tokio::sync::Mutex::new(()),
            wanted_role: std::sync::Mutex::new(None),
            network,
            network_state_unsupported: AtomicBool::new(false),
            networking,
        })
    }

    /// The network state this node's agent received from the managers: what the data plane
    /// and `network inspect --verbose` read.
    pub fn network_view(&self) -> ViewHandle {
        self.network.clone()
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

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, inner: &Inner) {
        let mut s = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        s.state = inner.state.clone();
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
        }
    }

    /// Resumes the membership stored in the data root, if any.
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some((state, creds)) = self.paths.load()? else {
            return Ok(());
        };
        tracing::info!(node = %state.node_id, role = %state.role, "resuming swarm membership");
        let mut inner = self.inner.lock().await;
        if state.is_manager() {
            let m = self
                .start_manager(&state, &creds, Bootstrap::Restart)
                .await?;
            inner.manager = Some(m);
        }
        inner.state = Some(state);
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok(())
    }

    async fn start_manager(
        &self,
        state: &NodeState,
        creds: &Credentials,
        bootstrap: Bootstrap,
    ) -> anyhow::Result<Manager> {
        let listen: SocketAddr = state
            .listen_addr
            .parse()
            .with_context(|| format!("invalid listen address {:?}", state.listen_addr))?;
        Manager::start(
            ManagerConfig {
                raft_dir: self.paths.raft(),
                raft_id: state.raft_id,
                node_id: state.node_id.clone(),
                listen_addr: listen,
                advertise_addr: state.advertise_addr.clone(),
                credentials: creds.clone(),
            },
            bootstrap,
        )
        .await
    }

    fn start_background(self: &Arc<Self>, inner: &mut Inner) {
        if let Some(h) = inner.session.take() {
            h.abort();
        }
        if let Some(h) = inner.renewal.take() {
            h.abort();
        }
        inner.session = Some(tokio::spawn(session_loop(self.clone())));
        inner.renewal = Some(tokio::spawn(renewal_loop(self.clone())));
    }

    pub async fn init(
        self: &Arc<Self>,
        opts: InitOptions,
    ) -> anyhow::Result<(String, String, String)> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_some() {
            bail!(already_in_swarm());
        }
        let listen = listen_addr(&opts.listen_addr)?;
        let advertise = advertise_addr(&opts.advertise_addr, listen)?;
        let cluster_id = new_id();
        let node_id = new_id();
        let raft_id = random_raft_id();
        let root = RootCa::generate()?;
        let (key, csr) = ca::new_key_and_csr()?;
        let cert = root.sign_node_cert(
            &csr,
            &node_id,
            NodeRole::Manager,
            &cluster_id,
            opts.cert_expiry,
        )?;
        let worker_token = ca::generate_join_token(&root.cert_pem)?;
        let manager_token = ca::generate_join_token(&root.cert_pem)?;
        let cluster = Cluster {
            id: cluster_id.clone(),
            meta: None,
            spec: Some(ClusterSpec {
                name: "default".into(),
                orchestration: Some(OrchestrationConfig {
                    task_history_retention_limit: opts.task_history_limit,
                }),
                dispatcher: Some(DispatcherConfig {
                    heartbeat_period_ms: opts.dispatcher_heartbeat.as_millis() as i64,
                }),
                ca_config: Some(CaConfig {
                    node_cert_expiry_ms: opts.cert_expiry.as_millis() as i64,
                }),
            }),
            root_ca: Some(RootCaObj {
                ca_key: root.key_pem.clone(),
                ca_cert: root.cert_pem.clone(),
                ca_cert_hash: root.digest(),
                join_tokens: Some(JoinTokens {
                    worker: worker_token.clone(),
                    manager: manager_token,
                }),
            }),
            default_addr_pool: opts.default_addr_pool.clone(),
            subnet_size: opts.subnet_size,
            vxlan_udp_port: opts.vxlan_udp_port,
        };
        let node = Node {
            id: node_id.clone(),
            meta: None,
            spec: Some(NodeSpec {
                labels: Default::default(),
                desired_role: NodeRole::Manager as i32,
                availability: opts.availability as i32,
            }),
            description: Some(self.description()),
            status: Some(NodeStatus {
                state: proto::NodeState::Unknown as i32,
                message: String::new(),
                addr: host_of(&advertise),
            }),
            manager_status: Some(ManagerStatus {
                raft_id,
                addr: advertise.clone(),
                leader: true,
                reachability: Reachability::Reachable as i32,
            }),
            role: NodeRole::Manager as i32,
            attachments: vec![],
        };
        let creds = Credentials {
            cert_pem: cert,
            key_pem: key,
            root_ca_pem: root.cert_pem.clone(),
        };
        let state = NodeState {
            node_id: node_id.clone(),
            cluster_id,
            role: "manager".into(),
            raft_id,
            listen_addr: listen.to_string(),
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
        };
        self.paths.wipe()?;
        let manager = self
            .start_manager(
                &state,
                &creds,
                Bootstrap::NewCluster {
                    cluster: Box::new(cluster),
                    node: Box::new(node),
                },
            )
            .await?;
        // Saved only once the cluster exists: a failed init leaves no half membership.
        self.paths.save_credentials(&creds)?;
        self.paths.save_state(&state)?;
        inner.manager = Some(manager);
        inner.state = Some(state);
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok((node_id, worker_token, advertise))
    }

    pub async fn join(self: &Arc<Self>, opts: JoinOptions) -> anyhow::Result<(String, NodeRole)> {
        let mut inner = self.inner.lock().await;
        if inner.state.is_some() {
            bail!(already_in_swarm());
        }
        let token = ca::parse_join_token(opts.token.trim())?;
        let remote = with_default_port(&opts.remote);
        let listen = listen_addr(&opts.listen_addr)?;
        let advertise = advertise_addr(&opts.advertise_addr, listen)?;

        // The root CA comes over an unverified connection; the token's digest verifies it.
        let insecure = tls::channel(&remote, tls::insecure_client_config());
        let root_pem = CaClient::new(insecure)
            .get_root_ca_certificate(GetRootCaCertificateRequest {})
            .await
            .map_err(|s| anyhow!("could not reach a manager at {remote}: {}", s.message()))?
            .into_inner()
            .certificate;
        if !ca::token_matches_ca(&token, &root_pem) {
            bail!(
                "the manager at {remote} presented a root CA that does not match the fingerprint in the join token: check the token and the address"
            );
        }
        let (key, csr) = ca::new_key_and_csr()?;
        let secure = tls::channel(&remote, tls::client_config(&root_pem, None)?);
        let resp = NodeCaClient::new(secure)
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr,
                token: opts.token.trim().to_string(),
                advertise_addr: advertise.clone(),
                description: Some(self.description()),
            })
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        let role = NodeRole::try_from(resp.role).unwrap_or(NodeRole::Worker);
        let creds = Credentials {
            cert_pem: resp.certificate,
            key_pem: key,
            root_ca_pem: resp.root_ca,
        };
        let mut state = NodeState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id,
            role: role_name(role).into(),
            raft_id: 0,
            listen_addr: listen.to_string(),
            advertise_addr: advertise,
            managers: vec![remote.clone()],
        };
        self.paths.wipe()?;
        self.paths.save_credentials(&creds)?;
        if role == NodeRole::Manager {
            state.raft_id = random_raft_id();
            self.paths.save_state(&state)?;
            let m = self
                .start_manager(&state, &creds, Bootstrap::Join { remote })
                .await?;
            inner.manager = Some(m);
        } else {
            self.paths.save_state(&state)?;
        }
        if opts.availability != NodeAvailability::Active {
            tracing::warn!(
                "--availability on join is applied by `swarm node update` once the node is up"
            );
        }
        inner.state = Some(state);
        inner.creds = Some(creds);
        self.start_background(&mut inner);
        self.publish(&inner);
        Ok((resp.node_id, role))
    }

    pub async fn leave(self: &Arc<Self>, force: bool) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(state) = inner.state.clone() else {
            bail!("This node is not part of a swarm");
        };
        if state.is_manager() && !force {
            bail!(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node may make the swarm lose its quorum, and removing the last manager erases all current state of the swarm. Use `--force` to ignore this message."
            );
        }
        if let Some(h) = inner.session.take() {
            h.abort();
        }
        if let Some(h) = inner.renewal.take() {
            h.abort();
        }
        self.worker.stop_all();
        if let Some(m) = inner.manager.take() {
            match tokio::time::timeout(Duration::from_secs(5), m.leave_raft()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("leaving the raft cluster: {e}"),
                Err(_) => tracing::warn!("leaving the raft cluster timed out"),
            }
            m.shutdown().await;
        }
        self.paths.wipe()?;
        inner.state = None;
        inner.creds = None;
        // Out of the swarm: no network state is the managers' any more.
        self.network.apply(NetworkStateMessage {
            r#type: network_state_message::Type::Complete as i32,
            changes: Vec::new(),
            ..Default::default()
        });
        self.publish(&inner);
        Ok(())
    }

    /// Session messages: remember the managers; follow role changes.
    async fn on_session_message(self: &Arc<Self>, msg: &SessionMessage) {
        let managers: Vec<String> = msg.managers.iter().map(|m| m.addr.clone()).collect();
        {
            let mut inner = self.inner.lock().await;
            if let Some(state) = inner.state.as_mut() {
                if !managers.is_empty() && state.managers != managers {
                    state.managers = managers;
                    if let Err(e) = self.paths.save_state(state) {
                        tracing::warn!("saving the manager list: {e}");
                    }
                }
            }
            self.publish(&inner);
        }
        if let Some(node) = &msg.node {
            let want = node.role_enum();
            let previous = self
                .wanted_role
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(want);
            let have = self
                .snapshot()
                .state
                .map(|s| s.is_manager())
                .unwrap_or(false);
            if (want == NodeRole::Manager) != have && previous != Some(want) {
                tokio::spawn(self.clone().follow_role(want));
            }
        }
    }

    /// Changes the node's role to `want`, retrying until it is done or the managers want
    /// another role (a failed attempt is not followed by a new session message).
    async fn follow_role(self: Arc<Self>, want: NodeRole) {
        loop {
            match self.clone().change_role(want).await {
                Ok(()) => return,
                Err(e) => tracing::warn!("changing role to {}: {e:#}; retrying", role_name(want)),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let still = *self.wanted_role.lock().unwrap_or_else(|e| e.into_inner()) == Some(want);
            if !still {
                return;
            }
        }
    }

    async fn change_role(self: Arc<Self>, want: NodeRole) -> anyhow::Result<()> {
        let _one = self.role_change.lock().await;
        let mut inner = self.inner.lock().await;
        let Some(mut state) = inner.state.clone() else {
            return Ok(());
        };
        if state.is_manager() == (want == NodeRole::Manager) {
            return Ok(());
        }
        let creds = inner.creds.clone().context("no credentials")?;
        let new = renew_certificate(&state, &creds, self.description()).await?;
        let id = ca::parse_node_cert_pem(&new.cert_pem)?;
        if id.role != want {
            bail!("the CA has not issued the new role yet");
        }
        self.paths.save_credentials(&new)?;
        inner.creds = Some(new.clone());
        if want == NodeRole::Manager {
            tracing::info!("promoted: starting the manager");
            state.role = "manager".into();
            state.raft_id = random_raft_id();
            self.paths.save_state(&state)?;
            let remote = state
                .managers
                .iter()
                .find(|a| **a != state.advertise_addr)
                .cloned()
                .context("no other manager known to join")?;
            let _ = std::fs::remove_dir_all(self.paths.raft());
            let m = self
                .start_manager(&state, &new, Bootstrap::Join { remote })
                .await?;
            inner.manager = Some(m);
        } else {
            tracing::info!("demoted: stopping the manager");
            if let Some(m) = inner.manager.take() {
                m.shutdown().await;
            }
            let _ = std::fs::remove_dir_all(self.paths.raft());
            state.role = "worker".into();
            state.raft_id = 0;
            self.paths.save_state(&state)?;
        }
        inner.state = Some(state);
        self.publish(&inner);
        Ok(())
    }

    async fn current(&self) -> Option<(NodeState, Credentials)> {
        let inner = self.inner.lock().await;
        Some((inner.state.clone()?, inner.creds.clone()?))
    }
}

fn already_in_swarm() -> &'static str {
    "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one."
}

pub fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

fn random_raft_id() -> u64 {
    rand::rng().random_range(1..u64::MAX)
}

fn listen_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let s = if s.is_empty() { "0.0.0.0:2377" } else { s };
    let with_port = with_default_port(s);
    with_port
        .parse()
        .with_context(|| format!("invalid listen address {s:?}: expected IP[:PORT]"))
}

pub fn with_default_port(s: &str) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    }
}

fn host_of(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

/// The address other nodes reach this node at: the flag (IP or IP:PORT, port defaulting to
/// the listen port), else the listen IP when it is specific, else the only non-loopback
/// IPv4 address of the host.
fn advertise_addr(flag: &str, listen: SocketAddr) -> anyhow::Result<String> {
    if !flag.is_empty() {
        if let Ok(a) = flag.parse::<SocketAddr>() {
            return Ok(a.to_string());
        }
        let ip: std::net::IpAddr = flag.parse().with_context(|| {
            format!("invalid advertise address {flag:?}: expected an IP address, optionally with a port")
        })?;
        return Ok(SocketAddr::new(ip, listen.port()).to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let ips = host_ipv4s();
    match ips.as_slice() {
        [ip] => Ok(SocketAddr::new((*ip).into(), listen.port()).to_string()),
        [] => bail!("could not find an address to advertise: specify one with --advertise-addr"),
        many => bail!(
            "could not choose an IP address to advertise since this system has multiple addresses ({}): specify one with --advertise-addr",
            many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn host_ipv4s() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we free with freeifaddrs; we only read it.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(ip);
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out.sort();
    out.dedup();
    out
}

/// Gets a fresh certificate for this node (same key type, new key) from any manager.
async fn renew_certificate(
    state: &NodeState,
    creds: &Credentials,
    description: NodeDescription,
) -> anyhow::Result<Credentials> {
    let cfg = tls::client_config(&creds.root_ca_pem, Some((&creds.cert_pem, &creds.key_pem)))?;
    let (key, csr) = ca::new_key_and_csr()?;
    let mut last = anyhow!("no manager known");
    // Our own manager last: while our role changes it may not know the leader.
    let mut managers = state.managers.clone();
    managers.sort_by_key(|a| *a == state.advertise_addr);
    for addr in &managers {
        let ch = tls::channel(addr, cfg.clone());
        match NodeCaClient::new(ch)
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr: csr.clone(),
                token: String::new(),
                advertise_addr: state.advertise_addr.clone(),
                description: Some(description.clone()),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(Credentials {
                    cert_pem: r.certificate,
                    key_pem: key,
                    root_ca_pem: if r.root_ca.is_empty() {
                        creds.root_ca_pem.clone()
                    } else {
                        r.root_ca
                    },
                });
            }
            Err(s) => last = anyhow!("renewing the certificate through {addr}: {}", s.message()),
        }
    }
    Err(last)
}

/// Renews the node certificate at a random point between 50 % and 80 % of its life.
async fn renewal_loop(agent: Arc<Agent>) {
    loop {
        let Some((state, creds)) = agent.current().await else {
            return;
        };
        let wait = match ca::parse_node_cert_pem(&creds.cert_pem) {
            Ok(id) => ca::renewal_time(&id)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::warn!("cannot read the node certificate: {e}");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(wait).await;
        match renew_certificate(&state, &creds, agent.description()).await {
            Ok(new) => {
                let mut inner = agent.inner.lock().await;
                if let Err(e) = agent.paths.save_credentials(&new) {
                    tracing::warn!("saving the renewed certificate: {e}");
                }
                if let Some(m) = &inner.manager {
                    if let Err(e) = m.update_credentials(&new) {
                        tracing::warn!("loading the renewed certificate: {e}");
                    }
                }
                inner.creds = Some(new);
                tracing::info!("node certificate renewed");
            }
            Err(e) => {
                tracing::warn!("certificate renewal failed, retrying in 30 s: {e:#}");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

enum SessionEnd {
    /// The manager is not the leader and said who is.
    Redirect(String),
    Failed(String),
}

impl From<Status> for SessionEnd {
    fn from(s: Status) -> Self {
        if let Some(addr) = s
            .metadata()
            .get(swarm_manager::dispatcher::LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            return SessionEnd::Redirect(addr.to_string());
        }
        SessionEnd::Failed(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// Keeps a session with the leader's dispatcher open, reconnecting as needed.
async fn session_loop(agent: Arc<Agent>) {
    let mut hint: Option<String> = None;
    let mut next = 0usize;
    loop {
        let Some((state, creds)) = agent.current().await else {
            return;
        };
        let addr = match hint.take() {
            Some(a) => a,
            None => {
                if state.managers.is_empty() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                next = next.wrapping_add(1);
                state.managers[next % state.managers.len()].clone()
            }
        };
        let cfg =
            match tls::client_config(&creds.root_ca_pem, Some((&creds.cert_pem, &creds.key_pem))) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("node credentials unusable: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
        let data_path = host_of(&state.advertise_addr);
        if let (Some(n), Ok(ip)) = (&agent.networking, data_path.parse::<std::net::Ipv4Addr>()) {
            n.bring_up(&state.node_id, ip);
        }
        match run_session(&agent, tls::channel(&addr, cfg), data_path).await {
            SessionEnd::Redirect(leader) => {
                tracing::debug!(%addr, %leader, "redirected to the leader");
                hint = Some(leader);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            SessionEnd::Failed(e) => {
                tracing::info!(%addr, "session ended: {e}");
                let ms = rand::rng().random_range(300..800);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}

async fn run_session(
    agent: &Arc<Agent>,
    ch: tonic::transport::Channel,
    data_path_addr: String,
) -> SessionEnd {
    let mut client = DispatcherClient::new(ch.clone());
    let mut stream = match client
        .session(SessionRequest {
            description: Some(agent.description()),
            data_path_addr,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return s.into(),
    };
    let first = match stream.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return SessionEnd::Failed("session stream closed".into()),
        Err(s) => return s.into(),
    };
    let session_id = first.session_id.clone();
    tracing::info!(session = %session_id, "session established");
    agent.on_session_message(&first).await;

    let heartbeat = {
        let mut c = client.clone();
        let sid = session_id.clone();
        async move {
            loop {
                match c
                    .heartbeat(HeartbeatRequest {
                        session_id: sid.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        let ms = r.into_inner().period_ms.max(100) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Err(s) => return SessionEnd::from(s),
                }
            }
        }
    };
    let assignments = {
        let mut c = client.clone();
        let sid = session_id.clone();
        let worker = agent.worker.clone();
        async move {
            let mut s = match c.assignments(AssignmentsRequest { session_id: sid }).await {
                Ok(s) => s.into_inner(),
                Err(s) => return SessionEnd::from(s),
            };
            loop {
                match s.message().await {
                    Ok(Some(m)) => worker.apply(m),
                    Ok(None) => return SessionEnd::Failed("assignments stream closed".into()),
                    Err(st) => return SessionEnd::from(st),
                }
            }
        }
    };
    // The node's network view; an older leader without it leaves the session as it is.
    let network = {
        let c = client.clone();
        let sid = session_id.clone();
        let agent = agent.clone();
        async move {
            match crate::network::stream::follow(c, sid, &agent.network).await {
                StreamEnd::Ended(Some(st)) => SessionEnd::from(st),
                StreamEnd::Ended(None) => SessionEnd::Failed("network state stream closed".into()),
                StreamEnd::Unsupported(why) => {
                    if !agent
                        .network_state_unsupported
                        .swap(true, Ordering::Relaxed)
                    {
                        tracing::warn!(
                            "the leader does not serve network state ({why}); this node's network view stays as it is until a manager that does leads"
                        );
                    } else {
                        tracing::debug!("the leader does not serve network state ({why})");
                    }
                    std::future::pending().await
                }
            }
        }
    };
    let status = {
        let mut c = client.clone();
        let sid = session_id.clone();
        let worker = agent.worker.clone();
        async move {
            loop {
                let updates = worker.take_pending();
                if !updates.is_empty() {
                    let req = UpdateTaskStatusRequest {
                        session_id: sid.clone(),
                        updates: updates.clone(),
                    };
                    if let Err(s) = c.update_task_status(req).await {
                        worker.requeue(updates);
                        return SessionEnd::from(s);
                    }
                }
                tokio::select! {
                    _ = worker.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    };
    // `swarm service logs`: the leader's log subscriptions, on the session's channel and
    // certificate; it never ends by itself and stops with the session.
    let logs = crate::logs::publisher::serve(agent.cfg.data_root.join("tasks"), ch);
    let messages = {
        let agent = agent.clone();
        async move {
            loop {
                match stream.message().await {
                    Ok(Some(m)) => agent.on_session_message(&m).await,
                    Ok(None) => return SessionEnd::Failed("session stream closed".into()),
                    Err(s) => return SessionEnd::from(s),
                }
            }
        }
    };
    tokio::select! {
        e = heartbeat => e,
        e = assignments => e,
        e = network => e,
        e = status => e,
        e = messages => e,
        never = logs => match never {},
    }
}
