use std::time::{Duration, SystemTime};

use proto::ca_client::CaClient;
use proto::ca_server::{Ca, CaServer};
use proto::node_ca_client::NodeCaClient;
use proto::node_ca_server::{NodeCa, NodeCaServer};
use tonic::Code;

use super::*;
use crate::ca::{
    new_cluster_root_ca, new_key_and_csr, parse_join_token, parse_node_cert_pem, token_matches_ca,
};
use crate::store::Kind;

/// A cluster object with a fresh root CA and join tokens.
fn new_cluster(expiry_ms: i64) -> proto::Cluster {
    proto::Cluster {
        id: new_id(),
        meta: None,
        spec: Some(proto::ClusterSpec {
            name: "default".into(),
            ca_config: Some(proto::CaConfig {
                node_cert_expiry_ms: expiry_ms,
                ..Default::default()
            }),
            ..Default::default()
        }),
        root_ca: Some(new_cluster_root_ca().unwrap()),
        ..Default::default()
    }
}

async fn setup(expiry_ms: i64) -> (CaService, Store, proto::Cluster) {
    let store = Store::memory();
    let cluster = new_cluster(expiry_ms);
    store
        .write(vec![Op::Create(Object::Cluster(cluster.clone()))])
        .await
        .unwrap();
    (
        CaService::new(store.clone(), Router::local()),
        store,
        cluster,
    )
}

fn tokens(c: &proto::Cluster) -> proto::JoinTokens {
    c.root_ca.clone().unwrap().join_tokens.unwrap()
}

fn join_req(token: &str, csr: &str) -> Request<IssueNodeCertificateRequest> {
    Request::new(IssueNodeCertificateRequest {
        csr: csr.to_string(),
        token: token.to_string(),
        advertise_addr: "10.0.0.9:4242".into(),
        description: Some(proto::NodeDescription {
            hostname: "host-a".into(),
            ..Default::default()
        }),
    })
}

#[tokio::test]
async fn worker_token_creates_a_worker_node() {
    let (svc, store, cluster) = setup(0).await;
    let (_key, csr) = new_key_and_csr().unwrap();
    let resp = svc
        .issue_node_certificate(join_req(&tokens(&cluster).worker, &csr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.role, NodeRole::Worker as i32);
    assert_eq!(resp.cluster_id, cluster.id);
    assert_eq!(resp.root_ca, cluster.root_ca.as_ref().unwrap().ca_cert);
    let id = parse_node_cert_pem(&resp.certificate).unwrap();
    assert_eq!(id.node_id, resp.node_id);
    assert_eq!(id.role, NodeRole::Worker);
    assert_eq!(id.cluster_id, cluster.id);
    // Default validity: 90 days.
    let left = id.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(89 * 24 * 3600) && left <= DEFAULT_NODE_CERT_VALIDITY);

    let state = store.read();
    let node = state.node(&resp.node_id).expect("node stored");
    assert_eq!(node.role_enum(), NodeRole::Worker);
    assert_eq!(node.desired_role(), NodeRole::Worker);
    assert_eq!(node.availability(), proto::NodeAvailability::Active);
    assert_eq!(node.state(), proto::NodeState::Unknown);
    assert_eq!(node.hostname(), "host-a");
    assert!(node.manager_status.is_none());
}

#[tokio::test]
async fn manager_token_creates_a_manager_node_with_configured_expiry() {
    let (svc, store, cluster) = setup(2 * 3600 * 1000).await;
    let (_key, csr) = new_key_and_csr().unwrap();
    let resp = svc
        .issue_node_certificate(join_req(&tokens(&cluster).manager, &csr))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.role, NodeRole::Manager as i32);
    let id = parse_node_cert_pem(&resp.certificate).unwrap();
    assert_eq!(id.role, NodeRole::Manager);
    let left = id.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(7100) && left <= Duration::from_secs(7200));
    let state = store.read();
    let node = state.node(&resp.node_id).unwrap();
    assert_eq!(node.role_enum(), NodeRole::Manager);
    let ms = node.manager_status.as_ref().unwrap();
    assert_eq!(ms.addr, "10.0.0.9:4242");
    assert_eq!(ms.raft_id, 0);
}

#[tokio::test]
async fn wrong_malformed_and_rotated_tokens_are_refused() {
    let (svc, store, cluster) = setup(0).await;
    let (_key, csr) = new_key_and_csr().unwrap();
    let ca_cert = cluster.root_ca.as_ref().unwrap().ca_cert.clone();

    // Right format and CA digest, wrong secret.
    let wrong = crate::ca::generate_join_token(&ca_cert).unwrap();
    let err = svc
        .issue_node_certificate(join_req(&wrong, &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "invalid join token");

    let err = svc
        .issue_node_certificate(join_req("SWMTKN-1-xyz", &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().starts_with("invalid join token: "),
        "{}",
        err.message()
    );

    // Rotate the worker token: the old one stops working, the new one works.
    let old = tokens(&cluster).worker;
    let mut rotated = store.read().cluster().unwrap().clone();
    let rc = rotated.root_ca.as_mut().unwrap();
    let new_worker = crate::ca::generate_join_token(&rc.ca_cert).unwrap();
    rc.join_tokens.as_mut().unwrap().worker = new_worker.clone();
    store
        .write(vec![Op::Update {
            object: Object::Cluster(rotated),
            check_version: false,
        }])
        .await
        .unwrap();
    let err = svc
        .issue_node_certificate(join_req(&old, &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    svc.issue_node_certificate(join_req(&new_worker, &csr))
        .await
        .unwrap();

    // None of the refused calls created a node.
    assert_eq!(store.read().nodes().count(), 1);
}

#[tokio::test]
async fn bad_csr_and_missing_credentials() {
    let (svc, store, cluster) = setup(0).await;
    let err = svc
        .issue_node_certificate(join_req(&tokens(&cluster).worker, "not a csr"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(store.read().nodes().count(), 0);

    let (_key, csr) = new_key_and_csr().unwrap();
    let err = svc
        .issue_node_certificate(join_req("", &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        err.message(),
        "a join token or a valid node certificate is required"
    );
}

#[tokio::test]
async fn root_ca_certificate_needs_a_cluster() {
    let store = Store::memory();
    let svc = CaService::new(store.clone(), Router::local());
    let err = svc
        .get_root_ca_certificate(Request::new(GetRootCaCertificateRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let (_key, csr) = new_key_and_csr().unwrap();
    let err = svc
        .issue_node_certificate(join_req("x", &csr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    let cluster = new_cluster(0);
    store
        .write(vec![Op::Create(Object::Cluster(cluster.clone()))])
        .await
        .unwrap();
    let resp = svc
        .get_root_ca_certificate(Request::new(GetRootCaCertificateRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.certificate, cluster.root_ca.unwrap().ca_cert);
}

/// The whole join + renewal flow over mTLS, as an agent does it.
#[tokio::test]
async fn join_then_renew_over_tls_follows_the_stored_role() {
    let (svc, store, cluster) = setup(0).await;
    let root_ca = cluster.root_ca.clone().unwrap();
    // The manager's own serving certificate.
    let signer = RootCa::from_pem(&root_ca.ca_cert, &root_ca.ca_key).unwrap();
    let (mkey, mcsr) = new_key_and_csr().unwrap();
    let mcert = signer
        .sign_node_cert(
            &mcsr,
            "leader",
            NodeRole::Manager,
            &cluster.id,
            Duration::from_secs(3600),
        )
        .unwrap();
    let cfg = tls::server_config(
        &root_ca.ca_cert,
        tls::ReloadableCert::new(&mcert, &mkey).unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CaServer::new(svc.clone()))
            .add_service(NodeCaServer::new(svc))
            .serve_with_incoming(tls::incoming(listener, cfg)),
    );

    // Join: fetch the root without trusting anything, check it against the token.
    let token = tokens(&cluster).worker;
    let root = CaClient::new(tls::channel(&addr, tls::insecure_client_config()))
        .get_root_ca_certificate(GetRootCaCertificateRequest {})
        .await
        .unwrap()
        .into_inner()
        .certificate;
    assert!(token_matches_ca(&parse_join_token(&token).unwrap(), &root));
    let (key, csr) = new_key_and_csr().unwrap();
    let joined = NodeCaClient::new(tls::channel(
        &addr,
        tls::client_config(&root, None).unwrap(),
    ))
    .issue_node_certificate(join_req(&token, &csr).into_inner())
    .await
    .unwrap()
    .into_inner();
    assert_eq!(joined.role, NodeRole::Worker as i32);

    let renew = |cert: String, key: String| {
        let root = root.clone();
        let addr = addr.clone();
        async move {
            let cfg = tls::client_config(&root, Some((&cert, &key))).unwrap();
            let (_k, csr) = new_key_and_csr().unwrap();
            NodeCaClient::new(tls::channel(&addr, cfg))
                .issue_node_certificate(IssueNodeCertificateRequest {
                    csr,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };

    // Renewal with the node's certificate: same node, same role.
    let renewed = renew(joined.certificate.clone(), key.clone())
        .await
        .unwrap();
    assert_eq!(renewed.node_id, joined.node_id);
    assert_eq!(
        parse_node_cert_pem(&renewed.certificate).unwrap().role,
        NodeRole::Worker
    );

    // Promotion in the store takes effect at the next renewal.
    let mut node = store.read().node(&joined.node_id).unwrap().clone();
    node.role = NodeRole::Manager as i32;
    store
        .write(vec![Op::Update {
            object: Object::Node(node),
            check_version: false,
        }])
        .await
        .unwrap();
    let promoted = renew(joined.certificate.clone(), key.clone())
        .await
        .unwrap();
    assert_eq!(promoted.role, NodeRole::Manager as i32);
    let id = parse_node_cert_pem(&promoted.certificate).unwrap();
    assert_eq!(
        (id.node_id.as_str(), id.role),
        (joined.node_id.as_str(), NodeRole::Manager)
    );

    // A removed node cannot renew.
    store
        .write(vec![Op::Delete {
            kind: Kind::Node,
            id: joined.node_id.clone(),
        }])
        .await
        .unwrap();
    let err = renew(joined.certificate, key).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("was removed from the swarm"));
}

#[tokio::test]
async fn during_a_root_rotation_nodes_get_certificates_of_the_new_root_with_both_roots() {
    let (svc, store, mut cluster) = setup(0).await;
    let old_cert = cluster.root_ca.as_ref().unwrap().ca_cert.clone();
    let next = crate::ca::RootCa::generate().unwrap();
    let root = cluster.root_ca.as_mut().unwrap();
    root.root_rotation = Some(crate::ca::start_rotation(root, &next).unwrap());
    let stored = store.read().cluster().unwrap().clone();
    cluster.meta = stored.meta;
    store
        .write(vec![Op::Update {
            object: Object::Cluster(cluster.clone()),
            check_version: true,
        }])
        .await
        .unwrap();

    let (_key, csr) = new_key_and_csr().unwrap();
    let resp = svc
        .issue_node_certificate(join_req(&tokens(&cluster).worker, &csr))
        .await
        .unwrap()
        .into_inner();
    // The leaf comes from the new key, with the cross-signed root after it: accepted by
    // nodes that trust the old root only and by nodes that trust the new one.
    assert_eq!(resp.certificate.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(crate::ca::issued_by(&resp.certificate, &next.cert_pem).unwrap());
    assert!(crate::ca::chain_verifies(&resp.certificate, &old_cert).unwrap());
    assert!(crate::ca::chain_verifies(&resp.certificate, &next.cert_pem).unwrap());
    // The node trusts both roots from now on.
    assert_eq!(
        resp.root_ca,
        crate::ca::trust_bundle(cluster.root_ca.as_ref().unwrap())
    );
    assert!(resp.root_ca.contains(&next.cert_pem) && resp.root_ca.contains(old_cert.trim()));
    // The node object says which key issued its certificate (what the reconciler follows).
    let state = store.read();
    let tls = state
        .node(&resp.node_id)
        .unwrap()
        .description
        .clone()
        .unwrap()
        .tls_info
        .unwrap();
    let issuer = crate::ca::issuer_info_of_ca(&next.cert_pem).unwrap();
    assert_eq!(tls.cert_issuer_public_key, issuer.public_key);
    assert_eq!(tls.cert_issuer_subject, issuer.subject);
    assert_eq!(tls.trust_root, resp.root_ca);
}
