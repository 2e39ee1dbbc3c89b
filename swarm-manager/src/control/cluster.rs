//! GetCluster and UpdateCluster (spec, join-token rotation, autolock and its unlock key),
//! GetUnlockKey. The CA key never leaves; the unlock key only through GetUnlockKey.

use proto::{
    Cluster, GetClusterRequest, GetUnlockKeyRequest, GetUnlockKeyResponse, UpdateClusterRequest,
};
use tonic::Status;

use super::linearize;
use super::services::UNCONDITIONAL_RETRIES;
use super::validate::validate_cluster_spec;
use crate::api::{propose_status, store_status};
use crate::store::{Kind, Object, Op, ProposeError, State, Store, StoreError};

/// The cluster as callers may see it: without the root CA key and the unlock key.
pub(super) fn redacted(mut c: Cluster) -> Cluster {
    c.unlock_key.clear();
    if let Some(ca) = c.root_ca.as_mut() {
        ca.ca_key.clear();
        if let Some(r) = ca.root_rotation.as_mut() {
            r.ca_key.clear();
        }
    }
    c
}

fn current(st: &State) -> Result<&Cluster, Status> {
    st.cluster().ok_or_else(|| {
        Status::not_found(
            "cluster not found: this manager holds no cluster object yet (run swarm init, or wait until it has caught up with the leader)",
        )
    })
}

pub(super) async fn get(store: &Store, _req: GetClusterRequest) -> Result<Cluster, Status> {
    linearize(store).await?;
    let st = store.read();
    current(&st).cloned().map(redacted)
}

/// `swarm unlock-key`: the key, empty while autolock is off.
pub(super) async fn get_unlock_key(
    store: &Store,
    _req: GetUnlockKeyRequest,
) -> Result<GetUnlockKeyResponse, Status> {
    linearize(store).await?;
    let st = store.read();
    let c = current(&st)?;
    Ok(GetUnlockKeyResponse {
        unlock_key: c.unlock_key.clone(),
        version: c.meta.as_ref().map_or(0, |m| m.version),
    })
}

fn autolock(c: &Cluster) -> bool {
    c.spec
        .as_ref()
        .and_then(|s| s.encryption_config.as_ref())
        .is_some_and(|e| e.auto_lock_managers)
}

/// Autolock turned on gets a new unlock key, turned off loses it; `--rotate` asks for a
/// new one, refused while autolock is off (Docker's message). Every manager re-wraps its
/// Raft data key once the change is applied (`raft/deks.rs`).
fn update_unlock_key(next: &mut Cluster, rotate: bool) -> Result<(), Status> {
    if !autolock(next) {
        if rotate {
            return Err(Status::failed_precondition(
                "cannot rotate because autolock is not turned on",
            ));
        }
        next.unlock_key.clear();
    } else if rotate || next.unlock_key.is_empty() {
        next.unlock_key = crate::raft::encryption::UnlockKey::generate().human();
    }
    Ok(())
}

fn updated_cluster(st: &State, req: &UpdateClusterRequest) -> Result<Cluster, Status> {
    let cur = current(st)?;
    let version = cur.meta.as_ref().map_or(0, |m| m.version);
    if req.cluster_version != 0 && version != req.cluster_version {
        return Err(store_status(StoreError::VersionMismatch {
            kind: Kind::Cluster,
            id: cur.id.clone(),
            expected: req.cluster_version,
            actual: version,
        }));
    }
    let mut next = cur.clone();
    if let Some(spec) = &req.spec {
        let mut spec = spec.clone();
        if spec.name.is_empty() {
            spec.name = cur
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
        }
        // A changed counter asks for a rotation (a spec without CA settings asks nothing).
        let force_rotate = spec.ca_config.as_ref().map(|c| c.force_rotate);
        next.spec = Some(spec);
        let root = next.root_ca.get_or_insert_with(Default::default);
        if let Some(n) = force_rotate.filter(|n| *n != root.last_forced_rotation) {
            start_root_rotation(root, n)?;
        }
    }
    update_unlock_key(&mut next, req.rotate_manager_unlock_key)?;
    if req.rotate_worker_token || req.rotate_manager_token {
        let root = next.root_ca.get_or_insert_with(Default::default);
        if root.ca_cert.is_empty() {
            return Err(Status::failed_precondition(
                "the cluster has no root CA certificate; join tokens cannot be generated",
            ));
        }
        let token = |which: &str| {
            crate::ca::generate_join_token(&root.ca_cert)
                .map_err(|e| Status::internal(format!("generating a new {which} join token: {e}")))
        };
        let worker = req
            .rotate_worker_token
            .then(|| token("worker"))
            .transpose()?;
        let manager = req
            .rotate_manager_token
            .then(|| token("manager"))
            .transpose()?;
        let tokens = root.join_tokens.get_or_insert_with(Default::default);
        if let Some(w) = worker {
            tokens.worker = w;
        }
        if let Some(m) = manager {
            tokens.manager = m;
        }
    }
    Ok(next)
}

/// `swarm ca --rotate`: a new root, cross-signed by the current one; the CA signs with it
/// from now on and the CA reconciler finishes the rotation once every node has moved.
fn start_root_rotation(root: &mut proto::RootCa, force_rotate: u64) -> Result<(), Status> {
    if root.ca_cert.is_empty() || root.ca_key.is_empty() {
        return Err(Status::failed_precondition(
            "the cluster has no root CA key in the store; the root CA cannot be rotated",
        ));
    }
    let next = crate::ca::RootCa::generate()
        .map_err(|e| Status::internal(format!("generating the new root CA: {e}")))?;
    let rotation = crate::ca::start_rotation(root, &next)
        .map_err(|e| Status::internal(format!("starting the root rotation: {e}")))?;
    tracing::info!(
        from = %root.ca_cert_hash,
        to = %next.digest(),
        replaces_rotation = root.root_rotation.is_some(),
        "root CA rotation started"
    );
    root.root_rotation = Some(rotation);
    root.last_forced_rotation = force_rotate;
    Ok(())
}

/// `--ca-cert`/`--ca-key` (an operator-supplied root) are refused: the cross-signed
/// transition needs the new root's subject to be one this CA writes.
fn refuse_external_root(spec: &proto::ClusterSpec) -> Result<(), Status> {
    let ca = spec.ca_config.as_ref();
    if ca.is_some_and(|c| !c.signing_ca_cert.is_empty() || !c.signing_ca_key.is_empty()) {
        return Err(Status::invalid_argument(
            "rotating to a supplied root CA certificate and key (--ca-cert/--ca-key) is not supported; run `swarm ca --rotate` without them to rotate to a newly generated root",
        ));
    }
    Ok(())
}

pub(super) async fn update(store: &Store, req: UpdateClusterRequest) -> Result<Cluster, Status> {
    if let Some(spec) = &req.spec {
        validate_cluster_spec(spec)?;
        refuse_external_root(spec)?;
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let next = {
            let st = store.read();
            updated_cluster(&st, &req)?
        };
        tracing::info!(
            cluster = %next.id,
            rotate_worker_token = req.rotate_worker_token,
            rotate_manager_token = req.rotate_manager_token,
            "updating cluster"
        );
        match store
            .write(vec![Op::Update {
                object: Object::Cluster(next),
                check_version: true,
            }])
            .await
        {
            Ok(objs) => {
                return match objs.into_iter().next().flatten() {
                    Some(Object::Cluster(c)) => Ok(redacted(c)),
                    _ => Err(Status::internal(
                        "the store did not return the written cluster",
                    )),
                }
            }
            Err(ProposeError::Store(StoreError::VersionMismatch { .. }))
                if req.cluster_version == 0 && attempt < UNCONDITIONAL_RETRIES => {}
            Err(e) => return Err(propose_status(e)),
        }
    }
}

#[cfg(test)]
mod tests;
