use super::*;

#[test]
fn bars_are_dockers() {
    assert_eq!(
        bar(1, 2),
        format!("[{}>{}] 1/2 nodes", "=".repeat(25), " ".repeat(25))
    );
    assert_eq!(bar(0, 5), format!("[>{}] 0/5 nodes", " ".repeat(50)));
    assert_eq!(bar(3, 3), format!("[{}>] 3/3 nodes", "=".repeat(50)));
}

#[test]
fn cluster_settings_in_info() {
    let c = Cluster {
        spec: Some(ClusterSpec {
            orchestration: Some(OrchestrationConfig {
                task_history_retention_limit: 7,
            }),
            dispatcher: Some(DispatcherConfig {
                heartbeat_period_ms: 10_000,
            }),
            ca_config: Some(CaConfig {
                node_cert_expiry_ms: 48 * 3600 * 1000,
                force_rotate: 2,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        cluster_info_text(&c, &InfoResponse::default()),
        " Orchestration:\n  Task History Retention Limit: 7\n Dispatcher:\n  Heartbeat Period: 10 seconds\n CA Configuration:\n  Expiry Duration: 2 days\n  Force Rotate: 2\n Root Rotation In Progress: false\n"
    );
    // A manager's own Raft timing, between the orchestration and the dispatcher as in Docker.
    let manager = InfoResponse {
        raft_heartbeat_ms: 600,
        raft_election_timeout_min_ms: 2000,
        raft_election_timeout_max_ms: 3000,
        ..Default::default()
    };
    assert_eq!(
        cluster_info_text(&c, &manager),
        " Orchestration:\n  Task History Retention Limit: 7\n Raft:\n  Heartbeat: 600ms\n  Election Timeout: 2s to 3s\n Dispatcher:\n  Heartbeat Period: 10 seconds\n CA Configuration:\n  Expiry Duration: 2 days\n  Force Rotate: 2\n Root Rotation In Progress: false\n"
    );
}

fn node_with(id: &str, state: NodeState, issuer_of: Option<&str>, trust: &str) -> Node {
    let tls_info = issuer_of.map(|ca| NodeTlsInfo {
        trust_root: trust.to_string(),
        cert_issuer_subject: vec![],
        cert_issuer_public_key: public_key_of(ca).unwrap(),
    });
    Node {
        id: id.into(),
        description: Some(NodeDescription {
            tls_info,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn rotation_progress_counts_the_nodes_that_are_up() {
    let old = swarm_manager::ca::RootCa::generate().unwrap();
    let new = swarm_manager::ca::RootCa::generate().unwrap();
    let bundle = format!("{}{}", old.cert_pem, new.cert_pem);
    let mut cluster = Cluster {
        root_ca: Some(RootCa {
            ca_cert: old.cert_pem.clone(),
            root_rotation: Some(RootRotation {
                ca_cert: new.cert_pem.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let nodes = vec![
        node_with("moved", NodeState::Ready, Some(&new.cert_pem), &bundle),
        node_with(
            "waiting",
            NodeState::Ready,
            Some(&old.cert_pem),
            &old.cert_pem,
        ),
        node_with("unknown", NodeState::Ready, None, ""),
        node_with("down", NodeState::Down, Some(&old.cert_pem), &old.cert_pem),
    ];
    let s = RotationStatus::of(&cluster, &nodes).unwrap();
    assert_eq!((s.tls_done, s.ca_done, s.total), (1, 0, 3));
    assert_eq!(s.desired_root, new.cert_pem);
    assert!(!s.done());
    assert!(root_digest(&new.cert_pem).starts_with("sha256:"));
    assert_eq!(root_digest(&new.cert_pem).len(), 7 + 64);

    // Finished: the new root alone, every node up trusts it alone.
    cluster.root_ca = Some(RootCa {
        ca_cert: new.cert_pem.clone(),
        ..Default::default()
    });
    let nodes = vec![
        node_with("a", NodeState::Ready, Some(&new.cert_pem), &new.cert_pem),
        node_with("b", NodeState::Unknown, Some(&new.cert_pem), &new.cert_pem),
        node_with("down", NodeState::Down, Some(&old.cert_pem), &old.cert_pem),
    ];
    let s = RotationStatus::of(&cluster, &nodes).unwrap();
    assert_eq!((s.tls_done, s.ca_done, s.total), (2, 2, 2));
    assert!(s.done());
}
