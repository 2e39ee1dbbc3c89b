//! Server side of the Raft transport: the `swarm.v1.Raft` gRPC service. Requests and
//! answers are bincode of openraft's types; an openraft error travels inside the answer
//! (`Result<Response, RaftError>`), gRPC errors are for undecodable or unauthorized calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proto::raft_server::RaftServer;
use proto::RaftPayload;
use serde::{de::DeserializeOwned, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use super::config::MAX_MESSAGE_BYTES;
use super::{Raft, TypeConfig};
use crate::store::{Standing, Store};

/// Serves openraft's RPCs of this manager to the other managers.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    /// The store callers are checked against; None: every caller is served (tests only).
    check_caller: Option<Store>,
    /// The last standing read for each caller, for when the store cannot be read at once
    /// (see [`standing_now_or_last`]).
    standings: Arc<Mutex<HashMap<String, Standing>>>,
}

impl RaftService {
    /// The service for production: only callers with a manager certificate of the
    /// cluster (verified by mTLS) whose node is still a manager in `store` are served;
    /// others get `PermissionDenied`.
    pub fn new(raft: Raft, store: Store) -> Self {
        RaftService {
            raft,
            check_caller: Some(store),
            standings: Arc::default(),
        }
    }

    /// FOR TESTS over plaintext channels only: serves every caller, without looking at
    /// client certificates. Never use it on a listener reachable by other hosts.
    pub fn new_unauthenticated(raft: Raft) -> Self {
        RaftService {
            raft,
            check_caller: None,
            standings: Arc::default(),
        }
    }

    /// The tonic server of this service, with message limits large enough for snapshot
    /// chunks and batches of entries. Its messages are the largest a manager accepts, so the
    /// caller's certificate is checked by an interceptor, before the body is read and
    /// decoded; the handlers check again.
    pub fn into_server(self) -> InterceptedService<RaftServer<RaftService>, PeerCheck> {
        let check = PeerCheck {
            check_caller: self.check_caller.is_some(),
        };
        let server = RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, check)
    }

    /// The caller's own certificate (forwarding metadata means nothing here) must be a
    /// manager's, and the store must not say otherwise: a removed node, or a manager
    /// demoted since its certificate was issued, is refused (SwarmKit's `checkRemoved`).
    /// A node this store does not know yet is served: a manager catching up (a new one,
    /// or one restarted after a long time) learns of newer managers from them.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(store) = &self.check_caller else {
            return Ok(());
        };
        let id = peer_check(req)?;
        match standing_now_or_last(store, &self.standings, &id.node_id) {
            Standing::Removed => Err(Status::permission_denied(format!(
                "node {} was removed from the swarm: it takes no part in Raft",
                id.node_id
            ))),
            Standing::Member(role) if role != proto::NodeRole::Manager => {
                Err(Status::permission_denied(format!(
                    "node {} is no longer a manager (demoted): only managers take part in Raft",
                    id.node_id
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Where `node_id` stands in `store`: from the store if it can be read at once, else the
/// last standing read into `last`, else from the store after a wait. The Raft service runs
/// on the Raft runtime (`manager.rs`), whose one thread also sends the heartbeats, so it
/// must not wait while a writer holds the store's lock or waits for it (behind a long
/// reader, such as a snapshot being serialized). A removal or demotion is then seen at the
/// caller's next call that finds the lock free; a caller never read before waits once.
fn standing_now_or_last(
    store: &Store,
    last: &Mutex<HashMap<String, Standing>>,
    node_id: &str,
) -> Standing {
    let remember = |standing: Standing| {
        last.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), standing);
        standing
    };
    if let Some(st) = store.try_read() {
        return remember(st.standing(node_id));
    }
    let known = last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(node_id)
        .copied();
    match known {
        Some(standing) => standing,
        None => remember(store.read().standing(node_id)),
    }
}

/// The Raft service's certificate check as a tonic interceptor: it runs on the request's
/// headers and connection, before its body is decoded. The store check (removed and
/// demoted managers) runs in the handlers.
#[derive(Clone, Copy, Debug)]
pub struct PeerCheck {
    check_caller: bool,
}

impl Interceptor for PeerCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.check_caller {
            peer_check(&req)?;
        }
        Ok(req)
    }
}

/// Only direct peers (forwarding metadata means nothing here) with a manager certificate
/// of the cluster take part in Raft. Returns the peer's identity.
fn peer_check<T>(req: &Request<T>) -> Result<crate::ca::NodeIdentity, Status> {
    match crate::tls::peer_identity(req) {
        Some(id) if id.role == proto::NodeRole::Manager => Ok(id),
        Some(id) => Err(Status::permission_denied(format!(
            "node {} is not a manager: only managers take part in Raft",
            id.node_id
        ))),
        None => Err(Status::permission_denied(
            "Raft calls need a manager certificate of this cluster (mutual TLS)",
        )),
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>, what: &str) -> Result<T, Status> {
    bincode::deserialize(&req.into_inner().data).map_err(|e| {
        Status::invalid_argument(format!(
            "undecodable Raft {what} request ({e}); do all managers run the same version?"
        ))
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    let data = bincode::serialize(v)
        .map_err(|e| Status::internal(format!("encoding the Raft response: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req)?;
        let rpc: VoteRequest<u64> = decode(req, "vote")?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req, "append-entries")?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req, "install-snapshot")?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    //! Managers in one process, talking Raft over real gRPC on 127.0.0.1 (plaintext).

    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
    use proto::{Service, ServiceSpec};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio::task::{JoinHandle, JoinSet};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Endpoint, Server};

    use super::*;
    use crate::raft::config::raft_config;
    use crate::raft::network::{Network, PeerHealth};
    use crate::raft::storage;
    use crate::store::{Object, Op, Shared, Store};
    use crate::tls::Connector;

    fn plaintext_connector() -> Connector {
        Arc::new(|addr: &str| {
            Endpoint::from_shared(format!("http://{addr}"))
                .expect("test address")
                .connect_timeout(Duration::from_millis(500))
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(1))
                .keep_alive_while_idle(true)
                .connect_lazy()
        })
    }

    fn service(name: &str) -> Object {
        Object::Service(Service {
            id: format!("id-{name}"),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    struct Node {
        id: u64,
        addr: String,
        dir: PathBuf,
        raft: Raft,
        store: Store,
        health: PeerHealth,
        log_bytes: storage::LogBytes,
        stop: Option<oneshot::Sender<()>>,
        server: JoinHandle<Result<(), tonic::transport::Error>>,
    }

    async fn bind(addr: Option<&str>) -> TcpListener {
        let Some(addr) = addr else {
            return TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a test port");
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return l,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(%e, "rebinding {addr}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr} again: {e}"),
            }
        }
    }

    /// Opens the storage, waiting for the previous instance on `dir` to close its database.
    async fn open_storage(
        dir: &Path,
        shared: Arc<Shared>,
    ) -> (storage::LogStore, storage::StateMachine) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dek = crate::raft::encryption::load_or_create(dir, None).expect("the data key");
            match storage::open(dir, shared.clone(), dek) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(%e, "waiting for the previous database to close");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    impl Node {
        async fn start(id: u64, dir: &Path, addr: Option<&str>, config: Arc<Config>) -> Node {
            let listener = bind(addr).await;
            let addr = listener.local_addr().unwrap().to_string();
            let shared = Arc::new(Shared::default());
            let (log, sm) = open_storage(dir, shared.clone()).await;
            let log_bytes = log.log_bytes();
            let health = PeerHealth::default();
            let network = Network::new(plaintext_connector(), health.clone());
            let raft = Raft::new(id, config, network, log, sm)
                .await
                .expect("start raft");
            let (tx, rx) = oneshot::channel::<()>();
            let svc = RaftService::new_unauthenticated(raft.clone()).into_server();
            let server = tokio::spawn(
                Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                        let _ = rx.await;
                    }),
            );
            Node {
                id,
                addr,
                dir: dir.to_path_buf(),
                store: Store::new(shared, Arc::new(raft.clone())),
                raft,
                health,
                log_bytes,
                stop: Some(tx),
                server,
            }
        }

        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            if tokio::time::timeout(Duration::from_secs(3), &mut self.server)
                .await
                .is_err()
            {
                self.server.abort();
            }
            self.raft.shutdown().await.expect("raft shutdown");
        }

        fn services(&self) -> usize {
            self.store.read().services().count()
        }

        fn is_leader(&self) -> bool {
            let m = self.raft.metrics().borrow().clone();
            m.state == ServerState::Leader && m.current_leader == Some(self.id)
        }
    }

    async fn start_cluster(dirs: &[tempfile::TempDir], config: Arc<Config>) -> Vec<Node> {
        let mut nodes = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            nodes.push(Node::start(i as u64 + 1, d.path(), None, config.clone()).await);
        }
        let members: BTreeMap<u64, BasicNode> = nodes
            .iter()
            .map(|n| (n.id, BasicNode::new(n.addr.clone())))
            .collect();
        nodes[0].raft.initialize(members).await.expect("initialize");
        nodes
    }

    async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Index in `nodes` of the leader all of them agree on.
    async fn wait_leader(nodes: &[Node], timeout: Duration) -> usize {
        let mut found = None;
        wait_until("a leader", timeout, || {
            found = nodes.iter().position(|n| n.is_leader()).filter(|&i| {
                nodes
                    .iter()
                    .all(|n| n.raft.metrics().borrow().current_leader == Some(nodes[i].id))
            });
            found.is_some()
        })
        .await;
        found.unwrap_or_default()
    }

    /// Writes through whichever node leads, retrying while leadership changes.
    async fn write(nodes: &[Node], name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = nodes.iter().find(|n| n.is_leader()) {
                match n.store.write(vec![Op::Create(service(name))]).await {
                    Ok(_) => return,
                    Err(e) => assert!(Instant::now() < deadline, "writing {name}: {e}"),
                }
            }
            assert!(Instant::now() < deadline, "no leader to write {name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `Router::leader_watch` (what ends a forwarded Control call): commits do not end it,
    /// a new leader does, and so does this manager's Raft core stopping.
    #[test]
    fn a_caller_is_checked_without_waiting_behind_a_queued_writer() {
        let store = Store::memory();
        let last = Mutex::new(HashMap::new());
        // Read once while the lock is free: remembered.
        assert_eq!(
            standing_now_or_last(&store, &last, "mgr2"),
            Standing::Unknown
        );
        // A reader holds the lock and a writer waits for it: later readers would wait too.
        let held = store.read();
        let writer = {
            let shared = store.shared().clone();
            std::thread::spawn(move || {
                shared.apply(
                    1,
                    crate::store::Request::atomic(vec![Op::Create(service("w"))]),
                )
            })
        };
        let queued = std::time::Instant::now();
        while store.try_read().is_some() {
            assert!(
                queued.elapsed() < Duration::from_secs(10),
                "the writer never queued"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The check answers from what it read before instead of waiting (waiting here would
        // never end: this thread holds the reader the writer waits for).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                tx.send(standing_now_or_last(&store, &last, "mgr2"))
                    .unwrap()
            });
            let answer = rx.recv_timeout(Duration::from_secs(10));
            drop(held);
            assert_eq!(answer, Ok(Standing::Unknown));
        });
        writer.join().unwrap();
        assert_eq!(store.read().services().count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_leader_watch_ends_with_a_new_leader_or_a_stopped_core_not_with_commits() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = start_cluster(&dirs, raft_config()).await;
        let l = wait_leader(&nodes, Duration::from_secs(10)).await;
        let f = (0..nodes.len()).find(|i| *i != l).unwrap();
        let router =
            |n: &Node| crate::router::Router::raft(n.raft.clone(), n.id, plaintext_connector());
        let watch = router(&nodes[f]).leader_watch();
        let mut changed = Box::pin(watch.changed());
        for i in 0..20 {
            write(&nodes, &format!("svc-{i}")).await;
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut changed)
                .await
                .is_err(),
            "20 commits under the same leader ended the watch"
        );
        nodes.remove(l).stop().await;
        tokio::time::timeout(Duration::from_secs(10), &mut changed)
            .await
            .expect("the leader stopped and the watch of a follower did not end");

        let f = nodes.iter().position(|n| !n.is_leader()).unwrap_or(0);
        let watch = router(&nodes[f]).leader_watch();
        nodes[f].raft.shutdown().await.expect("raft shutdown");
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the core stopped and the watch did not end");
        for n in nodes {
            n.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_managers_replicate_and_fail_over() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = start_cluster(&dirs, raft_config()).await;
        let li = wait_leader(&nodes, Duration::from_secs(10)).await;

        // 100 concurrent writes through the leader.
        let t0 = Instant::now();
        let mut writes = JoinSet::new();
        for i in 0..100 {
            let store = nodes[li].store.clone();
            writes.spawn(async move {
                store
                    .write(vec![Op::Create(service(&format!("svc-{i}")))])
                    .await
            });
        }
        while let Some(r) = writes.join_next().await {
            r.unwrap().expect("write through the leader");
        }
        eprintln!("100 concurrent writes committed in {:?}", t0.elapsed());
        for n in &nodes {
            wait_until(
                "replication to every manager",
                Duration::from_secs(10),
                || n.services() == 100,
            )
            .await;
        }
        let reference = nodes[li].store.read().clone();
        for n in &nodes {
            let st = n.store.read();
            for s in reference.services() {
                assert_eq!(st.service(&s.id), Some(s), "manager {} diverged", n.id);
            }
        }
        // The leader saw every follower answer recently.
        for n in nodes.iter().filter(|n| n.id != nodes[li].id) {
            let seen = nodes[li].health.last_contact(n.id).expect("contact");
            assert!(seen.elapsed() < Duration::from_secs(1));
        }

        // Stop the leader: the two others elect a new one and accept writes.
        let old = nodes.remove(li);
        let old_id = old.id;
        let t0 = Instant::now();
        old.stop().await;
        let li = wait_leader(&nodes, Duration::from_secs(10)).await;
        let failover = t0.elapsed();
        eprintln!(
            "new leader {} elected {failover:?} after the old one stopped",
            nodes[li].id
        );
        assert_ne!(nodes[li].id, old_id);
        // Budget 2 s (see config.rs); margin for a loaded test machine.
        assert!(
            failover < Duration::from_secs(3),
            "failover took {failover:?}"
        );
        for i in 100..110 {
            write(&nodes, &format!("svc-{i}")).await;
        }
        for n in &nodes {
            wait_until("writes after failover", Duration::from_secs(10), || {
                n.services() == 110
            })
            .await;
            let st = n.store.read();
            assert!((0..110).all(|i| st.service_by_name(&format!("svc-{i}")).is_some()));
        }
        let other = nodes.iter().find(|n| n.id != nodes[li].id).unwrap();
        let seen = nodes[li].health.last_contact(other.id).expect("contact");
        assert!(seen.elapsed() < Duration::from_secs(1));
        assert!(nodes[li]
            .health
            .last_contact(old_id)
            .is_none_or(|t| t.elapsed() > Duration::from_millis(500)));
        for n in nodes {
            n.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_without_a_manager_certificate_are_refused_as_unreachable() {
        use openraft::error::RPCError;
        use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
        use openraft::raft::VoteRequest;
        use openraft::Vote;

        let dir = tempfile::tempdir().unwrap();
        let listener = bind(None).await;
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared::default());
        let (log, sm) = open_storage(dir.path(), shared.clone()).await;
        let health = PeerHealth::default();
        let network = Network::new(plaintext_connector(), health.clone());
        let raft = Raft::new(1, raft_config(), network, log, sm).await.unwrap();
        let store = Store::new(shared, Arc::new(raft.clone()));
        // The production service over plaintext: no client certificate at all.
        let server = tokio::spawn(
            Server::builder()
                .add_service(RaftService::new(raft.clone(), store).into_server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );

        let mut net = Network::new(plaintext_connector(), health.clone());
        let mut client = net.new_client(1, &BasicNode::new(addr)).await;
        let opt = RPCOption::new(Duration::from_secs(2));
        let err = client
            .vote(VoteRequest::new(Vote::new(1, 2), None), opt.clone())
            .await
            .expect_err("no certificate, no vote");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
        assert!(err.to_string().contains("PermissionDenied"), "{err}");
        assert!(health.last_contact(1).is_none());

        // Nobody listening: unreachable too, so openraft backs off.
        let closed = bind(None).await;
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let mut client = net.new_client(9, &BasicNode::new(closed_addr)).await;
        let err = client
            .vote(VoteRequest::new(Vote::new(1, 2), None), opt)
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

        server.abort();
        raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn restarted_managers_reapply_committed_state() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let nodes = start_cluster(&dirs, raft_config()).await;
        wait_leader(&nodes, Duration::from_secs(10)).await;
        for i in 0..20 {
            write(&nodes, &format!("svc-{i}")).await;
        }
        for n in &nodes {
            wait_until("replication", Duration::from_secs(10), || {
                n.services() == 20
            })
            .await;
        }
        let addrs: Vec<(u64, PathBuf, String)> = nodes
            .iter()
            .map(|n| (n.id, n.dir.clone(), n.addr.clone()))
            .collect();
        for n in nodes {
            n.stop().await;
        }

        // One manager alone (no quorum, no leader) re-applies what was committed.
        let (id, dir, addr) = &addrs[0];
        let first = Node::start(*id, dir, Some(addr), raft_config()).await;
        assert_eq!(
            first.services(),
            20,
            "committed entries re-applied at start"
        );
        assert!(first.store.read().service_by_name("svc-19").is_some());

        let mut nodes = vec![first];
        for (id, dir, addr) in &addrs[1..] {
            nodes.push(Node::start(*id, dir, Some(addr), raft_config()).await);
            assert_eq!(nodes.last().unwrap().services(), 20);
        }
        wait_leader(&nodes, Duration::from_secs(10)).await;
        write(&nodes, "after-restart").await;
        for n in &nodes {
            wait_until("write after restart", Duration::from_secs(10), || {
                n.services() == 21
            })
            .await;
        }
        for n in nodes {
            n.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_log_of_few_large_entries_is_snapshotted_by_size() {
        let dirs = [tempfile::tempdir().unwrap()];
        let nodes = start_cluster(&dirs, raft_config()).await;
        wait_leader(&nodes, Duration::from_secs(10)).await;
        let n = &nodes[0];
        const EVERY: u64 = 256 * 1024;
        tokio::spawn(crate::raft::snapshot::snapshot_by_size(
            n.raft.clone(),
            n.log_bytes.clone(),
            EVERY,
        ));
        // 8 entries of 64 KiB: far fewer than the count policy's 10 000, twice the bytes.
        for i in 0..8 {
            write(&nodes, &format!("{i}-{}", "x".repeat(64 * 1024))).await;
        }
        let raft = n.raft.clone();
        wait_until("a snapshot by size", Duration::from_secs(10), || {
            raft.metrics().borrow().snapshot.is_some()
        })
        .await;
        assert!(n.log_bytes.get() < EVERY, "{}", n.log_bytes.get());
        for n in nodes {
            n.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lagging_manager_catches_up_from_a_snapshot() {
        let mut config = (*raft_config()).clone();
        config.snapshot_policy = SnapshotPolicy::LogsSinceLast(20);
        config.max_in_snapshot_log_to_keep = 0;
        config.purge_batch_size = 1;
        let config = Arc::new(config.validate().unwrap());

        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = start_cluster(&dirs, config.clone()).await;
        let li = wait_leader(&nodes, Duration::from_secs(10)).await;
        let fi = (li + 1) % 3;
        let lagging = nodes.remove(fi);
        let (id, dir, addr) = (lagging.id, lagging.dir.clone(), lagging.addr.clone());
        lagging.stop().await;

        for i in 0..60 {
            write(&nodes, &format!("svc-{i}")).await;
        }
        // The leader snapshotted and purged the log the stopped manager lacks.
        let li = wait_leader(&nodes, Duration::from_secs(10)).await;
        let leader = nodes[li].raft.clone();
        wait_until(
            "a snapshot and a purge on the leader",
            Duration::from_secs(10),
            || {
                let m = leader.metrics().borrow().clone();
                m.snapshot.is_some_and(|s| s.index >= 40) && m.purged.is_some_and(|p| p.index >= 20)
            },
        )
        .await;

        nodes.push(Node::start(id, &dir, Some(&addr), config.clone()).await);
        let back = nodes.last().unwrap();
        wait_until("catch-up by snapshot", Duration::from_secs(15), || {
            back.services() == 60
        })
        .await;
        assert!(
            back.raft.metrics().borrow().snapshot.is_some(),
            "installed a snapshot"
        );
        for n in nodes {
            n.stop().await;
        }

        // Alone after a restart, it starts from its snapshot plus the committed log.
        let alone = Node::start(id, &dir, Some(&addr), config).await;
        assert_eq!(alone.services(), 60);
        alone.stop().await;
    }
}
