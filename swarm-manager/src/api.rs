//! The edge every gRPC service of a manager shares (Control, Logs and LogBroker,
//! Dispatcher, RaftMembership, CA): who may call, the calls only the leader serves, the
//! copy of a call forwarded to the leader, and the gRPC status of a failed write.

use proto::NodeRole;
use tonic::{Request, Status};

use crate::ca::NodeIdentity;
use crate::router::{no_leader, raft_stopped, Route, Router};
use crate::store::{ProposeError, Standing, State, StoreError};

/// Marks a request that came through the agent's local unix socket (already authorized by
/// the socket's file permissions). The agent inserts it into the request extensions.
#[derive(Clone, Copy, Debug)]
pub struct LocalCaller;

/// Docker's answer to a worker that calls the Control API.
pub const WORKER_DENIED: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// The metadata key in which a follower tells an agent the leader's address.
pub const LEADER_METADATA: &str = "x-swarm-leader";

/// The caller of an authenticated call, checked against the store as SwarmKit does
/// (`AuthorizeForwardedRoleAndOrg` and its removed-nodes list): its certificate's node
/// exists and was not removed, and a manager forwarding a call on behalf of another node
/// is a manager now, not only by an old certificate. Returns the identity the call is made
/// under (the forwarded one, if any; None for an anonymous caller) and that node's current
/// role in the store. A store read per call, no write.
pub(crate) fn caller<T>(
    req: &Request<T>,
    state: &State,
) -> Result<Option<(NodeIdentity, NodeRole)>, Status> {
    let Some(direct) = crate::tls::peer_identity(req) else {
        return Ok(None);
    };
    let direct_role = member_role(state, &direct.node_id)?;
    if !crate::tls::is_forwarded(req) {
        return Ok(Some((direct, direct_role)));
    }
    if direct.role != NodeRole::Manager || direct_role != NodeRole::Manager {
        return Err(Status::permission_denied(format!(
            "node {} is not a manager of this swarm: it cannot make calls on behalf of other nodes",
            direct.node_id
        )));
    }
    match crate::tls::caller_identity(req) {
        Some(id) => {
            let role = member_role(state, &id.node_id)?;
            Ok(Some((id, role)))
        }
        None => Ok(None),
    }
}

/// The node's current role, or `PermissionDenied` when it was removed or is not a node of
/// this swarm.
pub(crate) fn member_role(state: &State, node_id: &str) -> Result<NodeRole, Status> {
    match state.standing(node_id) {
        Standing::Member(role) => Ok(role),
        Standing::Removed => Err(Status::permission_denied(format!(
            "node {node_id} was removed from the swarm: its certificate is no longer accepted; join the swarm again with a join token"
        ))),
        Standing::Unknown => Err(Status::permission_denied(format!(
            "node {node_id} is not a member of this swarm"
        ))),
    }
}

/// Who may call the cluster APIs (Control, Logs): the local socket, or a manager — by its
/// certificate and by its current role in the store ([`caller`]). Returns the certificate
/// identity (None for local callers) so that forwarded calls keep it.
pub(crate) fn authorize<T>(
    req: &Request<T>,
    state: &State,
) -> Result<Option<NodeIdentity>, Status> {
    if req.extensions().get::<LocalCaller>().is_some() {
        return Ok(None);
    }
    let (id, role) = caller(req, state)?.ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by the swarm CA is required")
    })?;
    if id.role != NodeRole::Manager || role != NodeRole::Manager {
        return Err(Status::permission_denied(WORKER_DENIED));
    }
    Ok(Some(id))
}

/// The node id of an agent's call (the CN of its node certificate), checked against the
/// store ([`caller`]): removed nodes are refused.
pub(crate) fn node_of<T>(req: &Request<T>, state: &State) -> Result<String, Status> {
    let (id, _) = caller(req, state)?.ok_or_else(|| {
        Status::unauthenticated("a node certificate issued by the swarm CA is required")
    })?;
    Ok(id.node_id)
}

/// Agents' streams are served by the leader only: a follower answers `Unavailable` with
/// the leader's address in [`LEADER_METADATA`], so that the agent reconnects there.
pub(crate) fn leader_only(router: &Router) -> Result<(), Status> {
    match router.route() {
        Route::Local => Ok(()),
        Route::Leader(_) => {
            let mut st =
                Status::unavailable("this manager is not the leader; reconnect to the leader");
            if let Some(addr) = router.leader_addr() {
                if let Ok(v) = addr.parse() {
                    st.metadata_mut().insert(LEADER_METADATA, v);
                }
            }
            Err(st)
        }
        Route::NoLeader => Err(no_leader()),
        Route::Stopped(reason) => Err(raft_stopped(&reason)),
    }
}

/// The copy of an authorized call ([`authorize`]) that a follower sends to the leader:
/// the message, its deadline, and the caller's certificate identity when it has one. A
/// local caller's call goes on under this manager's own certificate. (The CA, which
/// must not vouch for anonymous callers, uses `tls::forwarded_request` instead.)
pub(crate) fn forwarded<T>(req: Request<T>, caller: Option<&NodeIdentity>) -> Request<T> {
    let timeout = req.metadata().get("grpc-timeout").cloned();
    let mut fwd = Request::new(req.into_inner());
    if let Some(t) = timeout {
        fwd.metadata_mut().insert("grpc-timeout", t);
    }
    if let Some(id) = caller {
        crate::tls::with_forwarded_identity(&mut fwd, id);
    }
    fwd
}

/// gRPC status of a store error, with Docker's codes.
pub(crate) fn store_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound { .. } => Status::not_found(msg),
        StoreError::Exists { .. } | StoreError::NameConflict { .. } => Status::already_exists(msg),
        StoreError::VersionMismatch { .. } => proto::out_of_sequence::status(msg),
        StoreError::Invalid(_) => Status::invalid_argument(msg),
    }
}

/// gRPC status of a failed proposal.
pub(crate) fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { .. } => no_leader(),
        ProposeError::Store(e) => store_status(e),
        ProposeError::Raft(m) => Status::unavailable(format!(
            "the change could not be committed (raft: {m}); check the cluster state and retry"
        )),
        ProposeError::Timeout(d) => Status::deadline_exceeded(format!(
            "the managers did not commit the change within {} s (a leader change, or managers overloaded); it may still be applied: check the object (for example with `inspect` or `ls`) before retrying",
            d.as_secs()
        )),
    }
}
