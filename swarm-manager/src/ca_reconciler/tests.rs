use proto::{Cluster, NodeState, NodeTlsInfo};

use super::*;
use crate::ca::{issuer_info_of_ca, new_cluster_root_ca, start_rotation, RootCa};
use crate::orchestrator::testutil::{apply, node, put};

fn tls_info_of(ca_cert: &str) -> NodeTlsInfo {
    let i = issuer_info_of_ca(ca_cert).unwrap();
    NodeTlsInfo {
        trust_root: ca_cert.to_string(),
        cert_issuer_subject: i.subject,
        cert_issuer_public_key: i.public_key,
    }
}

fn with_tls(mut n: proto::Node, ca_cert: &str) -> proto::Node {
    n.description.get_or_insert_with(Default::default).tls_info = Some(tls_info_of(ca_cert));
    n
}

async fn set_issuer(store: &Store, id: &str, ca_cert: &str) {
    store
        .update_node(id, |n| {
            n.description.get_or_insert_with(Default::default).tls_info =
                Some(tls_info_of(ca_cert));
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn rotation_finishes_once_every_node_that_is_up_has_moved() {
    let store = Store::memory();
    let mut root = new_cluster_root_ca().unwrap();
    let old_cert = root.ca_cert.clone();
    let old_tokens = root.join_tokens.clone();
    put(
        &store,
        vec![
            Object::Cluster(Cluster {
                id: "c1".into(),
                root_ca: Some(root.clone()),
                ..Default::default()
            }),
            Object::Node(with_tls(node("n1", NodeState::Ready), &old_cert)),
            Object::Node(with_tls(node("n2", NodeState::Ready), &old_cert)),
            Object::Node(with_tls(node("down", NodeState::Down), &old_cert)),
        ],
    )
    .await;
    // No rotation: nothing to do.
    assert!(reconcile(&store.read()).is_empty());
    assert_eq!(rotation_progress(&store.read()), None);

    let next = RootCa::generate().unwrap();
    root.root_rotation = Some(start_rotation(&root, &next).unwrap());
    let mut cluster = store.read().cluster().unwrap().clone();
    cluster.root_ca = Some(root);
    store
        .write(vec![Op::Update {
            object: Object::Cluster(cluster),
            check_version: true,
        }])
        .await
        .unwrap();
    assert_eq!(rotation_progress(&store.read()), Some((0, 2)));
    assert!(reconcile(&store.read()).is_empty());

    set_issuer(&store, "n1", &next.cert_pem).await;
    assert_eq!(rotation_progress(&store.read()), Some((1, 2)));
    assert!(reconcile(&store.read()).is_empty(), "n2 has not moved yet");

    set_issuer(&store, "n2", &next.cert_pem).await;
    assert_eq!(rotation_progress(&store.read()), Some((2, 2)));
    let plan = reconcile(&store.read());
    assert_eq!(plan.ops.len(), 1);
    apply(&store, plan).await;

    let st = store.read();
    let done = st.cluster().unwrap().root_ca.clone().unwrap();
    assert_eq!(
        done.ca_cert, next.cert_pem,
        "the new root is the cluster's root"
    );
    assert!(done.root_rotation.is_none());
    assert_ne!(
        done.join_tokens, old_tokens,
        "the join tokens name the new root"
    );
    assert_eq!(rotation_progress(&st), None);
    assert!(reconcile(&st).is_empty());
}
