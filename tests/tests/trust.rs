//! End-to-end: what the managers trust. Real `test-agent` processes on 127.0.0.N; the
//! refused nodes' calls are made straight to the managers' port with the certificates they
//! kept in their data roots.

use std::time::Duration;

use proto::control_client::ControlClient;
use proto::dispatcher_client::DispatcherClient;
use proto::node_ca_client::NodeCaClient;
use proto::raft_client::RaftClient;
use tests::{read, table, wait_for, AgentClient, AgentProc, Cluster};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A node's certificate, key and root CA, as read from its data root.
#[derive(Clone)]
struct Creds {
    cert: String,
    key: String,
    root: String,
}

impl Creds {
    fn of(node: &AgentProc) -> Creds {
        let (cert, key, root) = node.cert_paths();
        Creds {
            cert: read(&cert),
            key: read(&key),
            root: read(&root),
        }
    }

    fn identity(&self) -> swarm_manager::ca::NodeIdentity {
        swarm_manager::ca::parse_node_cert_pem(&self.cert).expect("a node certificate")
    }

    fn channel(&self, addr: &str) -> Channel {
        let cfg = swarm_manager::tls::client_config(&self.root, Some((&self.cert, &self.key)))
            .expect("client TLS configuration");
        swarm_manager::tls::channel(addr, cfg)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The index of the node whose manager status says Leader.
fn leader(c: &Cluster) -> usize {
    let nodes = c.node(0).nodes().expect("listing nodes");
    let host = nodes
        .iter()
        .find(|n| n.manager_status.as_ref().is_some_and(|m| m.leader))
        .and_then(|n| n.description.as_ref())
        .map(|d| d.hostname.clone())
        .unwrap_or_else(|| panic!("no leader among {nodes:?}"));
    c.nodes
        .iter()
        .position(|n| n.name == host)
        .unwrap_or_else(|| panic!("leader {host} is not a node of the cluster"))
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, Status>) -> Status {
    match r {
        Err(e) if e.code() == Code::PermissionDenied => e,
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

async fn list_services(ch: Channel) -> Result<(), Status> {
    ControlClient::new(ch)
        .list_services(proto::ListServicesRequest::default())
        .await
        .map(|_| ())
}

/// A Raft call whose payload decodes to nothing: a caller the check lets through gets
/// InvalidArgument, one it refuses PermissionDenied (authorization comes first).
async fn raft_vote(ch: Channel) -> Result<(), Status> {
    RaftClient::new(ch)
        .vote(proto::RaftPayload {
            data: vec![0xff; 3],
        })
        .await
        .map(|_| ())
}

async fn renew(ch: Channel) -> Result<proto::IssueNodeCertificateResponse, Status> {
    let (_key, csr) = swarm_manager::ca::new_key_and_csr().unwrap();
    NodeCaClient::new(ch)
        .issue_node_certificate(proto::IssueNodeCertificateRequest {
            csr,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn session(ch: Channel) -> Result<tonic::Streaming<proto::SessionMessage>, Status> {
    DispatcherClient::new(ch)
        .session(proto::SessionRequest::default())
        .await
        .map(|r| r.into_inner())
}

/// The next item of a stream within 20 s: a message, an error, or its end.
async fn next<T>(s: &mut tonic::Streaming<T>) -> Option<Result<T, Status>> {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("the stream said nothing for 20 s")
        .transpose()
}

#[test]
fn removed_and_demoted_nodes_are_refused_everywhere_with_their_old_certificates() {
    let mut c = Cluster::formed(4, 27301, 3);
    let rt = runtime();
    // Channels are made outside `block_on` too.
    let _rt = rt.enter();
    let li = leader(&c);
    let follower = (0..3).find(|&i| i != li).unwrap();
    let demoted = (0..3).find(|&i| i != li && i != follower).unwrap();
    let demoted_name = c.node(demoted).name.clone();
    let (leader_addr, follower_addr) = (c.node(li).addr(), c.node(follower).addr());
    let current = Creds::of(c.node(li));
    let worker = Creds::of(c.node(3));

    // Before anything: a current manager is let through Raft's check (its undecodable
    // payload is the only problem), the worker's session works.
    let e = rt
        .block_on(raft_vote(current.channel(&follower_addr)))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // --- A demoted manager keeps its manager certificate.
    let old_manager = Creds::of(c.node(demoted));
    assert!(old_manager.identity().is_manager());
    c.node(li).swarm_ok(&["node", "demote", &demoted_name]);
    wait_for(Duration::from_secs(60), || {
        let nodes = c.node(li).nodes().unwrap_or_default();
        let done = nodes.iter().any(|n| {
            n.description
                .as_ref()
                .is_some_and(|d| d.hostname == demoted_name)
                && n.role == proto::NodeRole::Worker as i32
                && n.manager_status.is_none()
        });
        let (cert, _, _) = c.node(demoted).cert_paths();
        let renewed = std::fs::read_to_string(cert).unwrap_or_default();
        done && swarm_manager::ca::parse_node_cert_pem(&renewed).is_ok_and(|id| !id.is_manager())
    })
    .unwrap_or_else(|e| panic!("the demotion did not complete: {e}\n{}", c.logs()));
    rt.block_on(async {
        for addr in [&leader_addr, &follower_addr] {
            let e = denied(
                "Control with a demoted manager's certificate",
                list_services(old_manager.channel(addr)).await,
            );
            assert!(e.message().contains("not a swarm manager"), "{e:?}");
            let e = denied(
                "Raft with a demoted manager's certificate",
                raft_vote(old_manager.channel(addr)).await,
            );
            assert!(e.message().contains("no longer a manager"), "{e:?}");
        }
        // It cannot speak for others: forged forwarded identities of a current manager
        // (Control) and of the worker (Dispatcher) are refused.
        let mut req = Request::new(proto::ListServicesRequest::default());
        swarm_manager::tls::with_forwarded_identity(&mut req, &current.identity());
        let e = denied(
            "Control forwarded by a demoted manager",
            ControlClient::new(old_manager.channel(&leader_addr))
                .list_services(req)
                .await,
        );
        assert!(e.message().contains("on behalf of"), "{e:?}");
        let mut req = Request::new(proto::SessionRequest::default());
        swarm_manager::tls::with_forwarded_identity(&mut req, &worker.identity());
        let e = denied(
            "a Dispatcher session forwarded by a demoted manager",
            DispatcherClient::new(old_manager.channel(&leader_addr))
                .session(req)
                .await,
        );
        assert!(e.message().contains("on behalf of"), "{e:?}");
        // Renewal (on the leader, and forwarded by a follower) gives a worker certificate.
        for addr in [&leader_addr, &follower_addr] {
            let r = renew(old_manager.channel(addr))
                .await
                .expect("a demoted manager renews as a worker");
            assert_eq!(r.role, proto::NodeRole::Worker as i32);
            let id = swarm_manager::ca::parse_node_cert_pem(&r.certificate).unwrap();
            assert!(!id.is_manager(), "renewed into {id:?}");
            assert_eq!(id.node_id, old_manager.identity().node_id);
        }
    });

    // --- A removed worker keeps its certificate; a session it holds at removal is closed.
    c.nodes[3].kill();
    let worker_name = c.node(3).name.clone();
    let (mut sess, mut assignments) = rt.block_on(async {
        let mut sess = session(worker.channel(&leader_addr))
            .await
            .expect("the worker's session before its removal");
        let first = next(&mut sess).await.expect("a first session message");
        let session_id = first.expect("a session message").session_id;
        let assignments = DispatcherClient::new(worker.channel(&leader_addr))
            .assignments(proto::AssignmentsRequest {
                session_id: session_id.clone(),
            })
            .await
            .expect("the worker's assignments before its removal")
            .into_inner();
        (sess, assignments)
    });
    c.node(li)
        .swarm_ok(&["node", "rm", "--force", &worker_name]);
    rt.block_on(async {
        // The open streams end with PermissionDenied (messages sent before it are skipped).
        for (what, end) in [
            ("session", drain(&mut sess).await),
            ("assignments", drain(&mut assignments).await),
        ] {
            let e = denied(&format!("the open {what} stream"), end);
            assert!(e.message().contains("removed"), "{what}: {e:?}");
        }
        for addr in [&leader_addr, &follower_addr] {
            let e = denied(
                "Control from a removed node",
                list_services(worker.channel(addr)).await,
            );
            assert!(!e.message().is_empty());
            denied(
                "Raft from a removed node",
                raft_vote(worker.channel(addr)).await,
            );
            let e = denied(
                "renewal of a removed node",
                renew(worker.channel(addr)).await,
            );
            assert!(e.message().contains("was removed"), "{e:?}");
        }
        let e = denied(
            "a new session of a removed node",
            session(worker.channel(&leader_addr)).await.map(|_| ()),
        );
        assert!(e.message().contains("was removed"), "{e:?}");
        let e = denied(
            "a heartbeat of a removed node",
            DispatcherClient::new(worker.channel(&leader_addr))
                .heartbeat(proto::HeartbeatRequest::default())
                .await,
        );
        assert!(e.message().contains("was removed"), "{e:?}");
    });

    // The survivors still serve: the current manager, the demoted node as a worker.
    let out = c.node(li).swarm_ok(&["node", "ls"]);
    assert_eq!(table(&out).len(), 3, "{out}");
    assert!(!out.contains(&worker_name), "{out}");
    rt.block_on(list_services(current.channel(&follower_addr)))
        .expect("a current manager is served");
}

/// Reads a stream until it ends: its final status (Ok(()) for a clean end).
async fn drain<T>(s: &mut tonic::Streaming<T>) -> Result<(), Status> {
    loop {
        match next(s).await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// Every path under `root` with its permission bits.
fn walk(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                dirs.push(e.path());
            }
            out.push((e.path(), md.permissions().mode() & 0o777, md.is_dir()));
        }
    }
    out
}

/// The data root is the node's alone; keys, tokens (in the Raft database), state and Raft
/// data are 0600 in 0700 directories; task logs 0640.
fn assert_private(node: &AgentProc) {
    use std::os::unix::fs::PermissionsExt;
    let root = &node.data_root;
    let mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", root.display());
    let all = walk(root);
    for (p, mode, dir) in &all {
        let rel = p.strip_prefix(root).unwrap();
        let secret = ["certificates", "raft", "state.json"]
            .iter()
            .any(|s| rel.starts_with(s));
        if secret {
            let want = if *dir { 0o700 } else { 0o600 };
            assert_eq!(*mode, want, "{}: {mode:o}", p.display());
        } else if rel.ends_with(swarm_agent::logs::LOG_FILE) {
            assert_eq!(*mode, 0o640, "{}: {mode:o}", p.display());
        }
    }
    for must in ["state.json", "certificates/swarm-node.key"] {
        assert!(root.join(must).exists(), "{must} in {}", root.display());
    }
}

/// Opens every file and directory of the data root to everyone (what an older version, or
/// a careless copy, leaves).
fn loosen(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for (p, _, dir) in walk(root) {
        let mode = if dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn data_roots_are_private_from_the_start_and_put_right_on_restart() {
    let mut c = Cluster::formed(2, 27401, 1);
    c.node(0)
        .create_service(&["--name", "talker", "--replicas", "2", "sim/app"]);
    wait_for(Duration::from_secs(30), || {
        tests::running(&c.node(0).tasks("talker").unwrap_or_default()).len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for n in &c.nodes {
        assert_private(n);
    }
    let db = c.node(0).data_root.join("raft/raft.redb");
    assert!(db.exists(), "the manager's Raft database");

    // Restarted over loose modes, both nodes put them right and the swarm works.
    for i in [1, 0] {
        c.nodes[i].stop();
        loosen(&c.nodes[i].data_root);
        c.nodes[i].start().unwrap();
    }
    wait_for(Duration::from_secs(60), || {
        c.node(0).swarm(&["node", "ls"]).ok()
            && c.node(0)
                .nodes()
                .unwrap_or_default()
                .iter()
                .all(|n| n.state() == proto::NodeState::Ready)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for n in &c.nodes {
        assert_private(n);
    }
}

#[test]
fn out_of_bounds_settings_and_unknown_task_states_are_refused_and_change_nothing() {
    let mut c = Cluster::new(2, 27501).unwrap();
    let n = c.node(0);
    for (flag, value, says) in [
        ("--cert-expiry", "1000000000h", "--cert-expiry"),
        ("--cert-expiry", "87601h", "at most 87600h"),
        ("--dispatcher-heartbeat", "1ms", "at least 1s"),
    ] {
        let o = c.init_with(0, &[flag, value]);
        assert!(!o.ok(), "init {flag} {value} succeeded");
        assert!(o.stderr.contains(says), "{flag} {value}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
        assert!(
            !n.data_root.join("state.json").exists(),
            "init {flag} {value} left a swarm behind"
        );
    }
    c.form(1).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let m = c.node(0);
    let o = m.swarm(&[
        "service",
        "create",
        "-d",
        "--name",
        "huge",
        "--replicas",
        "100000000",
        "sim/app",
    ]);
    assert!(!o.ok());
    assert!(o.stderr.contains("maximum of 100000"), "{}", o.stderr);
    m.create_service(&[
        "--name",
        "small",
        "--replicas",
        "1",
        "--constraint",
        "node.role==worker",
        "sim/app",
    ]);
    let o = m.swarm(&["service", "scale", "-d", "small=100000001"]);
    assert!(!o.ok());
    assert!(o.stderr.contains("maximum of 100000"), "{}", o.stderr);
    assert!(m.swarm(&["service", "inspect", "huge"]).code != 0);

    // An agent reporting a task state nobody knows is refused; nothing records it.
    wait_for(Duration::from_secs(30), || {
        tests::running(&m.tasks("small").unwrap_or_default()).len() == 1
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let mut tasks = m.tasks("small").unwrap();
    assert_eq!(tasks.len(), 1, "the refused scale changed the service");
    let task = tasks.remove(0);
    let creds = Creds::of(c.node(1));
    let leader_addr = c.node(0).addr();
    c.nodes[1].kill();
    let rt = runtime();
    let _rt = rt.enter();
    let e = rt.block_on(async {
        let mut s = session(creds.channel(&leader_addr))
            .await
            .expect("a session");
        let session_id = next(&mut s).await.unwrap().unwrap().session_id;
        DispatcherClient::new(creds.channel(&leader_addr))
            .update_task_status(proto::UpdateTaskStatusRequest {
                session_id,
                updates: vec![proto::TaskStatusUpdate {
                    task_id: task.id.clone(),
                    status: Some(proto::TaskStatus {
                        state: 999,
                        ..Default::default()
                    }),
                }],
            })
            .await
            .unwrap_err()
    });
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("unknown task state 999"), "{e:?}");
    let tasks = c.node(0).tasks("small").unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t.status.as_ref().is_none_or(|s| s.state != 999)),
        "{tasks:?}"
    );
}
