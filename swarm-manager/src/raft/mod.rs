//! Raft replication of the store with openraft: type configuration, log and state
//! machine storage on redb, the gRPC transport between managers, and the store's
//! [`Proposer`](crate::store::Proposer) on Raft.

use std::io::Cursor;

pub mod config;
pub mod network;
mod proposer;
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
