//! Raft replication of the store with openraft: type configuration, log and state
//! machine storage on redb, the gRPC transport between managers, and the store's
//! [`Proposer`](crate::store::Proposer) on Raft.

use std::io::Cursor;

pub mod config;
pub mod deks;
pub mod encryption;
pub mod network;
mod proposer;
pub mod rpc_timing;
pub mod runtime;
pub mod service;
pub mod snapshot;
pub mod storage;

use crate::store::{Request, Response};

openraft::declare_raft_types!(
    /// openraft type configuration of the swarm store.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<u64, E>;

/// Resolves when `raft`'s core stopped on its own (a storage failure, a panic), with the
/// reason; `None` when it was shut down normally. openraft keeps the last metrics of a
/// stopped core (its `current_leader` may still name this manager): only
/// `running_state` (or the end of the metrics channel) says that the core is gone.
pub async fn core_failure(raft: &Raft) -> Option<String> {
    use openraft::error::Fatal;
    let mut rx = raft.metrics();
    loop {
        match rx.borrow_and_update().running_state.clone() {
            Ok(()) => {}
            Err(Fatal::Stopped) => return None,
            Err(e) => return Some(e.to_string()),
        }
        if rx.changed().await.is_err() {
            // The core's task ended without reporting a state: it panicked.
            return match rx.borrow().running_state.clone() {
                Err(Fatal::Stopped) => None,
                Err(e) => Some(e.to_string()),
                Ok(()) => Some("the Raft core ended unexpectedly".to_string()),
            };
        }
    }
}
