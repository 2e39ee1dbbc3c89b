//! Raft membership follows the managers: joining managers are added as voters, leaving and
//! demoted managers are removed, and every node object shows its manager status
//! (Leader / Reachable / Unreachable) as the leader sees it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::BasicNode;
use proto::raft_membership_client::RaftMembershipClient;
use proto::raft_membership_server::RaftMembership;
use proto::{
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, ManagerStatus, NodeRole, Reachability,
};
use tonic::{Request, Response, Status};

use crate::api::propose_status;
use crate::raft::network::PeerHealth;
use crate::raft::Raft;
use crate::router::Router;
use crate::store::{Object, Op, Store};

/// A peer that answered the leader within this time is Reachable.
const REACHABLE_WITHIN: Duration = Duration::from_secs(3);

/// Serializes membership changes: openraft accepts one at a time.
#[derive(Clone)]
pub struct Membership {
    raft: Raft,
    store: Store,
    router: Router,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Membership {
    pub fn new(raft: Raft, store: Store, router: Router) -> Self {
        Membership {
            raft,
            store,
            router,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Adds a manager as a voter once it has caught up as a learner.
    pub async fn add_voter(&self, raft_id: u64, addr: &str) -> Result<(), Status> {
        let _g = self.lock.lock().await;
        if self.voters().contains(&raft_id) {
            return Ok(());
        }
        self.raft
            .add_learner(
                raft_id,
                BasicNode {
                    addr: addr.to_string(),
                },
                true,
            )
            .await
            .map_err(|e| Status::unavailable(format!("adding manager {addr} as learner: {e}")))?;
        let mut voters = self.voters();
        voters.insert(raft_id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Status::unavailable(format!("adding manager {addr} as voter: {e}")))?;
        Ok(())
    }

    /// Removes a manager from the voters. Refuses to remove the last one.
    pub async fn remove_voter(&self, raft_id: u64) -> Result<(), Status> {
        let _g = self.lock.lock().await;
        let mut voters = self.voters();
        if !voters.contains(&raft_id) {
            return Ok(());
        }
        if voters.len() == 1 {
            return Err(Status::failed_precondition(
                "this is the last manager of the swarm: it cannot leave the raft cluster",
            ));
        }
        voters.remove(&raft_id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Status::unavailable(format!("removing raft member {raft_id}: {e}")))?;
        Ok(())
    }

    /// The caller must be a manager by its certificate and, in the store, now: a removed
    /// or demoted manager cannot add itself back to Raft or take others out.
    fn require_manager<T>(&self, req: &Request<T>) -> Result<crate::ca::NodeIdentity, Status> {
        let (id, role) = crate::api::caller(req, &self.store.read())?.ok_or_else(|| {
            Status::unauthenticated("a manager certificate issued by the swarm CA is required")
        })?;
        if id.role != NodeRole::Manager || role != NodeRole::Manager {
            return Err(Status::permission_denied(
                "only managers may change the raft membership",
            ));
        }
        Ok(id)
    }

    /// Sets the node's manager status (raft id and address).
    async fn set_manager_status(
        &self,
        node_id: &str,
        status: Option<ManagerStatus>,
    ) -> Result<(), Status> {
        self.store
            .update_node(node_id, |n| n.manager_status = status.clone())
            .await
            .map(|_| ())
            .map_err(propose_status)
    }
}

#[tonic::async_trait]
impl RaftMembership for Membership {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let id = self.require_manager(&req)?;
        if let Some(ch) = self.router.leader_channel()? {
            let mut fwd = Request::new(req.into_inner());
            crate::tls::with_forwarded_identity(&mut fwd, &id);
            return RaftMembershipClient::new(ch).join(fwd).await;
        }
        let r = req.into_inner();
        let node = self
            .store
            .read()
            .node(&id.node_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("node {} not found", id.node_id)))?;
        if node.role_enum() != NodeRole::Manager {
            return Err(Status::permission_denied(format!(
                "node {} is not a manager",
                id.node_id
            )));
        }
        if r.raft_id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument(
                "join needs a raft id and an address",
            ));
        }
        tracing::info!(node = %id.node_id, raft_id = r.raft_id, addr = %r.addr, "manager joining raft");
        self.set_manager_status(
            &id.node_id,
            Some(ManagerStatus {
                raft_id: r.raft_id,
                addr: r.addr.clone(),
                leader: false,
                reachability: Reachability::Reachable as i32,
            }),
        )
        .await?;
        self.add_voter(r.raft_id, &r.addr).await?;
        Ok(Response::new(JoinResponse {}))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let id = self.require_manager(&req)?;
        if let Some(ch) = self.router.leader_channel()? {
            let mut fwd = Request::new(req.into_inner());
            crate::tls::with_forwarded_identity(&mut fwd, &id);
            return RaftMembershipClient::new(ch).leave(fwd).await;
        }
        let node_id = {
            let r = req.into_inner();
            if r.node_id.is_empty() {
                id.node_id
            } else {
                r.node_id
            }
        };
        let raft_id = self
            .store
            .read()
            .node(&node_id)
            .and_then(|n| n.manager_status.as_ref().map(|m| m.raft_id))
            .unwrap_or(0);
        if raft_id != 0 {
            self.remove_voter(raft_id).await?;
        }
        self.set_manager_status(&node_id, None).await?;
        Ok(Response::new(LeaveResponse {}))
    }
}

/// Leader-only: carries out promotions and demotions, and keeps each manager's
/// leader flag and reachability up to date in its node object.
pub struct RoleManager {
    membership: Membership,
    health: PeerHealth,
    self_raft_id: u64,
}

impl RoleManager {
    pub fn new(membership: Membership, health: PeerHealth, self_raft_id: u64) -> Self {
        RoleManager {
            membership,
            health,
            self_raft_id,
        }
    }

    pub async fn run(self) {
        let store = self.membership.store.clone();
        let mut watch = store.watch();
        let became_leader = Instant::now();
        loop {
            if let Err(e) = self.reconcile(became_leader).await {
                tracing::warn!("role manager: {e}");
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn reconcile(&self, became_leader: Instant) -> Result<(), Status> {
        let store = &self.membership.store;
        // Only managers and nodes with a role change pending can need a write: the others
        // are not copied (at thousands of workers this ran on every applied entry).
        let nodes: Vec<proto::Node> = store
            .read()
            .nodes()
            .filter(|n| n.manager_status.is_some() || n.desired_role() != n.role_enum())
            .cloned()
            .collect();
        let mut ops = Vec::new();
        for n in &nodes {
            let mut changed = n.clone();
            match (n.desired_role(), n.role_enum()) {
                (NodeRole::Manager, NodeRole::Worker) => {
                    tracing::info!(node = %n.id, "promoting node to manager");
                    changed.role = NodeRole::Manager as i32;
                }
                (NodeRole::Worker, NodeRole::Manager) => {
                    // The role changes first; the voter goes in `remove_stale_voters`. This
                    // way a leader demoting itself records the demotion before it steps down.
                    tracing::info!(node = %n.id, "demoting manager");
                    changed.role = NodeRole::Worker as i32;
                    changed.manager_status = None;
                }
                _ => {}
            }
            if let Some(ms) = changed.manager_status.as_mut() {
                let leader = ms.raft_id == self.self_raft_id;
                let reachable = leader
                    || self
                        .health
                        .last_contact(ms.raft_id)
                        .is_some_and(|t| t.elapsed() < REACHABLE_WITHIN)
                    // A fresh leader has not heard from everyone yet.
                    || (became_leader.elapsed() < REACHABLE_WITHIN
                        && ms.reachability == Reachability::Reachable as i32);
                ms.leader = leader;
                ms.reachability = if reachable {
                    Reachability::Reachable
                } else {
                    Reachability::Unreachable
                } as i32;
            }
            if changed != *n {
                ops.push(Op::Update {
                    object: Object::Node(changed),
                    check_version: true,
                });
            }
        }
        if !ops.is_empty() {
            store
                .propose(crate::store::Request::best_effort(ops))
                .await
                .map_err(propose_status)?;
        }
        self.remove_stale_voters().await
    }

    /// Raft voters follow the manager nodes: a voter that is no manager's raft id (demoted,
    /// or left while a leader changed) is removed. This leader removes itself last, after
    /// every other change, since doing so ends its leadership.
    async fn remove_stale_voters(&self) -> Result<(), Status> {
        // Voters first: a joining manager's raft id is in the store before it becomes a
        // voter, so reading in this order never takes a fresh voter for a stale one.
        let voters = self.membership.voters();
        let managers: std::collections::BTreeSet<u64> = self
            .membership
            .store
            .read()
            .nodes()
            .filter(|n| n.role_enum() == NodeRole::Manager)
            .filter_map(|n| n.manager_status.as_ref().map(|m| m.raft_id))
            .filter(|id| *id != 0)
            .collect();
        let mut stale: Vec<u64> = voters
            .into_iter()
            .filter(|v| !managers.contains(v))
            .collect();
        stale.sort_by_key(|v| *v == self.self_raft_id);
        for v in stale {
            tracing::info!(
                raft_id = v,
                "removing a raft voter that is no longer a manager"
            );
            self.membership.remove_voter(v).await?;
        }
        Ok(())
    }
}
