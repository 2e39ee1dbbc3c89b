//! The root rotation reconciler (leader only; SwarmKit's `ca/reconciler.go`): while the
//! cluster's root CA holds a `RootRotation`, it waits until every node that is not down holds
//! a certificate issued by the new root (`Node.description.tls_info`, which the CA records
//! when it issues one), then makes the new root the cluster's only root: the old root is
//! retired, the join tokens name the new root, and the trust bundle the dispatcher sends
//! changes, so every node renews once more and trusts the new root alone.
//!
//! Nodes move by themselves: the trust bundle in their session changes when a rotation
//! starts (both roots), and a node whose trust differs renews its certificate. A node that
//! is down during the rotation is not waited for; it rejoins with a join token.

use std::time::Duration;

use proto::NodeState;

use crate::ca::{desired_issuer, finish_rotation, IssuerInfo};
use crate::orchestrator::reconciler::{run_reconciler, Plan};
use crate::store::{Object, Op, State, Store};

pub struct CaReconciler {
    store: Store,
}

impl CaReconciler {
    pub fn new(store: Store) -> Self {
        CaReconciler { store }
    }

    pub async fn run(self) {
        run_reconciler(
            self.store,
            "ca-reconciler",
            Duration::from_millis(200),
            |state, _now| reconcile(state),
        )
        .await
    }
}

/// Whether a node's certificate comes from `issuer` (a node the CA has not issued a
/// certificate to since the field exists counts as not moved).
fn has_issuer(node: &proto::Node, issuer: &IssuerInfo) -> bool {
    node.description
        .as_ref()
        .and_then(|d| d.tls_info.as_ref())
        .is_some_and(|t| {
            t.cert_issuer_public_key == issuer.public_key && t.cert_issuer_subject == issuer.subject
        })
}

/// The nodes a rotation waits for and how many of them hold a certificate of the new root.
pub fn rotation_progress(state: &State) -> Option<(usize, usize)> {
    let root = state.cluster()?.root_ca.as_ref()?;
    root.root_rotation.as_ref()?;
    let issuer = desired_issuer(root).ok()?;
    let waited: Vec<&proto::Node> = state
        .nodes()
        .filter(|n| n.state() != NodeState::Down)
        .collect();
    let moved = waited.iter().filter(|n| has_issuer(n, &issuer)).count();
    Some((moved, waited.len()))
}

/// One round: finish the rotation once every node that is not down has moved.
pub fn reconcile(state: &State) -> Plan {
    let mut plan = Plan::default();
    let Some((moved, total)) = rotation_progress(state) else {
        return plan;
    };
    if moved < total {
        tracing::debug!(moved, total, "root rotation: waiting for nodes to renew");
        return plan;
    }
    let Some(cluster) = state.cluster() else {
        return plan;
    };
    let Some(root) = cluster.root_ca.as_ref() else {
        return plan;
    };
    match finish_rotation(root) {
        Ok(done) => {
            tracing::info!(root = %done.ca_cert_hash, nodes = total, "root rotation complete: the new root CA is the only one");
            let mut next = cluster.clone();
            next.root_ca = Some(done);
            plan.ops.push(Op::Update {
                object: Object::Cluster(next),
                check_version: true,
            });
        }
        Err(e) => tracing::error!(error = %e, "cannot finish the root rotation"),
    }
    plan
}

#[cfg(test)]
mod tests;
