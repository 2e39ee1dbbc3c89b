//! One manager: its Raft node, its mTLS listener with every manager service, and the
//! leader-only components, started when this manager becomes leader and aborted when it
//! stops being leader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::{BasicNode, ServerState};
use proto::raft_membership_client::RaftMembershipClient;
use proto::{Cluster, JoinRequest, LeaveRequest, Node};
use tokio::task::JoinSet;

use crate::control::ControlApi;
use crate::dispatcher::Dispatcher;
use crate::logbroker::LogBroker;
use crate::membership::{Membership, RoleManager};
use crate::metrics::METRICS;
use crate::raft::encryption;
use crate::raft::network::{Network, PeerHealth};
use crate::raft::runtime::RaftRuntime;
use crate::raft::Raft;
use crate::router::Router;
use crate::store::{Object, Op, Shared, Store};
use crate::tls::{Connector, ReloadableCert, ReloadableTrust};

/// Encryption at rest and autolock, as the agent hosting a manager needs them: the unlock
/// key, a locked data directory, the node's TLS key sealed under autolock.
pub use crate::raft::encryption::{
    is_locked, is_sealed_pem, open_pem, seal_pem, KeyError, UnlockKey, INVALID_UNLOCK_KEY,
    SWARM_LOCKED,
};

/// PEM material of a node: its certificate and key, and the cluster's root CA.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub root_ca_pem: String,
}

/// The largest request each service decodes (the Raft service's, 64 MiB, is in
/// `raft/config.rs`; its caller is checked before decoding). Anything larger is refused by
/// tonic with `OutOfRange` before a handler runs.
pub mod limits {
    /// CA, NodeCA (a CSR and a join token), membership, health, log subscriptions.
    pub const SMALL: usize = 64 * 1024;
    /// Service specs, node and cluster updates.
    pub const CONTROL: usize = 4 * 1024 * 1024;
    /// Agents' sessions, heartbeats and task status batches (texts are then cut to
    /// `dispatcher::bounds::MAX_STATUS_TEXT`).
    pub const DISPATCHER: usize = 2 * 1024 * 1024;
    /// Agents' batches of log lines.
    pub const LOG_BROKER: usize = 4 * 1024 * 1024;
}

pub struct ManagerConfig {
    /// Directory of the Raft database.
    pub raft_dir: PathBuf,
    pub raft_id: u64,
    pub node_id: String,
    pub listen_addr: SocketAddr,
    /// host:port the other managers and the agents reach this manager at.
    pub advertise_addr: String,
    pub credentials: Credentials,
    /// The unlock key `swarm unlock` gave a locked manager (autolock), else None: the data
    /// key is then wrapped by the `raft.kek` beside it.
    pub unlock_key: Option<UnlockKey>,
    /// The Raft heartbeat and the election timeouts that follow from it (the agent's
    /// `--raft-heartbeat`).
    pub raft_timing: crate::raft::config::RaftTiming,
    /// Entries between Raft snapshots (the agent's `--raft-snapshot-interval`).
    pub raft_snapshot_interval: u64,
}

pub enum Bootstrap {
    /// `swarm init`: a one-manager cluster with these first objects.
    NewCluster {
        cluster: Box<Cluster>,
        node: Box<Node>,
    },
    /// A manager that just got its certificate: ask the cluster (any manager at
    /// `remote`) to add it as a voter.
    Join { remote: String },
    /// Restart with the state on disk.
    Restart,
    /// `swarm init --force-new-cluster`: restart with the state on disk rewritten into a
    /// one-manager cluster of this manager (`raft::storage::force_new_cluster`): same
    /// cluster, objects, CA and tokens; the other managers are out of the Raft membership.
    ForceNewCluster,
}

pub struct Manager {
    pub store: Store,
    pub raft: Raft,
    pub router: Router,
    pub control: ControlApi,
    /// `swarm service logs`: the broker the agent's local socket relays to.
    pub logs: LogBroker,
    membership: Membership,
    raft_id: u64,
    cert: Arc<ReloadableCert>,
    trust: Arc<ReloadableTrust>,
    client_cfg: Arc<RwLock<Arc<rustls::ClientConfig>>>,
    unlock_key: tokio::sync::watch::Receiver<Option<UnlockKey>>,
    tasks: JoinSet<()>,
    /// Dropped last: the thread openraft's tasks run on.
    _raft_rt: RaftRuntime,
}

fn connector(cfg: Arc<RwLock<Arc<rustls::ClientConfig>>>) -> Connector {
    Arc::new(move |addr: &str| {
        let c = cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
        crate::tls::channel(addr, c)
    })
}

/// [`connector`] for Raft's own calls: its connections offer [`crate::tls::ALPN_RAFT`], so
/// that the other manager serves them on its Raft runtime.
fn raft_connector(cfg: Arc<RwLock<Arc<rustls::ClientConfig>>>) -> Connector {
    Arc::new(move |addr: &str| {
        let c = cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
        crate::tls::channel(addr, crate::tls::raft_client_config(&c))
    })
}

/// The settings both of the manager's gRPC servers (every service, and Raft's on the Raft
/// runtime) share: HTTP/2 keepalive every 5 s, 5 s to answer.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

impl Manager {
    pub async fn start(cfg: ManagerConfig, bootstrap: Bootstrap) -> anyhow::Result<Manager> {
        let creds = &cfg.credentials;
        let cert = ReloadableCert::new(&creds.cert_pem, &creds.key_pem)
            .context("loading the manager certificate")?;
        let trust =
            ReloadableTrust::new(&creds.root_ca_pem).context("loading the root CA certificates")?;
        let server_cfg = crate::tls::server_config_with_trust(trust.clone(), cert.clone())
            .context("building the manager TLS configuration")?;
        let client_cfg = Arc::new(RwLock::new(
            crate::tls::client_config(&creds.root_ca_pem, Some((&creds.cert_pem, &creds.key_pem)))
                .context("building the manager's client TLS configuration")?,
        ));
        let connect = connector(client_cfg.clone());

        std::fs::create_dir_all(&cfg.raft_dir)
            .with_context(|| format!("creating {}", cfg.raft_dir.display()))?;
        let dek = encryption::load_or_create(&cfg.raft_dir, cfg.unlock_key.as_ref())?;
        if matches!(bootstrap, Bootstrap::ForceNewCluster) {
            crate::raft::storage::force_new_cluster(
                &cfg.raft_dir,
                cfg.raft_id,
                &cfg.advertise_addr,
                &dek,
            )
            .context("starting a new cluster from this manager's Raft state")?;
        }
        let shared = Arc::new(Shared::default());
        let (log_store, state_machine) =
            crate::raft::storage::open(&cfg.raft_dir, shared.clone(), dek.clone())
                .with_context(|| format!("opening the raft store in {}", cfg.raft_dir.display()))?;
        let log_bytes = log_store.log_bytes();
        let health = PeerHealth::default();
        let network = Network::new(raft_connector(client_cfg.clone()), health.clone());
        // Raft's own thread (`raft/runtime.rs`): its heartbeats must not wait behind the
        // agents' streams on the main runtime.
        let raft_rt = RaftRuntime::start().context("starting the raft thread")?;
        let raft_id = cfg.raft_id;
        let timing = cfg.raft_timing;
        crate::metrics::METRICS
            .raft_heartbeat_seconds
            .set(timing.heartbeat().as_secs_f64());
        tracing::info!(
            "Raft heartbeat {:?}, elections after {:?} to {:?} without one: a failover takes up to {:?}; the round trip between managers must stay below the heartbeat",
            timing.heartbeat(),
            timing.election_timeout_min(),
            timing.election_timeout_max(),
            timing.worst_failover()
        );
        let raft = raft_rt
            .run(async move {
                Raft::new(
                    raft_id,
                    crate::raft::config::raft_config_for(timing, cfg.raft_snapshot_interval),
                    network,
                    log_store,
                    state_machine,
                )
                .await
            })
            .await
            .context("starting raft")?;
        let store = Store::new(shared, Arc::new(raft.clone()));
        let router = Router::raft(raft.clone(), cfg.raft_id, connect.clone());
        let control = ControlApi::new(store.clone(), router.clone());
        let dispatcher = Dispatcher::new(store.clone(), router.clone());
        let membership = Membership::new(raft.clone(), store.clone(), router.clone());
        let ca = crate::ca_service::CaService::new(store.clone(), router.clone());
        let logs = LogBroker::new(store.clone(), router.clone());

        let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
            .await
            .with_context(|| {
                format!(
                    "listening on {} (is another swarm-agent using this port? choose another with --listen-addr)",
                    cfg.listen_addr
                )
            })?;
        let split = crate::tls::incoming_split(listener, server_cfg.clone());
        let incoming = split.main;
        let mut tasks = JoinSet::new();
        {
            // Raft's calls from other managers, on the Raft runtime (`tls::incoming_split`):
            // a stalled main runtime must not keep the leader's heartbeats from this
            // manager's Raft core. Stops with the runtime, when the manager is dropped.
            let raft_svc = crate::raft::service::RaftService::new(raft.clone(), store.clone());
            let raft_sockets = split.raft;
            raft_rt.spawn(async move {
                let incoming = crate::tls::handshakes(raft_sockets, server_cfg);
                let server = grpc_server().add_service(raft_svc.into_server());
                if let Err(e) = server.serve_with_incoming(incoming).await {
                    tracing::error!("the manager's Raft gRPC server stopped: {e}");
                }
            });
        }
        {
            // Every service, Raft's too: managers of an earlier version do not mark their
            // Raft connections, and are served here.
            let raft_svc = crate::raft::service::RaftService::new(raft.clone(), store.clone());
            let server = grpc_server()
                .add_service(raft_svc.into_server())
                .add_service(
                    proto::raft_membership_server::RaftMembershipServer::new(membership.clone())
                        .max_decoding_message_size(limits::SMALL),
                )
                .add_service(
                    proto::control_server::ControlServer::new(control.clone())
                        .max_decoding_message_size(limits::CONTROL),
                )
                .add_service(
                    proto::dispatcher_server::DispatcherServer::new(dispatcher.clone())
                        .max_decoding_message_size(limits::DISPATCHER),
                )
                .add_service(
                    proto::ca_server::CaServer::new(ca.clone())
                        .max_decoding_message_size(limits::SMALL),
                )
                .add_service(
                    proto::node_ca_server::NodeCaServer::new(ca)
                        .max_decoding_message_size(limits::SMALL),
                )
                .add_service(
                    proto::logs_server::LogsServer::new(logs.clone())
                        .max_decoding_message_size(limits::SMALL),
                )
                .add_service(
                    proto::log_broker_server::LogBrokerServer::new(logs.clone())
                        .max_decoding_message_size(limits::LOG_BROKER),
                )
                .add_service(
                    proto::health_server::HealthServer::new(HealthService {
                        router: router.clone(),
                    })
                    .max_decoding_message_size(limits::SMALL),
                );
            tasks.spawn(async move {
                if let Err(e) = server.serve_with_incoming(incoming).await {
                    tracing::error!("manager gRPC server stopped: {e}");
                }
            });
        }

        match bootstrap {
            Bootstrap::NewCluster { cluster, node } => {
                let mut members = BTreeMap::new();
                members.insert(
                    cfg.raft_id,
                    BasicNode {
                        addr: cfg.advertise_addr.clone(),
                    },
                );
                raft.initialize(members)
                    .await
                    .context("initializing the raft cluster")?;
                raft.wait(Some(Duration::from_secs(10)))
                    .state(ServerState::Leader, "this manager leads the new cluster")
                    .await
                    .context("waiting to become leader of the new cluster")?;
                store
                    .write(vec![
                        Op::Create(Object::Cluster(*cluster)),
                        Op::Create(Object::Node(*node)),
                        // Docker's `ingress` overlay (routing mesh); the allocator gives it
                        // the first subnet of the address pool.
                        Op::Create(Object::Network(crate::ipam::ingress_network())),
                    ])
                    .await
                    .context("writing the first cluster objects")?;
            }
            Bootstrap::Join { remote } => {
                let ch = connect(&remote);
                let mut last_err = None;
                for _ in 0..20 {
                    let req = JoinRequest {
                        addr: cfg.advertise_addr.clone(),
                        raft_id: cfg.raft_id,
                    };
                    match RaftMembershipClient::new(ch.clone()).join(req).await {
                        Ok(_) => {
                            last_err = None;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(
                                "joining the raft cluster through {remote}: {}",
                                e.message()
                            );
                            last_err = Some(e);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                if let Some(e) = last_err {
                    bail!(
                        "could not join the raft cluster through {remote}: {}",
                        e.message()
                    );
                }
            }
            Bootstrap::Restart => {}
            Bootstrap::ForceNewCluster => {
                raft.wait(Some(Duration::from_secs(10)))
                    .state(ServerState::Leader, "this manager leads the forced cluster")
                    .await
                    .context("waiting to become leader of the forced cluster")?;
                // This manager's object says where it is now; the other managers' objects
                // stay (Docker lists them Down and Unreachable until they are demoted or
                // removed).
                let addr = cfg.advertise_addr.clone();
                let raft_id = cfg.raft_id;
                store
                    .update_node(&cfg.node_id, |n| {
                        n.manager_status = Some(proto::ManagerStatus {
                            raft_id,
                            addr: addr.clone(),
                            leader: true,
                            reachability: proto::Reachability::Reachable as i32,
                        });
                    })
                    .await
                    .context("recording this manager in the forced cluster")?;
            }
        }

        tasks.spawn(leadership_loop(
            raft.clone(),
            cfg.raft_id,
            store.clone(),
            dispatcher,
            membership.clone(),
            health,
        ));
        tasks.spawn(raft_metrics_loop(raft.clone()));
        let (unlock_tx, unlock_key) = tokio::sync::watch::channel(cfg.unlock_key.clone());
        tasks.spawn(crate::raft::deks::follow_unlock_key(
            store.clone(),
            cfg.raft_dir.clone(),
            dek,
            unlock_tx,
        ));
        // How late each runtime runs a tick (`stall.rs`): a stalled runtime is seen, and
        // which one.
        tasks.spawn(crate::stall::watch("main"));
        raft_rt.spawn(crate::stall::watch("raft"));
        tasks.spawn(crate::raft::snapshot::snapshot_by_size(
            raft.clone(),
            log_bytes,
            crate::raft::config::SNAPSHOT_EVERY_BYTES,
        ));

        Ok(Manager {
            store,
            raft,
            router,
            control,
            logs,
            membership,
            raft_id: cfg.raft_id,
            cert,
            trust,
            client_cfg,
            unlock_key,
            tasks,
            _raft_rt: raft_rt,
        })
    }

    /// The unlock key this manager's data key is wrapped by now (None: autolock off); it
    /// changes once the cluster's autolock setting or unlock key does.
    pub fn unlock_key(&self) -> tokio::sync::watch::Receiver<Option<UnlockKey>> {
        self.unlock_key.clone()
    }

    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.router.route(), crate::router::Route::Local)
    }

    /// Resolves when this manager's Raft core stopped on its own (a storage failure), with
    /// the reason; `None` once it was shut down normally. The manager then serves nothing
    /// (its router refuses every call, Health says NOT_SERVING, agent sessions end); the
    /// process hosting it should exit so that a supervisor restarts it from its data root.
    pub fn failure(&self) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let raft = self.raft.clone();
        async move { crate::raft::core_failure(&raft).await }
    }

    /// Swaps in renewed credentials (and the roots they come with: a root rotation) without
    /// restarting the listener.
    pub fn update_credentials(&self, creds: &Credentials) -> anyhow::Result<()> {
        self.cert.update(&creds.cert_pem, &creds.key_pem)?;
        self.trust.update(&creds.root_ca_pem)?;
        let cfg =
            crate::tls::client_config(&creds.root_ca_pem, Some((&creds.cert_pem, &creds.key_pem)))?;
        *self.client_cfg.write().unwrap_or_else(|e| e.into_inner()) = cfg;
        Ok(())
    }

    /// Asks the leader to remove this manager from the raft membership (directly when this
    /// manager leads).
    pub async fn leave_raft(&self) -> anyhow::Result<()> {
        let result = match self.router.leader_addr() {
            Some(addr) => RaftMembershipClient::new(connector(self.client_cfg.clone())(&addr))
                .leave(LeaveRequest {
                    node_id: String::new(),
                })
                .await
                .map(|_| ()),
            None => self.membership.remove_voter(self.raft_id).await,
        };
        result.map_err(|s| anyhow::anyhow!("{}", s.message()))
    }

    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

/// Starts the leader-only components when this manager becomes leader and aborts them
/// when it stops being leader.
async fn leadership_loop(
    raft: Raft,
    raft_id: u64,
    store: Store,
    dispatcher: Dispatcher,
    membership: Membership,
    health: PeerHealth,
) {
    let mut metrics = raft.metrics();
    let mut running: Option<JoinSet<()>> = None;
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            m.state == ServerState::Leader && m.current_leader == Some(raft_id)
        };
        match (leading, running.is_some()) {
            (true, false) => {
                tracing::info!("became leader: starting allocator, orchestrators, scheduler, dispatcher monitor, reaper");
                let mut set = JoinSet::new();
                spawn_leader_components(
                    &mut set,
                    &store,
                    &dispatcher,
                    &membership,
                    &health,
                    raft_id,
                );
                running = Some(set);
            }
            (false, true) => {
                tracing::info!("lost leadership: stopping leader-only components");
                if let Some(mut set) = running.take() {
                    set.abort_all();
                }
            }
            _ => {}
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn spawn_leader_components(
    set: &mut JoinSet<()>,
    store: &Store,
    dispatcher: &Dispatcher,
    membership: &Membership,
    health: &PeerHealth,
    raft_id: u64,
) {
    set.spawn(crate::allocator::Allocator::new(store.clone()).run());
    set.spawn(crate::orchestrator::replicated::ReplicatedOrchestrator::new(store.clone()).run());
    set.spawn(crate::orchestrator::global::GlobalOrchestrator::new(store.clone()).run());
    set.spawn(crate::orchestrator::update::UpdateOrchestrator::new(store.clone()).run());
    set.spawn(crate::orchestrator::jobs::JobOrchestrator::new(store.clone()).run());
    set.spawn(crate::orchestrator::restart::RestartSupervisor::new(store.clone()).run());
    set.spawn(crate::scheduler::Scheduler::new(store.clone()).run());
    set.spawn(crate::orchestrator::taskreaper::TaskReaper::new(store.clone()).run());
    set.spawn(crate::ca_reconciler::CaReconciler::new(store.clone()).run());
    set.spawn(dispatcher.clone().run_monitor());
    set.spawn(RoleManager::new(membership.clone(), health.clone(), raft_id).run());
    set.spawn(object_gauges_loop(store.clone()));
}

/// Raft gauges on every manager.
async fn raft_metrics_loop(raft: Raft) {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            METRICS.raft_term.set(m.current_term as i64);
            METRICS
                .raft_is_leader
                .set(i64::from(m.state == ServerState::Leader));
            METRICS
                .raft_leader_id
                .set(m.current_leader.unwrap_or(0) as i64);
            if let Some(c) = m.last_applied {
                METRICS.raft_applied_index.set(c.index as i64);
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Tasks by state and nodes by status/availability, refreshed on the leader.
async fn object_gauges_loop(store: Store) {
    use crate::metrics::{NodeLabels, StateLabel};
    loop {
        {
            let st = store.read();
            let mut tasks: BTreeMap<&'static str, i64> = BTreeMap::new();
            for t in st.tasks() {
                *tasks.entry(t.state().display_name()).or_default() += 1;
            }
            METRICS.tasks.clear();
            for (state, n) in tasks {
                METRICS
                    .tasks
                    .get_or_create(&StateLabel {
                        state: state.to_string(),
                    })
                    .set(n);
            }
            let mut nodes: BTreeMap<(String, String), i64> = BTreeMap::new();
            for n in st.nodes() {
                let key = (
                    n.state()
                        .as_str_name()
                        .trim_start_matches("NODE_STATE_")
                        .to_lowercase(),
                    n.availability()
                        .as_str_name()
                        .trim_start_matches("NODE_AVAILABILITY_")
                        .to_lowercase(),
                );
                *nodes.entry(key).or_default() += 1;
            }
            METRICS.nodes.clear();
            for ((status, availability), n) in nodes {
                METRICS
                    .nodes
                    .get_or_create(&NodeLabels {
                        status,
                        availability,
                    })
                    .set(n);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `Health.Check`: SERVING while this manager's Raft core runs, NOT_SERVING once it stopped
/// (a storage failure): such a manager leads nothing and serves nothing.
#[derive(Clone)]
pub struct HealthService {
    router: Router,
}

#[tonic::async_trait]
impl proto::health_server::Health for HealthService {
    async fn check(
        &self,
        _req: tonic::Request<proto::HealthCheckRequest>,
    ) -> Result<tonic::Response<proto::HealthCheckResponse>, tonic::Status> {
        use proto::health_check_response::ServingStatus;
        let status = match self.router.stopped() {
            Some(_) => ServingStatus::NotServing,
            None => ServingStatus::Serving,
        };
        Ok(tonic::Response::new(proto::HealthCheckResponse {
            status: status as i32,
        }))
    }
}
