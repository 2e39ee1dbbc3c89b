use proto::{CaConfig, ClusterSpec};
use tonic::Code;

use super::*;
use crate::orchestrator::testutil::put;

async fn with_cluster() -> Store {
    let store = Store::memory();
    put(
        &store,
        vec![Object::Cluster(Cluster {
            id: "c1".into(),
            spec: Some(ClusterSpec {
                name: "default".into(),
                ca_config: Some(CaConfig::default()),
                ..Default::default()
            }),
            root_ca: Some(crate::ca::new_cluster_root_ca().unwrap()),
            ..Default::default()
        })],
    )
    .await;
    store
}

fn spec_of(store: &Store) -> ClusterSpec {
    store.read().cluster().unwrap().spec.clone().unwrap()
}

fn root_of(store: &Store) -> proto::RootCa {
    store.read().cluster().unwrap().root_ca.clone().unwrap()
}

fn request(spec: ClusterSpec) -> UpdateClusterRequest {
    UpdateClusterRequest {
        spec: Some(spec),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_changed_force_rotate_starts_a_root_rotation_and_the_new_key_never_leaves() {
    let store = with_cluster().await;
    let old = root_of(&store);

    // Other settings change nothing about the root.
    let mut spec = spec_of(&store);
    spec.ca_config.as_mut().unwrap().node_cert_expiry_ms = 3_600_000;
    let c = update(&store, request(spec.clone())).await.unwrap();
    assert!(c.root_ca.as_ref().unwrap().root_rotation.is_none());
    // Nor does a spec without CA settings.
    spec.ca_config = None;
    update(&store, request(spec)).await.unwrap();
    assert!(root_of(&store).root_rotation.is_none());

    let mut spec = spec_of(&store);
    spec.ca_config = Some(CaConfig {
        force_rotate: 1,
        ..Default::default()
    });
    let answered = update(&store, request(spec.clone())).await.unwrap();
    let shown = answered.root_ca.unwrap();
    let rotation = shown.root_rotation.unwrap();
    assert!(
        shown.ca_key.is_empty() && rotation.ca_key.is_empty(),
        "no key leaves"
    );
    assert_eq!(shown.last_forced_rotation, 1);

    let stored = root_of(&store);
    let r = stored.root_rotation.clone().unwrap();
    assert_eq!(
        stored.ca_cert, old.ca_cert,
        "the old root stays until the nodes moved"
    );
    assert_ne!(r.ca_cert, old.ca_cert);
    assert!(crate::ca::RootCa::from_pem(&r.ca_cert, &r.ca_key).is_ok());
    // The cross-signed copy: the new root's key, another issuer (its chains are checked in
    // the CA's tests).
    assert_eq!(
        crate::ca::issuer_info_of_ca(&r.cross_signed_ca_cert).unwrap(),
        crate::ca::issuer_info_of_ca(&r.ca_cert).unwrap()
    );
    assert_ne!(r.cross_signed_ca_cert, r.ca_cert);

    // The same counter again: no new rotation.
    update(&store, request(spec.clone())).await.unwrap();
    let again = root_of(&store);
    assert_eq!(again.root_rotation.unwrap().ca_cert, r.ca_cert);

    // A supplied root is refused, and nothing changes.
    let mut external = spec.clone();
    let ca = external.ca_config.as_mut().unwrap();
    ca.force_rotate = 2;
    ca.signing_ca_cert = old.ca_cert.clone();
    ca.signing_ca_key = old.ca_key.clone();
    let e = update(&store, request(external)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not supported"), "{}", e.message());
    assert_eq!(root_of(&store).last_forced_rotation, 1);
}

fn with_autolock(store: &Store, on: bool) -> ClusterSpec {
    let mut spec = spec_of(store);
    spec.encryption_config = Some(proto::EncryptionConfig {
        auto_lock_managers: on,
    });
    spec
}

async fn unlock_key(store: &Store) -> String {
    get_unlock_key(store, GetUnlockKeyRequest {})
        .await
        .unwrap()
        .unlock_key
}

#[tokio::test]
async fn autolock_makes_an_unlock_key_that_rotates_and_only_get_unlock_key_returns() {
    let store = with_cluster().await;
    assert_eq!(unlock_key(&store).await, "");
    let rotate = UpdateClusterRequest {
        rotate_manager_unlock_key: true,
        ..Default::default()
    };
    let err = update(&store, rotate.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "cannot rotate because autolock is not turned on"
    );

    let answered = update(&store, request(with_autolock(&store, true)))
        .await
        .unwrap();
    assert!(
        answered.unlock_key.is_empty(),
        "the key never leaves in the cluster"
    );
    let first = unlock_key(&store).await;
    assert!(first.starts_with("SWMKEY-1-"), "{first}");
    assert!(crate::raft::encryption::UnlockKey::parse(&first).is_ok());
    assert!(get(&store, GetClusterRequest {})
        .await
        .unwrap()
        .unlock_key
        .is_empty());

    // Other updates keep the key; a rotation replaces it.
    update(&store, request(with_autolock(&store, true)))
        .await
        .unwrap();
    assert_eq!(unlock_key(&store).await, first);
    update(&store, rotate).await.unwrap();
    let second = unlock_key(&store).await;
    assert!(second.starts_with("SWMKEY-1-") && second != first);

    update(&store, request(with_autolock(&store, false)))
        .await
        .unwrap();
    assert_eq!(unlock_key(&store).await, "");
}
