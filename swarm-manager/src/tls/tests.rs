//! Real TLS handshakes on 127.0.0.1 through `incoming` + `channel` + a tonic service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::health_client::HealthClient;
use proto::health_server::{Health, HealthServer};
use proto::{HealthCheckRequest, HealthCheckResponse};

use super::*;
use crate::ca::{new_key_and_csr, RootCa};

/// Records what `caller_identity` saw for each call.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Option<NodeIdentity>>>>,
}

impl Recorder {
    fn last(&self) -> Option<NodeIdentity> {
        self.seen.lock().unwrap().last().cloned().flatten()
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[tonic::async_trait]
impl Health for Recorder {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(caller_identity(&req));
        Ok(tonic::Response::new(HealthCheckResponse { status: 1 }))
    }
}

fn node_cert(root: &RootCa, id: &str, role: proto::NodeRole, cluster: &str) -> (String, String) {
    let (key, csr) = new_key_and_csr().unwrap();
    let cert = root
        .sign_node_cert(&csr, id, role, cluster, Duration::from_secs(3600))
        .unwrap();
    (cert, key)
}

async fn start_server(root: &RootCa) -> (SocketAddr, Recorder, Arc<ReloadableCert>) {
    let (cert, key) = node_cert(root, "mgr1", proto::NodeRole::Manager, "c1");
    let reloadable = ReloadableCert::new(&cert, &key).unwrap();
    let cfg = server_config(&root.cert_pem, reloadable.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Recorder::default();
    let svc = HealthServer::new(rec.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming(listener, cfg)),
    );
    (addr, rec, reloadable)
}

async fn check(ch: Channel, req: tonic::Request<HealthCheckRequest>) -> Result<i32, tonic::Status> {
    let resp = tokio::time::timeout(Duration::from_secs(10), HealthClient::new(ch).check(req))
        .await
        .expect("the call finishes")?;
    Ok(resp.into_inner().status)
}

fn hc() -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest::default())
}

#[tokio::test]
async fn mtls_identity_and_anonymous_clients() {
    let root = RootCa::generate().unwrap();
    let (addr, rec, _) = start_server(&root).await;
    let addr = addr.to_string();

    // (a) a client with a node certificate: its identity reaches the handler.
    let (cert, key) = node_cert(&root, "worker7", proto::NodeRole::Worker, "c1");
    let cfg = client_config(&root.cert_pem, Some((&cert, &key))).unwrap();
    assert_eq!(check(channel(&addr, cfg), hc()).await.unwrap(), 1);
    let id = rec.last().expect("identity of the worker");
    assert_eq!(id.node_id, "worker7");
    assert_eq!(id.role, proto::NodeRole::Worker);
    assert_eq!(id.cluster_id, "c1");

    // (b) a client without a certificate connects, but has no identity.
    let cfg = client_config(&root.cert_pem, None).unwrap();
    assert_eq!(check(channel(&addr, cfg), hc()).await.unwrap(), 1);
    assert_eq!(rec.count(), 2);
    assert!(rec.last().is_none());

    // A joining node that does not know the root yet.
    assert_eq!(
        check(channel(&addr, insecure_client_config()), hc())
            .await
            .unwrap(),
        1
    );
    assert!(rec.last().is_none());
}

#[tokio::test]
async fn foreign_ca_fails_and_server_keeps_serving() {
    let root = RootCa::generate().unwrap();
    let other = RootCa::generate().unwrap();
    let (addr, rec, _) = start_server(&root).await;
    let addr = addr.to_string();

    // (c) a client trusting another CA cannot talk to the server.
    let cfg = client_config(&other.cert_pem, None).unwrap();
    assert!(check(channel(&addr, cfg), hc()).await.is_err());

    // A client presenting a certificate of another CA is rejected by the server.
    let (cert, key) = node_cert(&other, "intruder", proto::NodeRole::Manager, "c1");
    let cfg = client_config(&root.cert_pem, Some((&cert, &key))).unwrap();
    assert!(check(channel(&addr, cfg), hc()).await.is_err());
    assert_eq!(rec.count(), 0);

    // A client that never sends a ClientHello does not block others.
    let _idle = TcpStream::connect(&addr).await.unwrap();
    let cfg = client_config(&root.cert_pem, None).unwrap();
    assert_eq!(check(channel(&addr, cfg), hc()).await.unwrap(), 1);
    assert_eq!(rec.count(), 1);
}

#[tokio::test]
async fn forwarded_identity_only_from_managers() {
    let root = RootCa::generate().unwrap();
    let (addr, rec, _) = start_server(&root).await;
    let addr = addr.to_string();
    let (mcert, mkey) = node_cert(&root, "mgr2", proto::NodeRole::Manager, "c1");
    let manager = channel(
        &addr,
        client_config(&root.cert_pem, Some((&mcert, &mkey))).unwrap(),
    );
    let (wcert, wkey) = node_cert(&root, "worker9", proto::NodeRole::Worker, "c1");
    let worker = channel(
        &addr,
        client_config(&root.cert_pem, Some((&wcert, &wkey))).unwrap(),
    );
    let original = ca::parse_node_cert_pem(&wcert).unwrap();

    // A manager forwarding a worker's call: the worker's identity is seen.
    let mut req = hc();
    with_forwarded_identity(&mut req, &original);
    check(manager.clone(), req).await.unwrap();
    assert_eq!(rec.last(), Some(original.clone()));

    // A worker cannot claim to forward someone else.
    let fake = NodeIdentity {
        node_id: "someone".into(),
        role: proto::NodeRole::Manager,
        ..original.clone()
    };
    let mut req = hc();
    with_forwarded_identity(&mut req, &fake);
    check(worker, req).await.unwrap();
    assert_eq!(rec.last().unwrap().node_id, "worker9");

    // A manager only vouches for its own cluster.
    let mut req = hc();
    with_forwarded_identity(
        &mut req,
        &NodeIdentity {
            cluster_id: "c2".into(),
            ..original.clone()
        },
    );
    check(manager.clone(), req).await.unwrap();
    assert!(rec.last().is_none());

    // Forwarding an anonymous caller's request (no peer certs in a local Request)
    // marks it anonymous: the leader does not mistake it for the manager's own call.
    let fwd = forwarded_request(hc());
    check(manager.clone(), fwd).await.unwrap();
    assert!(rec.last().is_none());

    // Without forwarding metadata the manager is itself.
    check(manager, hc()).await.unwrap();
    assert_eq!(rec.last().unwrap().node_id, "mgr2");
}

#[tokio::test]
async fn reloadable_cert_swaps_the_served_certificate() {
    let root = RootCa::generate().unwrap();
    let (addr, _rec, reloadable) = start_server(&root).await;

    let served_node_id = || async {
        let connector = TlsConnector::from(client_config(&root.cert_pem, None).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await
            .unwrap();
        let (_, conn) = tls.get_ref();
        let der = conn.peer_certificates().unwrap()[0].clone();
        ca::parse_node_cert_der(&der).unwrap().node_id
    };
    assert_eq!(served_node_id().await, "mgr1");

    let (cert, key) = node_cert(&root, "mgr1renewed", proto::NodeRole::Manager, "c1");
    reloadable.update(&cert, &key).unwrap();
    assert_eq!(served_node_id().await, "mgr1renewed");

    // A key that does not belong to the certificate is refused; the old pair stays.
    let (_, other_key) = node_cert(&root, "x", proto::NodeRole::Manager, "c1");
    assert!(matches!(
        reloadable.update(&cert, &other_key),
        Err(TlsError::KeyMismatch)
    ));
    assert!(reloadable.update("junk", &key).is_err());
    assert_eq!(served_node_id().await, "mgr1renewed");
}

#[test]
fn config_errors_are_reported() {
    let root = RootCa::generate().unwrap();
    assert!(matches!(
        client_config("", None),
        Err(TlsError::NoCertificate(_))
    ));
    let (cert, _) = node_cert(&root, "n", proto::NodeRole::Worker, "c");
    let (_, other_key) = node_cert(&root, "m", proto::NodeRole::Worker, "c");
    assert!(matches!(
        client_config(&root.cert_pem, Some((&cert, &other_key))),
        Err(TlsError::KeyMismatch)
    ));
    assert!(matches!(
        ReloadableCert::new(&cert, "not a key"),
        Err(TlsError::Key(_))
    ));
}

/// Answers Health with the name of the thread that ran the handler.
#[derive(Clone, Default)]
struct ThreadRecorder {
    threads: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl Health for ThreadRecorder {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        assert!(
            caller_identity(&req).is_some(),
            "the client certificate reaches a handler on either side"
        );
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push(name);
        Ok(tonic::Response::new(HealthCheckResponse { status: 1 }))
    }
}

/// A runtime of one worker on its own thread named `name`; dropped, it stops.
fn runtime_named(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn raft_connections_are_served_on_their_own_runtime_while_the_main_one_is_blocked() {
    let root = RootCa::generate().unwrap();
    let (cert, key) = node_cert(&root, "mgr1", proto::NodeRole::Manager, "c1");
    let server_cfg =
        server_config(&root.cert_pem, ReloadableCert::new(&cert, &key).unwrap()).unwrap();
    let main_rt = runtime_named("main-rt");
    let raft_rt = runtime_named("raft-rt");
    let (main_rec, raft_rec) = (ThreadRecorder::default(), ThreadRecorder::default());

    // The server: accepts on the main runtime; Raft's connections are served on raft_rt.
    let (addr, raft_sockets) = main_rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let split = incoming_split(listener, server_cfg.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(main_rec.clone()))
                .serve_with_incoming(split.main),
        );
        (addr, split.raft)
    });
    let raft_svc = HealthServer::new(raft_rec.clone());
    raft_rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(raft_svc)
            .serve_with_incoming(handshakes(raft_sockets, server_cfg))
            .await
    });

    // Clients on a runtime of their own: one plain, one marked as Raft's.
    let client_rt = runtime_named("client-rt");
    let (mcert, mkey) = node_cert(&root, "mgr2", proto::NodeRole::Manager, "c1");
    let cfg = client_config(&root.cert_pem, Some((&mcert, &mkey))).unwrap();
    let addr = addr.to_string();
    let (plain, raft) = client_rt.block_on(async {
        let plain = channel(&addr, cfg.clone());
        let raft = channel(&addr, raft_client_config(&cfg));
        assert_eq!(check(plain.clone(), hc()).await.unwrap(), 1);
        assert_eq!(check(raft.clone(), hc()).await.unwrap(), 1);
        (plain, raft)
    });
    assert_eq!(
        *main_rec.threads.lock().unwrap(),
        vec!["main-rt".to_string()]
    );
    assert_eq!(
        *raft_rec.threads.lock().unwrap(),
        vec!["raft-rt".to_string()]
    );

    // Block the main runtime's only worker; the Raft connection is still answered meanwhile.
    let blocked = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let b = blocked.clone();
    main_rt.spawn(async move {
        started_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        b.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    started_rx.recv().unwrap();
    client_rt.block_on(async {
        assert_eq!(check(raft.clone(), hc()).await.unwrap(), 1);
    });
    assert!(
        blocked.load(std::sync::atomic::Ordering::SeqCst),
        "the Raft call was answered only once the main runtime ran again"
    );
    assert_eq!(raft_rec.threads.lock().unwrap().len(), 2);
    // The plain connection waits for the main runtime, and is answered once it runs.
    client_rt.block_on(async {
        assert_eq!(check(plain, hc()).await.unwrap(), 1);
    });
    assert!(!blocked.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(main_rec.threads.lock().unwrap().len(), 2);
}

#[test]
fn a_client_hello_offering_raft_is_told_from_others_and_from_fragments() {
    let root = RootCa::generate().unwrap();
    let cfg = client_config(&root.cert_pem, None).unwrap();
    let hello = |cfg: Arc<ClientConfig>| {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    };
    let plain = hello(cfg.clone());
    let raft = hello(raft_client_config(&cfg));
    assert_eq!(offers_raft(&plain), Some(false));
    assert_eq!(offers_raft(&raft), Some(true));
    // A ClientHello cut short: not known yet.
    assert_eq!(offers_raft(&raft[..raft.len() / 2]), None);
    assert_eq!(offers_raft(&raft[..3]), None);
    // Not TLS at all: not Raft's (its handshake fails where it goes).
    assert_eq!(offers_raft(b"GET / HTTP/1.1\r\n\r\n"), Some(false));
}
