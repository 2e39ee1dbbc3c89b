//! The edge every gRPC service of a manager shares (Control, Logs and LogBroker,
//! Dispatcher, RaftMembership, CA): who may call, the calls only the leader serves, the
//! copy of a call forwarded to the leader, and the gRPC status of a failed write.

use proto::NodeRole;
use tonic::{Request, Status};

use crate::ca::NodeIdentity;
use crate::router::{no_leader, raft_stopped, Route, Router};
use crate::store::{ProposeError, StoreError};

/// Marks a request that came through the agent's local unix socket (already authorized by
/// the socket's file permissions). The agent inserts it into the request extensions.
#[derive(Clone, Copy, Debug)]
pub struct LocalCaller;

/// Docker's answer to a worker that calls the Control API.
pub const WORKER_DENIED: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// The metadata key in which a follower tells an agent the leader's address.
pub const LEADER_METADATA: &str = "x-swarm-leader";

/// Who may call the cluster APIs (Control, Logs): the local socket, or a manager
/// certificate. Returns the certificate identity (None for local callers) so that
/// forwarded calls keep it.
pub(crate) fn authorize<T>(req: &Request<T>) -> Result<Option<NodeIdentity>, Status> {
    if req.extensions().get::<LocalCaller>().is_some() {
        return Ok(None);
    }
    let id = crate::tls::caller_identity(req).ok_or_else(|| {
        Status::unauthenticated("a client certificate issued by the swarm CA is required")
    })?;
    if id.role != NodeRole::Manager {
        return Err(Status::permission_denied(WORKER_DENIED));
    }
    Ok(Some(id))
}

/// The node id of an agent's call (the CN of its node certificate).
pub(crate) fn node_of<T>(req: &Request<T>) -> Result<String, Status> {
    let id = crate::tls::caller_identity(req).ok_or_else(|| {
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
        StoreError::VersionMismatch { .. } => Status::failed_precondition(msg),
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
    }
}
