//! End-to-end: root CA rotation and the cluster settings after init, on real `test-agent`
//! processes driven by the real `swarm` CLI (loopback harness).

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use swarm_manager::ca;
use tests::{read, running, swarm_bin, wait_for, AgentClient, Cluster};

fn running_ids(c: &Cluster, service: &str) -> Vec<String> {
    let tasks = c.node(0).tasks(service).unwrap();
    let mut ids: Vec<String> = running(&tasks).iter().map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

fn node_state(c: &Cluster, via: usize, id: &str) -> Option<proto::NodeState> {
    c.node(via)
        .nodes()
        .ok()?
        .into_iter()
        .find(|n| n.id == id)
        .and_then(|n| n.status)
        .map(|s| s.state())
}

/// The ids of the node objects of node `i` (its hostname), newest membership last.
fn node_ids(c: &Cluster, i: usize) -> Vec<String> {
    let host = &c.node(i).name;
    c.node(0)
        .nodes()
        .unwrap()
        .into_iter()
        .filter(|n| n.description.as_ref().is_some_and(|d| &d.hostname == host))
        .map(|n| n.id)
        .collect()
}

/// `swarm ca --rotate` without `-d` on node `via`, failing the test after `timeout`.
fn rotate_and_follow(c: &Cluster, via: usize, timeout: Duration) -> String {
    let socket = c.node(via).socket();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = Command::new(swarm_bin())
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["ca", "--rotate"])
            .stdin(Stdio::null())
            .output();
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(timeout)
        .unwrap_or_else(|_| {
            panic!(
                "swarm ca --rotate did not finish in {timeout:?}\n{}\n{}",
                c.node(via).swarm(&["node", "ls"]).stdout,
                c.logs()
            )
        })
        .expect("running the swarm CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "swarm ca --rotate failed: {}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    stdout
}

#[test]
fn ca_rotate_moves_every_node_to_a_new_root_and_a_node_down_meanwhile_rejoins_with_a_token() {
    // 3 managers, 2 workers, and a sixth node (a worker) that is down during the rotation.
    let mut c = Cluster::formed(6, 27301, 3);
    let old_worker_token = c.token(0, "worker");
    let down_id = node_ids(&c, 5).pop().unwrap();
    c.nodes[5].stop();
    wait_for(Duration::from_secs(30), || {
        node_state(&c, 0, &down_id) == Some(proto::NodeState::Down)
    })
    .unwrap();
    c.node(0)
        .create_service(&["--name", "web", "--replicas", "4", "sim/app"]);
    wait_for(Duration::from_secs(30), || {
        running_ids(&c, "web").len() == 4
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", c.node(0).tasks("web")));
    let tasks_before = running_ids(&c, "web");

    let old_root = c.node(0).swarm_ok(&["ca"]);
    assert!(
        old_root.starts_with("-----BEGIN CERTIFICATE-----"),
        "{old_root}"
    );
    assert_eq!(
        c.node(1).swarm_ok(&["ca"]),
        old_root,
        "every manager shows the same root"
    );
    for i in 0..5 {
        let (cert, _, root) = c.node(i).cert_paths();
        assert!(ca::issued_by(&read(&cert), &old_root).unwrap());
        assert_eq!(read(&root).trim(), old_root.trim());
    }

    // Without -d: Docker's progress, then the new root.
    let out = rotate_and_follow(&c, 1, Duration::from_secs(120));
    eprintln!("swarm ca --rotate:\n{out}");
    assert!(out.contains("desired root digest: sha256:"), "{out}");
    assert!(out.contains("rotated TLS certificates"), "{out}");
    assert!(out.contains("rotated CA certificates"), "{out}");
    assert!(out.contains("5/5 nodes"), "{out}");
    let begin = out
        .find("-----BEGIN CERTIFICATE-----")
        .expect("the new root is printed");
    let new_root = out[begin..].trim().to_string() + "\n";
    assert_ne!(new_root.trim(), old_root.trim(), "a new root");
    for i in 0..3 {
        assert_eq!(
            c.node(i).swarm_ok(&["ca"]).trim(),
            new_root.trim(),
            "swarm ca on manager {i} prints the new root"
        );
    }
    let info = c.node(0).swarm_ok(&["info"]);
    assert!(info.contains("Root Rotation In Progress: false"), "{info}");

    // Every node that was up holds a certificate of the new root and trusts it alone; the
    // old root accepts none of them any more.
    wait_for(Duration::from_secs(30), || {
        (0..5).all(|i| {
            let (cert, _, root) = c.node(i).cert_paths();
            let cert = read(&cert);
            ca::issued_by(&cert, &new_root).unwrap_or(false)
                && read(&root).trim() == new_root.trim()
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for i in 0..5 {
        let (cert, _, _) = c.node(i).cert_paths();
        let cert = read(&cert);
        assert!(!ca::issued_by(&cert, &old_root).unwrap());
        assert!(ca::chain_verifies(&cert, &new_root).unwrap());
    }
    // The node objects say so too (node inspect's TLS info).
    let issuer = ca::issuer_info_of_ca(&new_root).unwrap();
    for n in c.node(0).nodes().unwrap() {
        if n.id == down_id {
            continue;
        }
        let tls = n.description.unwrap().tls_info.unwrap();
        assert_eq!(
            tls.cert_issuer_public_key, issuer.public_key,
            "node {}",
            n.id
        );
        assert_eq!(tls.trust_root.trim(), new_root.trim(), "node {}", n.id);
    }

    // node inspect shows it, the issuer's key in base64 as Docker prints it.
    let inspect = tests::json(&c.node(0).swarm_ok(&["node", "inspect", "self"]));
    let tls = &inspect[0]["description"]["tls_info"];
    assert_eq!(tls["trust_root"].as_str().unwrap().trim(), new_root.trim());
    assert!(tls["cert_issuer_public_key"].is_string(), "{tls}");

    // The services kept running: the same tasks, still running.
    assert_eq!(running_ids(&c, "web"), tasks_before);
    // The cluster still works under the new root: a new service gets tasks.
    c.node(2)
        .create_service(&["--name", "after", "--replicas", "2", "sim/app"]);
    wait_for(Duration::from_secs(30), || {
        running_ids(&c, "after").len() == 2
    })
    .unwrap();

    // The join tokens name the new root: the old one is refused by a joining node.
    let new_worker_token = c.token(0, "worker");
    assert_ne!(new_worker_token, old_worker_token);

    // The node that was down comes back with its old certificate: the managers no longer
    // trust it, so it stays down; it leaves and joins again with a join token.
    c.nodes[5].start().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(node_state(&c, 0, &down_id), Some(proto::NodeState::Down));
    c.node(5).swarm_ok(&["leave", "--force"]);
    let stale = c.node(5).swarm(&[
        "join",
        "--token",
        &old_worker_token,
        "--advertise-addr",
        &c.node(5).addr(),
        "--listen-addr",
        &c.node(5).addr(),
        &c.node(0).addr(),
    ]);
    assert!(
        !stale.ok(),
        "a token of the retired root is refused: {}",
        stale.stdout
    );
    c.join(5, 0, "worker").unwrap();
    let rejoined = node_ids(&c, 5)
        .into_iter()
        .find(|id| *id != down_id)
        .expect("a new node object for the rejoined node");
    wait_for(Duration::from_secs(30), || {
        node_state(&c, 0, &rejoined) == Some(proto::NodeState::Ready)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let (cert, _, _) = c.node(5).cert_paths();
    assert!(ca::issued_by(&read(&cert), &new_root).unwrap());
}

#[test]
fn swarm_update_changes_the_cluster_settings_and_they_take_effect() {
    let mut c = Cluster::formed(2, 27311, 1);
    let out = c.node(0).swarm_ok(&[
        "update",
        "--cert-expiry",
        "2h",
        "--task-history-limit",
        "2",
        "--dispatcher-heartbeat",
        "3s",
    ]);
    assert_eq!(out.trim(), "Swarm updated.");
    let info = c.node(0).swarm_ok(&["info"]);
    for line in [
        "Task History Retention Limit: 2",
        // The manager's own Raft timing (the agent's default --raft-heartbeat).
        " Raft:\n  Heartbeat: 150ms\n  Election Timeout: 500ms to 750ms\n",
        "Heartbeat Period: 3 seconds",
        "Expiry Duration: 2 hours",
    ] {
        assert!(info.contains(line), "{line}: {info}");
    }
    // Only the flags given change.
    c.node(0).swarm_ok(&["update", "--task-history-limit", "3"]);
    let info = c.node(0).swarm_ok(&["info"]);
    assert!(info.contains("Task History Retention Limit: 3"), "{info}");
    assert!(info.contains("Heartbeat Period: 3 seconds"), "{info}");

    // New certificates get the new expiry: a node joining now.
    let i = c.add_node().unwrap();
    c.join(i, 0, "worker").unwrap();
    let (cert, _, _) = c.node(i).cert_paths();
    let id = ca::parse_node_cert_pem(&read(&cert)).unwrap();
    let left = id
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(7000) && left <= Duration::from_secs(7200),
        "a 2h certificate, {left:?} left"
    );

    // The task reaper keeps the new history limit: 3 tasks per slot at most.
    c.node(0)
        .create_service(&["--name", "hist", "--replicas", "1", "sim/app"]);
    for _ in 0..5 {
        c.node(0)
            .swarm_ok(&["service", "update", "-d", "--force", "hist"]);
        wait_for(Duration::from_secs(30), || {
            let t = c.node(0).tasks("hist").unwrap();
            running(&t).len() == 1
                && t.iter()
                    .filter(|t| t.desired_state == proto::TaskState::Running as i32)
                    .count()
                    == 1
        })
        .unwrap();
    }
    wait_for(Duration::from_secs(30), || {
        c.node(0).tasks("hist").unwrap().len() <= 3
    })
    .unwrap_or_else(|e| panic!("{e}: {} tasks", c.node(0).tasks("hist").unwrap().len()));

    // Agents follow the new heartbeat period: with 20 s a worker that stops stays Ready
    // for a minute (3 missed periods), where the 3 s set above marks it down within 9 s.
    c.node(0)
        .swarm_ok(&["update", "--dispatcher-heartbeat", "20s"]);
    // A heartbeat of the old period (3 s, sent a little under it) that started after the
    // update is answered with the new period and sets the node's expiry 60 s ahead: wait two
    // old periods so that one surely did, even on a loaded machine.
    std::thread::sleep(Duration::from_secs(7));
    let worker = node_ids(&c, 1).pop().unwrap();
    c.nodes[1].stop();
    std::thread::sleep(Duration::from_secs(13));
    assert_eq!(
        node_state(&c, 0, &worker),
        Some(proto::NodeState::Ready),
        "a stopped worker is not down before 3 periods of 20 s"
    );

    // `swarm ca` flags need --rotate; --ca-cert is refused clearly.
    let o = c.node(0).swarm(&["ca", "--cert-expiry", "1h"]);
    assert!(!o.ok());
    assert!(
        o.stderr.contains("requires the `--rotate` flag"),
        "{}",
        o.stderr
    );
    let o = c
        .node(0)
        .swarm(&["ca", "--rotate", "--ca-cert", "/nonexistent.pem"]);
    assert!(!o.ok());
    assert!(o.stderr.contains("not supported"), "{}", o.stderr);
}
