//! Writes to the store: what a Raft log entry carries and what applying it returns.

use proto::{NetworkAttachment, NodeStatus, TaskState, TaskStatus};
use serde::{Deserialize, Serialize};
use swarm_common::clock::now_ms;

use super::object::{Kind, Object};

/// One change. Creates and updates carry whole objects; the `Task*`/`Node*` ops are small
/// in-place changes so that hot writers (scheduler, dispatcher) neither conflict with
/// each other nor ship whole objects through Raft.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Fails if the id exists, or if a service/network of that name exists.
    Create(Object),
    /// Replaces the object. With `check_version`, fails unless the stored version equals
    /// the version the object carries (the caller read it, changed it, writes it back).
    Update { object: Object, check_version: bool },
    /// Fails if the object does not exist.
    Delete { kind: Kind, id: String },
    /// Observed state of a task, as reported by its agent. Ignored (not an error) when it
    /// would move the observed state backwards.
    SetTaskStatus { task_id: String, status: TaskStatus },
    /// Scheduler decision: a PENDING task goes to `node_id` in state ASSIGNED. Skipped with
    /// an error if the task is no longer PENDING or was pre-assigned to another node.
    AssignTask { task_id: String, node_id: String },
    /// Why a PENDING task could not be placed; the state does not change.
    SetTaskSchedulingError { task_id: String, err: String },
    /// Raises the desired state (never lowers it).
    SetTaskDesiredState { task_id: String, desired: TaskState },
    /// Node status from the dispatcher (READY on session, DOWN on missed heartbeats).
    SetNodeStatus { node_id: String, status: NodeStatus },
    /// The node's own network endpoints from the allocator (its ingress address).
    SetNodeAttachments {
        node_id: String,
        attachments: Vec<NetworkAttachment>,
    },
}

/// A batch of ops proposed together. `atomic` batches apply all or nothing; other
/// batches apply each op that can be applied and report the rest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub ops: Vec<Op>,
    pub atomic: bool,
    /// Wall clock of the proposer (ms since the epoch), so that applying is deterministic.
    pub now_ms: i64,
}

impl Request {
    pub fn atomic(ops: Vec<Op>) -> Self {
        Request {
            ops,
            atomic: true,
            now_ms: now_ms(),
        }
    }

    pub fn best_effort(ops: Vec<Op>) -> Self {
        Request {
            ops,
            atomic: false,
            now_ms: now_ms(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: Kind, id: String },
    #[error("{kind} {id} already exists")]
    Exists { kind: Kind, id: String },
    #[error("{kind} with name {name} already exists")]
    NameConflict { kind: Kind, name: String },
    #[error("update out of sequence: {kind} {id} is at version {actual}, the update was based on version {expected}; read it again and retry")]
    VersionMismatch {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What applying one op produced: in an atomic batch, the object as stored after the op
/// (None for deletes, no-op changes and the small in-place task ops); in a best-effort
/// batch, only that it applied (`Applied(None)`) or why it was skipped.
#[allow(clippy::large_enum_variant)] // see Object
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OpOutcome {
    Applied(Option<Object>),
    Skipped(StoreError),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// For atomic batches: Err with the first failure, nothing applied.
    pub result: Option<Result<Vec<OpOutcome>, StoreError>>,
}

impl Response {
    /// The objects an atomic batch stored, or its error.
    pub fn into_objects(self) -> Result<Vec<Option<Object>>, StoreError> {
        match self.result {
            Some(Ok(outcomes)) => Ok(outcomes
                .into_iter()
                .map(|o| match o {
                    OpOutcome::Applied(obj) => obj,
                    OpOutcome::Skipped(_) => None,
                })
                .collect()),
            Some(Err(e)) => Err(e),
            None => Ok(vec![]),
        }
    }
}
