//! The dispatcher: agents' sessions with the leader. It marks nodes READY when their session
//! opens and DOWN after three missed heartbeat periods, streams each node its task
//! assignments (complete, then incremental) and the state of the networks it has tasks on
//! ([`crate::netstate`]), and records the task status agents report.
//!
//! What agents write is bounded ([`bounds`]: sizes; [`writes`]: a write rate per node with
//! task status reports coalesced, and reports that change nothing never reach Raft).
//!
//! Only the leader serves sessions. A follower answers `Unavailable` with the leader's
//! address in the `x-swarm-leader` metadata key so that the agent reconnects there.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use proto::dispatcher_server::Dispatcher as DispatcherRpc;
use proto::{
    assignment_change, assignments_message, network_state_message, AssignmentChange,
    AssignmentsMessage, AssignmentsRequest, HeartbeatRequest, HeartbeatResponse,
    NetworkStateMessage, Node, NodeState, NodeStatus, SessionMessage, SessionRequest, Task,
    TaskState, UpdateTaskStatusRequest, UpdateTaskStatusResponse, WeightedPeer,
};
use rand::Rng;
use swarm_common::id::new_id;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::{leader_only, member_role, node_of, propose_status};
use crate::netstate::{self, NodeNetworkView};
use crate::router::{Route, Router};
use crate::store::{Op, ProposeError, Request as StoreRequest, Store};

pub mod bounds;
pub mod caught_up;
pub mod unjoined;
pub mod writes;

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a node's stream lets the store move after a change before it recomputes what
/// the node is told: the changes of that window go in one message, so a burst of applied
/// entries costs each node one round instead of one per entry (SwarmKit's dispatcher batches
/// its assignments for 100 ms too).
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// A node is DOWN after this many heartbeat periods without a heartbeat.
pub const MISSED_HEARTBEATS: u32 = 3;
/// A new leader gives the nodes it has not heard from yet this many times the grace
/// (SwarmKit doubles it too): every agent reconnects to it at once, and at 5 000 nodes on
/// 2 cores half of them had not opened their session 15 s after an election.
pub const ELECTION_GRACE_FACTOR: u32 = 2;

struct Session {
    id: String,
    expires: Instant,
    /// The data-path address the session was opened with: what a heartbeat writes back when
    /// it brings a node marked DOWN back to READY. The node object's own address may be
    /// empty or stale there (a DOWN written from an older read of the node).
    addr: String,
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    router: Router,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    writes: writes::Writes,
    join_grace: Duration,
    /// The network views' shared pieces (`netstate::Pieces`), one cache for every stream.
    pieces: Arc<netstate::Pieces>,
    /// One stream round at a time builds what it sends (see [`Dispatcher::build_permit`]).
    builds: Arc<tokio::sync::Semaphore>,
    /// The leader term this manager's state is known current for ([`caught_up`]).
    caught_up: Arc<caught_up::CaughtUp>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Dispatcher {
    pub fn new(store: Store, router: Router) -> Self {
        Dispatcher {
            store,
            router,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            writes: writes::Writes::default(),
            join_grace: unjoined::JOIN_GRACE,
            pieces: Arc::default(),
            builds: Arc::new(tokio::sync::Semaphore::new(1)),
            caught_up: Arc::default(),
        }
    }

    /// Refuses the call unless this manager is the leader and its state holds everything
    /// committed before its term began ([`caught_up`]): what an agent is told, and what its
    /// reports are checked against, must not come from a state older than the agent's.
    async fn leader_current(&self) -> Result<(), Status> {
        leader_only(&self.router)?;
        let term = self
            .router
            .leader_term()
            .ok_or_else(crate::router::no_leader)?;
        self.caught_up
            .ensure(term, || self.store.linearize())
            .await
            .map_err(propose_status)
    }

    /// Waits for the turn to build a stream round's message (a node's network view and its
    /// diff, its assignments). The rounds are CPU work that never waits; after a leader change
    /// a thousand nodes' streams all start with a COMPLETE view, and run at once on the
    /// runtime's workers they queued the heartbeats behind them for longer than the grace
    /// period, so that nodes were marked DOWN and their tasks replaced. Taking turns leaves
    /// the other workers to heartbeats, sessions and the API; the permits are handed out in
    /// order, so no stream waits for ever.
    async fn build_permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.builds.acquire().await.ok()
    }

    fn period(&self) -> Duration {
        heartbeat_period(&self.store)
    }

    fn check_session(&self, node_id: &str, session_id: &str) -> Result<(), Status> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(node_id) {
            Some(s) if s.id == session_id => Ok(()),
            _ => Err(Status::not_found(
                "session invalid: open a new session with the dispatcher",
            )),
        }
    }

    /// Waits until the store moved (then [`BATCH_WINDOW`] more, so that a burst of changes
    /// is one round): true for a stream's next round; false when the stream must end: its
    /// receiver is gone, or this manager stopped leading or the session died (then the
    /// agent is told to reconnect), which is checked every second meanwhile. Nothing is
    /// recomputed while the store stands still.
    async fn next_round<T>(
        &self,
        watch: &mut tokio::sync::watch::Receiver<u64>,
        tx: &mpsc::Sender<Result<T, Status>>,
        node_id: &str,
        session_id: &str,
    ) -> bool {
        loop {
            match self.wait_round(watch, tx, node_id, session_id).await {
                Some(true) => return true,
                Some(false) => continue,
                None => return false,
            }
        }
    }

    /// One wait of [`next_round`](Self::next_round): Some(true) when the store moved,
    /// Some(false) after a second without a change, None when the stream must end.
    async fn wait_round<T>(
        &self,
        watch: &mut tokio::sync::watch::Receiver<u64>,
        tx: &mpsc::Sender<Result<T, Status>>,
        node_id: &str,
        session_id: &str,
    ) -> Option<bool> {
        let moved = tokio::select! {
            r = watch.changed() => {
                if r.is_err() || !batch(watch, tx).await {
                    return None;
                }
                true
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = tx.closed() => return None,
        };
        let standing = member_role(&self.store.read(), node_id);
        if let Err(denied) = standing {
            self.end_session(node_id, session_id);
            let _ = tx.send(Err(denied)).await;
            return None;
        }
        if !matches!(self.router.route(), Route::Local) || !self.session_alive(node_id, session_id)
        {
            let _ = tx
                .send(Err(Status::unavailable("session ended; reconnect")))
                .await;
            return None;
        }
        Some(moved)
    }

    /// Forgets the session (its node was removed): its heartbeats and other streams fail.
    fn end_session(&self, node_id: &str, session_id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(node_id).is_some_and(|s| s.id == session_id) {
            sessions.remove(node_id);
        }
    }

    fn session_alive(&self, node_id: &str, session_id: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(node_id)
            .is_some_and(|s| s.id == session_id && s.expires > Instant::now())
    }

    /// Marks the node READY with the description the agent sent. Written only when that
    /// changes the node, and at the node's write rate ([`writes`]).
    async fn mark_ready(
        &self,
        node_id: &str,
        desc: Option<proto::NodeDescription>,
        addr: String,
    ) -> Result<Node, Status> {
        let ready = NodeStatus {
            state: NodeState::Ready as i32,
            message: String::new(),
            addr: addr.clone(),
        };
        if let Some(n) = self.store.read().node(node_id) {
            let same_desc = desc.is_none() || n.description == desc;
            if same_desc && n.status.as_ref() == Some(&ready) {
                return Ok(n.clone());
            }
        }
        self.writes.of(node_id).token().await;
        self.store
            .update_node(node_id, |n| {
                if let Some(mut d) = desc.clone() {
                    // The CA records the node's TLS information when it issues a certificate;
                    // what an agent sends there is not its to say.
                    d.tls_info = n.description.as_mut().and_then(|old| old.tls_info.take());
                    n.description = Some(d);
                }
                n.status = Some(NodeStatus {
                    state: NodeState::Ready as i32,
                    message: String::new(),
                    addr: addr.clone(),
                });
            })
            .await
            .map_err(|e| match e {
                ProposeError::Store(crate::store::StoreError::NotFound { .. }) => {
                    Status::permission_denied(format!(
                        "node {node_id} is not a member of the swarm (it was removed); join again"
                    ))
                }
                e => propose_status(e),
            })
    }

    /// Keeps the node's published ports shadowed by its own processes as its agent reports
    /// them; written only when they change.
    async fn store_port_conflicts(
        &self,
        node_id: &str,
        mut conflicts: Vec<proto::PortConflict>,
    ) -> Result<(), Status> {
        conflicts.sort_by_key(|c| (c.port, c.protocol));
        let conflicts = bounds::bound_port_conflicts(conflicts);
        let same = self
            .store
            .read()
            .node(node_id)
            .is_none_or(|n| n.port_conflicts == conflicts);
        // Without a token now, the next heartbeat (which carries them again) writes them.
        if same || !self.writes.of(node_id).try_token() {
            return Ok(());
        }
        self.store
            .update_node(node_id, |n| n.port_conflicts = conflicts.clone())
            .await
            .map(|_| ())
            .map_err(propose_status)
    }

    /// Leader-only loop: nodes whose session expired (or that never opened one within the
    /// grace after this leader took over) become DOWN.
    pub async fn run_monitor(self) {
        let started = Instant::now();
        loop {
            let period = self.period();
            tokio::time::sleep(period / 2).await;
            let grace = period * MISSED_HEARTBEATS;
            let now = Instant::now();
            {
                let st = self.store.read();
                self.writes.retain(|id| st.node(id).is_some());
            }
            let ops = {
                let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                let open_grace = now.duration_since(started) >= grace * ELECTION_GRACE_FACTOR;
                mark_down(&self.store.read(), &sessions, now, open_grace)
            };
            self.remove_never_joined().await;
            if ops.is_empty() {
                continue;
            }
            tracing::info!(
                nodes = ops.len(),
                "nodes missed their heartbeats: marking them down"
            );
            if let Err(e) = self.store.propose(StoreRequest::best_effort(ops)).await {
                tracing::warn!("marking nodes down: {e}");
            }
        }
    }
}

impl Dispatcher {
    /// Waits for a store change or a second, then checks that the session may go on (this
    /// manager leads, the node is a member, the session is alive); tells the node why not and
    /// returns false when it may not.
    async fn wait_session_round(
        &self,
        watch: &mut tokio::sync::watch::Receiver<u64>,
        tx: &mpsc::Sender<Result<SessionMessage, Status>>,
        node_id: &str,
        session_id: &str,
    ) -> bool {
        tokio::select! {
            r = watch.changed() => if r.is_err() { return false },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => return false,
        }
        if !matches!(self.router.route(), Route::Local) {
            let _ = tx
                .send(Err(Status::unavailable("leadership changed; reconnect")))
                .await;
            return false;
        }
        // Removed (its other streams may have ended the session already): say so.
        let standing = member_role(&self.store.read(), node_id);
        if let Err(denied) = standing {
            self.end_session(node_id, session_id);
            let _ = tx.send(Err(denied)).await;
            return false;
        }
        if !self.session_alive(node_id, session_id) {
            let _ = tx
                .send(Err(Status::not_found(
                    "session expired; open a new session",
                )))
                .await;
            return false;
        }
        true
    }

    /// How long a node may stay without a first session before the leader removes it
    /// (default [`unjoined::JOIN_GRACE`]).
    pub fn with_join_grace(mut self, grace: Duration) -> Self {
        self.join_grace = grace;
        self
    }

    /// Removes the nodes that got a certificate but never opened a session within the grace
    /// period ([`unjoined`]).
    async fn remove_never_joined(&self) {
        let ops = unjoined::remove_never_joined(
            &self.store.read(),
            swarm_common::clock::now_ms(),
            self.join_grace,
        );
        if ops.is_empty() {
            return;
        }
        let nodes: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Delete { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        tracing::info!(
            ?nodes,
            grace = ?self.join_grace,
            "removing nodes that joined but never opened a session"
        );
        if let Err(e) = self.store.propose(StoreRequest::best_effort(ops)).await {
            tracing::warn!("removing nodes that never opened a session: {e}");
        }
    }
}

/// After the store moved: lets it move for [`BATCH_WINDOW`] more, then marks all of it
/// seen, so that the round that follows reads the whole burst and no round comes after it
/// for the same changes. False when the stream's receiver went away meanwhile.
async fn batch<T>(
    watch: &mut tokio::sync::watch::Receiver<u64>,
    tx: &mpsc::Sender<Result<T, Status>>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(BATCH_WINDOW) => {}
        _ = tx.closed() => return false,
    }
    watch.borrow_and_update();
    true
}

/// The heartbeat period configured in the cluster object (default 5 s).
pub fn heartbeat_period(store: &Store) -> Duration {
    let ms = store
        .read()
        .cluster()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.dispatcher.as_ref())
        .map_or(0, |d| d.heartbeat_period_ms);
    if ms > 0 {
        Duration::from_millis(ms as u64)
    } else {
        DEFAULT_HEARTBEAT
    }
}

/// The address recorded as the node's `status.addr`: the data-path address it reports when
/// that is a specific IP address (on loopback test clusters and behind NAT the address a
/// session comes from is not where other nodes reach it), else the address its session
/// comes from.
fn data_path_addr(reported: &str, seen: Option<std::net::IpAddr>) -> String {
    match reported.trim().parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => seen.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

/// The writes that mark DOWN every node whose session expired or that has none, once
/// `open_grace` (the time a node has to open one under a new leader) is over. Each is checked
/// against the node's version read here: a node that became READY while the write was on its
/// way keeps its status, and its tasks.
fn mark_down(
    st: &crate::store::State,
    sessions: &HashMap<String, Session>,
    now: Instant,
    open_grace: bool,
) -> Vec<Op> {
    st.nodes()
        .filter(|n| n.state() != NodeState::Down)
        // Before the grace is over no node is late, whatever its session says: sessions
        // left from an earlier term of this manager as leader have expired meanwhile, and
        // their nodes are reconnecting to it now.
        .filter(|n| open_grace && sessions.get(&n.id).is_none_or(|s| s.expires <= now))
        .map(|n| {
            let mut down = n.clone();
            let addr = n.status.as_ref().map(|s| s.addr.clone());
            down.status = Some(NodeStatus {
                state: NodeState::Down as i32,
                message: "heartbeat failure".into(),
                addr: addr.unwrap_or_default(),
            });
            Op::Update {
                object: down.into(),
                check_version: true,
            }
        })
        .collect()
}

fn managers(store: &Store) -> Vec<WeightedPeer> {
    store
        .read()
        .nodes()
        .filter_map(|n| {
            let ms = n.manager_status.as_ref()?;
            (!ms.addr.is_empty()).then(|| WeightedPeer {
                node_id: n.id.clone(),
                addr: ms.addr.clone(),
            })
        })
        .collect()
}

/// Tasks the node is told about: assigned to it and past scheduling.
fn node_tasks(store: &Store, node_id: &str) -> HashMap<String, Task> {
    store
        .read()
        .tasks_on_node(node_id)
        .filter(|t| t.state() >= TaskState::Assigned)
        .map(|t| (t.id.clone(), t.clone()))
        .collect()
}

/// Whether a task still needs its secrets and configs on the node: meant to run and not
/// ended (SwarmKit releases them once a task stops).
fn needs_dependencies(t: &Task) -> bool {
    t.desired() <= TaskState::Running && t.state() <= TaskState::Running
}

/// The secrets and configs one node's assignment stream has handed out: id -> version.
#[derive(Default)]
struct SentDependencies {
    secrets: HashMap<String, u64>,
    configs: HashMap<String, u64>,
}

impl SentDependencies {
    /// The changes that bring the node to what `tasks` need: UPDATEs (with the data) of the
    /// secrets and configs it lacks, and the REMOVEs of those no task of it needs any more.
    fn changes<'a>(
        &mut self,
        store: &Store,
        tasks: impl Iterator<Item = &'a Task>,
    ) -> (Vec<AssignmentChange>, Vec<AssignmentChange>) {
        let mut secrets: HashMap<String, proto::Secret> = HashMap::new();
        let mut configs: HashMap<String, proto::Config> = HashMap::new();
        {
            let st = store.read();
            for c in tasks
                .filter(|t| needs_dependencies(t))
                .filter_map(|t| t.spec.as_ref().and_then(|s| s.container.as_ref()))
            {
                for r in &c.secrets {
                    if let Some(s) = st.secret(&r.secret_id) {
                        secrets.insert(s.id.clone(), s.clone());
                    }
                }
                for r in &c.configs {
                    if let Some(o) = st.config(&r.config_id) {
                        configs.insert(o.id.clone(), o.clone());
                    }
                }
            }
        }
        let update = assignment_change::Action::Update as i32;
        let remove = assignment_change::Action::Remove as i32;
        let mut add = Vec::new();
        let mut forget = Vec::new();
        for (id, s) in secrets.iter() {
            let v = s.meta.as_ref().map_or(0, |m| m.version);
            if self.secrets.insert(id.clone(), v) != Some(v) {
                add.push(AssignmentChange {
                    action: update,
                    secret: Some(s.clone()),
                    ..Default::default()
                });
            }
        }
        for (id, c) in configs.iter() {
            let v = c.meta.as_ref().map_or(0, |m| m.version);
            if self.configs.insert(id.clone(), v) != Some(v) {
                add.push(AssignmentChange {
                    action: update,
                    config: Some(c.clone()),
                    ..Default::default()
                });
            }
        }
        self.secrets.retain(|id, _| {
            let keep = secrets.contains_key(id);
            if !keep {
                forget.push(AssignmentChange {
                    action: remove,
                    secret: Some(proto::Secret {
                        id: id.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            keep
        });
        self.configs.retain(|id, _| {
            let keep = configs.contains_key(id);
            if !keep {
                forget.push(AssignmentChange {
                    action: remove,
                    config: Some(proto::Config {
                        id: id.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            keep
        });
        (add, forget)
    }
}

#[tonic::async_trait]
impl DispatcherRpc for Dispatcher {
    type SessionStream = BoxStream<SessionMessage>;
    type AssignmentsStream = BoxStream<AssignmentsMessage>;
    type NetworkStateStream = BoxStream<NetworkStateMessage>;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.leader_current().await?;
        let node_id = node_of(&req, &self.store.read())?;
        let seen = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        let addr = data_path_addr(&r.data_path_addr, seen);
        let desc = r.description;
        if let Some(d) = &desc {
            bounds::check_description(&node_id, d).map_err(Status::invalid_argument)?;
        }
        let session_id = new_id();
        let period = self.period();
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                node_id.clone(),
                Session {
                    id: session_id.clone(),
                    expires: Instant::now() + period * MISSED_HEARTBEATS,
                    addr: addr.clone(),
                },
            );
        let node = self.mark_ready(&node_id, desc, addr).await?;
        tracing::info!(node = %node_id, "session opened");

        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        let root_ca = |s: &Store| {
            s.read()
                .cluster()
                .and_then(|c| c.root_ca.as_ref())
                .map(crate::ca::trust_bundle)
                .unwrap_or_default()
        };
        tokio::spawn(async move {
            let mut watch = this.store.watch();
            let mut last: Option<SessionMessage> = None;
            let mut node = Some(node);
            // What the last message was built from: the nodes' version (the node itself and
            // the managers) and the cluster's (the root CA). A store change that moved
            // neither (task reports, most writes) builds nothing: with a thousand sessions,
            // listing the managers from every node on every change was quadratic.
            let mut built_from = None;
            loop {
                let sources = {
                    let st = this.store.read();
                    let cluster = st
                        .cluster()
                        .and_then(|c| c.meta.as_ref())
                        .map(|m| m.version);
                    (st.nodes_version(), cluster)
                };
                if node.is_none() && built_from == Some(sources) {
                    if !this
                        .wait_session_round(&mut watch, &tx, &node_id, &session_id)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                built_from = Some(sources);
                let current = match node.take() {
                    Some(n) => Ok(n),
                    None => {
                        let st = this.store.read();
                        member_role(&st, &node_id).and_then(|_| {
                            st.node(&node_id).cloned().ok_or_else(|| {
                                Status::permission_denied(format!(
                                    "node {node_id} was removed from the swarm"
                                ))
                            })
                        })
                    }
                };
                let current = match current {
                    Ok(n) => n,
                    Err(denied) => {
                        this.end_session(&node_id, &session_id);
                        let _ = tx.send(Err(denied)).await;
                        return;
                    }
                };
                let msg = SessionMessage {
                    session_id: session_id.clone(),
                    node: Some(current),
                    managers: managers(&this.store),
                    root_ca: root_ca(&this.store),
                };
                let changed = last.as_ref().is_none_or(|l| {
                    l.managers != msg.managers
                        || l.root_ca != msg.root_ca
                        || l.node.as_ref().map(|n| (&n.spec, n.role))
                            != msg.node.as_ref().map(|n| (&n.spec, n.role))
                });
                if changed {
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    last = Some(msg);
                }
                if !this
                    .wait_session_round(&mut watch, &tx, &node_id, &session_id)
                    .await
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        leader_only(&self.router)?;
        let node_id = node_of(&req, &self.store.read())?;
        let HeartbeatRequest {
            session_id,
            port_conflicts,
        } = req.into_inner();
        let period = self.period();
        let addr = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            match sessions.get_mut(&node_id) {
                Some(s) if s.id == session_id => {
                    s.expires = Instant::now() + period * MISSED_HEARTBEATS;
                    s.addr.clone()
                }
                _ => {
                    return Err(Status::not_found(
                        "session invalid: open a new session with the dispatcher",
                    ))
                }
            }
        };
        // The node may have been marked down while the leader changed: bring it back.
        let down = self
            .store
            .read()
            .node(&node_id)
            .is_some_and(|n| n.state() != NodeState::Ready);
        if down {
            self.mark_ready(&node_id, None, addr).await?;
        }
        self.store_port_conflicts(&node_id, port_conflicts).await?;
        // ±10 % jitter so that heartbeats of many nodes spread out.
        let jitter = rand::rng().random_range(0.9..1.1);
        Ok(Response::new(HeartbeatResponse {
            period_ms: (period.as_millis() as f64 * jitter) as i64,
        }))
    }

    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.leader_current().await?;
        let node_id = node_of(&req, &self.store.read())?;
        let session_id = req.into_inner().session_id;
        self.check_session(&node_id, &session_id)?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut watch = this.store.watch();
            // What the node was last told: task id -> (desired state, spec version).
            let mut sent: HashMap<String, (i32, u64)> = HashMap::new();
            // The secrets and configs it holds: id -> version.
            let mut deps = SentDependencies::default();
            let mut first = true;
            // What the last round was built from: the node's tasks and the secrets and
            // configs. A round where neither moved has nothing to send.
            let mut built_from = None;
            loop {
                let sources = {
                    let st = this.store.read();
                    (st.node_tasks_version(&node_id), st.dependencies_version())
                };
                if built_from == Some(sources) {
                    if !this
                        .next_round(&mut watch, &tx, &node_id, &session_id)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                built_from = Some(sources);
                let Some(permit) = this.build_permit().await else {
                    return;
                };
                let tasks = node_tasks(&this.store, &node_id);
                // What the node's tasks need goes first, so that a task never arrives before
                // its secrets; what they no longer need is forgotten last.
                let (mut changes, forget) = deps.changes(&this.store, tasks.values());
                for (id, t) in &tasks {
                    let key = (t.desired_state, t.spec_version);
                    if sent.get(id) != Some(&key) {
                        changes.push(AssignmentChange {
                            action: assignment_change::Action::Update as i32,
                            task: Some(t.clone()),
                            ..Default::default()
                        });
                        sent.insert(id.clone(), key);
                    }
                }
                let gone: Vec<String> = sent
                    .keys()
                    .filter(|id| !tasks.contains_key(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    sent.remove(&id);
                    changes.push(AssignmentChange {
                        action: assignment_change::Action::Remove as i32,
                        task: Some(Task {
                            id,
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
                changes.extend(forget);
                drop(permit);
                if first || !changes.is_empty() {
                    let kind = if first {
                        assignments_message::Type::Complete
                    } else {
                        assignments_message::Type::Incremental
                    };
                    first = false;
                    let msg = AssignmentsMessage {
                        r#type: kind as i32,
                        changes,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                if !this
                    .next_round(&mut watch, &tx, &node_id, &session_id)
                    .await
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// The node's network state (see [`crate::netstate`]): COMPLETE first, then INCREMENTAL
    /// messages with what changed, recomputed when the store's applied index moves. Ends with
    /// `Unavailable` when this manager stops leading or the session ends; the agent then
    /// reconnects and gets a new COMPLETE, so nothing is lost across leader changes.
    async fn network_state(
        &self,
        req: Request<proto::NetworkStateRequest>,
    ) -> Result<Response<Self::NetworkStateStream>, Status> {
        self.leader_current().await?;
        let node_id = node_of(&req, &self.store.read())?;
        let session_id = req.into_inner().session_id;
        self.check_session(&node_id, &session_id)?;
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut watch = this.store.watch();
            // What the node was last told.
            let mut sent: Option<NodeNetworkView> = None;
            // What the last view was built from (`netstate::view_sources`): a round where
            // none of it moved would build the same view, and is skipped.
            let mut built_from = None;
            loop {
                watch.borrow_and_update();
                let unchanged = built_from.is_some_and(|b| {
                    b == netstate::view_sources(&this.store.read(), &node_id, sent.as_ref())
                });
                if unchanged {
                    if !this
                        .next_round(&mut watch, &tx, &node_id, &session_id)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                let Some(permit) = this.build_permit().await else {
                    return;
                };
                let (view, vxlan_port, sources) = {
                    let st = this.store.read();
                    let port = st
                        .cluster()
                        .map(|c| c.vxlan_udp_port)
                        .filter(|p| *p != 0)
                        .unwrap_or(crate::ipam::DEFAULT_VXLAN_PORT);
                    let view = netstate::node_view_with(&st, &node_id, &this.pieces);
                    let sources = netstate::view_sources(&st, &node_id, Some(&view));
                    (view, port, sources)
                };
                let msg = match &sent {
                    None => Some(NetworkStateMessage {
                        r#type: network_state_message::Type::Complete as i32,
                        changes: netstate::full(&view),
                        vxlan_port,
                    }),
                    Some(old) => {
                        let changes = netstate::diff(old, &view);
                        (!changes.is_empty()).then_some(NetworkStateMessage {
                            r#type: network_state_message::Type::Incremental as i32,
                            changes,
                            vxlan_port,
                        })
                    }
                };
                drop(permit);
                if let Some(msg) = msg {
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    sent = Some(view);
                }
                built_from = Some(sources);
                if !this
                    .next_round(&mut watch, &tx, &node_id, &session_id)
                    .await
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Records the status the node reports for its own tasks: texts truncated
    /// ([`bounds::bound_status`]), reports coalesced and written at the node's rate, reports
    /// that change nothing not written ([`writes`]). Answers once the reports are committed.
    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        self.leader_current().await?;
        let node_id = node_of(&req, &self.store.read())?;
        let r = req.into_inner();
        self.check_session(&node_id, &r.session_id)?;
        // A state this manager does not know (a newer or broken agent) is refused whole:
        // stored, it would break every reader of the task.
        for u in &r.updates {
            let state = u.status.as_ref().map(|s| s.state);
            if let Some(bad) = state.filter(|s| TaskState::try_from(*s).is_err()) {
                return Err(Status::invalid_argument(format!(
                    "task {}: unknown task state {bad} reported by node {node_id}; nothing of this update was recorded",
                    u.task_id
                )));
            }
        }
        let reports: Vec<(String, proto::TaskStatus)> = {
            let st = self.store.read();
            r.updates
                .into_iter()
                .filter_map(|u| {
                    // A node may only report on its own tasks.
                    let t = st.task(&u.task_id)?;
                    let status = bounds::bound_status(u.status?);
                    (t.node_id == node_id).then_some((u.task_id, status))
                })
                .collect()
        };
        if reports.is_empty() {
            return Ok(Response::new(UpdateTaskStatusResponse {}));
        }
        let ops_of = |pending: &HashMap<String, proto::TaskStatus>| -> Vec<Op> {
            let st = self.store.read();
            pending
                .iter()
                .filter(|(id, status)| {
                    st.task(id).is_some_and(|t| {
                        t.node_id == node_id && !bounds::changes_nothing(t.status.as_ref(), status)
                    })
                })
                .map(|(id, status)| Op::SetTaskStatus {
                    task_id: id.clone(),
                    status: status.clone(),
                })
                .collect()
        };
        let write = |ops: Vec<Op>| async move {
            self.store
                .propose(StoreRequest::best_effort(ops))
                .await
                .map(|_| ())
                .map_err(propose_status)
        };
        self.writes
            .of(&node_id)
            .report(reports, ops_of, write)
            .await?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_data_path_address_wins_when_it_is_an_address() {
        let seen = Some("127.0.0.1".parse().unwrap());
        assert_eq!(data_path_addr("127.0.0.4", seen), "127.0.0.4");
        assert_eq!(data_path_addr("", seen), "127.0.0.1");
        assert_eq!(data_path_addr("0.0.0.0", seen), "127.0.0.1");
        assert_eq!(data_path_addr("eth0", seen), "127.0.0.1");
        assert_eq!(data_path_addr("", None), "");
    }

    fn task_using(id: &str, secret: &str, desired: TaskState, state: TaskState) -> Task {
        Task {
            id: id.into(),
            desired_state: desired as i32,
            status: Some(proto::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            spec: Some(proto::TaskSpec {
                container: Some(proto::ContainerSpec {
                    secrets: vec![proto::SecretReference {
                        secret_id: secret.into(),
                        secret_name: secret.into(),
                        file: None,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_node_that_became_ready_after_the_monitor_read_it_is_not_marked_down() {
        let store = Store::memory();
        let node = |id: &str| Node {
            id: id.into(),
            status: Some(NodeStatus {
                state: NodeState::Unknown as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        store
            .write(vec![
                Op::Create(crate::store::Object::Node(node("late"))),
                Op::Create(crate::store::Object::Node(node("gone"))),
            ])
            .await
            .unwrap();
        let now = Instant::now();
        let ops = mark_down(&store.read(), &HashMap::new(), now, false);
        assert!(ops.is_empty(), "no node is late before the grace is over");
        let sessions = HashMap::from([(
            "late".to_string(),
            Session {
                id: "s".into(),
                expires: now + Duration::from_secs(10),
                addr: "127.1.0.7".into(),
            },
        )]);
        let ops = mark_down(&store.read(), &HashMap::new(), now, true);
        assert_eq!(ops.len(), 2, "neither node opened a session");
        // Meanwhile "late" opens its session and becomes READY.
        store
            .update_node("late", |n| {
                n.status = Some(NodeStatus {
                    state: NodeState::Ready as i32,
                    message: String::new(),
                    addr: "127.1.0.7".into(),
                })
            })
            .await
            .unwrap();
        store.propose(StoreRequest::best_effort(ops)).await.unwrap();
        let st = store.read();
        let late = st.node("late").unwrap().status.clone().unwrap();
        assert_eq!(late.state, NodeState::Ready as i32, "{late:?}");
        assert_eq!(late.addr, "127.1.0.7");
        assert_eq!(st.node("gone").unwrap().state(), NodeState::Down);
        // With its session the node is not late; its session expiring makes it so.
        assert!(mark_down(&st, &sessions, now, true)
            .iter()
            .all(|op| matches!(op, Op::Update { object, .. } if object.id() == "gone")));
        assert!(
            mark_down(&st, &sessions, now + Duration::from_secs(11), true)
                .iter()
                .any(|op| matches!(op, Op::Update { object, .. } if object.id() == "late"))
        );
    }

    /// A manager elected again still holds the sessions of its earlier term, expired
    /// meanwhile: their nodes get the whole grace to reconnect (at 5 000 nodes a re-elected
    /// leader marked 4 992 of them DOWN 3 s after its election).
    #[tokio::test]
    async fn sessions_of_an_earlier_term_leave_their_nodes_the_grace() {
        let store = Store::memory();
        store
            .write(vec![Op::Create(crate::store::Object::Node(Node {
                id: "n".into(),
                status: Some(NodeStatus {
                    state: NodeState::Ready as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }))])
            .await
            .unwrap();
        let now = Instant::now();
        let stale = HashMap::from([(
            "n".to_string(),
            Session {
                id: "from-the-earlier-term".into(),
                expires: now - Duration::from_secs(60),
                addr: "127.1.0.9".into(),
            },
        )]);
        assert!(mark_down(&store.read(), &stale, now, false).is_empty());
        assert_eq!(mark_down(&store.read(), &stale, now, true).len(), 1);
    }

    #[tokio::test]
    async fn a_burst_of_store_changes_is_one_round() {
        let (store_tx, mut watch) = tokio::sync::watch::channel(0u64);
        let (tx, rx) = mpsc::channel::<Result<(), Status>>(1);
        store_tx.send_replace(1);
        watch.changed().await.unwrap();
        let started = tokio::time::Instant::now();
        // More changes while the round waits.
        let burst = async {
            for i in 2..10 {
                tokio::task::yield_now().await;
                store_tx.send_replace(i);
            }
        };
        let (batched, ()) = tokio::join!(batch(&mut watch, &tx), burst);
        assert!(batched);
        assert!(started.elapsed() >= BATCH_WINDOW);
        assert!(
            !watch.has_changed().unwrap(),
            "the burst was read by this round"
        );
        assert_eq!(*watch.borrow(), 9);
        // A change after the window is the next round's.
        store_tx.send_replace(10);
        assert!(watch.has_changed().unwrap());
        // A stream whose receiver is gone ends at once.
        drop(rx);
        assert!(!batch(&mut watch, &tx).await);
    }

    #[tokio::test]
    async fn a_node_gets_the_secrets_of_its_live_tasks_once_and_is_told_to_forget_them() {
        let store = Store::memory();
        for id in ["s1", "s2"] {
            store
                .write(vec![Op::Create(crate::store::Object::Secret(
                    proto::Secret {
                        id: id.into(),
                        meta: None,
                        spec: Some(proto::SecretSpec {
                            name: id.into(),
                            data: format!("data-{id}").into_bytes(),
                            ..Default::default()
                        }),
                    },
                ))])
                .await
                .unwrap();
        }
        let mut sent = SentDependencies::default();
        let running = task_using("t1", "s1", TaskState::Running, TaskState::Running);
        // A task already shut down needs nothing.
        let ended = task_using("t2", "s2", TaskState::Shutdown, TaskState::Shutdown);
        let (add, forget) = sent.changes(&store, [&running, &ended].into_iter());
        assert!(forget.is_empty());
        assert_eq!(add.len(), 1);
        let s = add[0].secret.as_ref().unwrap();
        assert_eq!(s.id, "s1");
        assert_eq!(
            s.spec.as_ref().unwrap().data,
            b"data-s1",
            "the node gets the data"
        );
        assert_eq!(add[0].action, assignment_change::Action::Update as i32);
        // Nothing new: nothing sent again.
        let (add, forget) = sent.changes(&store, [&running].into_iter());
        assert!(add.is_empty() && forget.is_empty());
        // The task is told to stop: the node forgets the secret.
        let stopping = task_using("t1", "s1", TaskState::Shutdown, TaskState::Running);
        let (add, forget) = sent.changes(&store, [&stopping].into_iter());
        assert!(add.is_empty());
        assert_eq!(forget.len(), 1);
        assert_eq!(forget[0].action, assignment_change::Action::Remove as i32);
        let gone = forget[0].secret.as_ref().unwrap();
        assert_eq!(gone.id, "s1");
        assert!(gone.spec.is_none(), "a REMOVE carries the id only");
    }
}
