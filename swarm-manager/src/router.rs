//! Where a manager-side call is served: here (this manager leads) or forwarded to the
//! leader. Followers forward API calls instead of failing them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::transport::Channel;

use crate::raft::Raft;
use crate::tls::Connector;

pub enum Route {
    /// This manager is the leader: serve the call.
    Local,
    /// Forward the call over this channel to the leader.
    Leader(Channel),
    /// No leader is known (an election is under way).
    NoLeader,
}

#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

enum Inner {
    Local,
    Raft {
        raft: Raft,
        self_id: u64,
        connect: Connector,
        channels: Mutex<HashMap<String, Channel>>,
    },
}

impl Router {
    /// Always serves locally (single process: tests and benchmarks).
    pub fn local() -> Router {
        Router {
            inner: Arc::new(Inner::Local),
        }
    }

    pub fn raft(raft: Raft, self_id: u64, connect: Connector) -> Router {
        Router {
            inner: Arc::new(Inner::Raft {
                raft,
                self_id,
                connect,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn route(&self) -> Route {
        match &*self.inner {
            Inner::Local => Route::Local,
            Inner::Raft {
                raft,
                self_id,
                connect,
                channels,
            } => {
                let m = raft.metrics().borrow().clone();
                match m.current_leader {
                    Some(id) if id == *self_id => Route::Local,
                    Some(id) => {
                        let Some(node) = m.membership_config.membership().get_node(&id) else {
                            return Route::NoLeader;
                        };
                        let mut ch = channels.lock().unwrap_or_else(|e| e.into_inner());
                        let c = ch
                            .entry(node.addr.clone())
                            .or_insert_with(|| connect(&node.addr))
                            .clone();
                        Route::Leader(c)
                    }
                    None => Route::NoLeader,
                }
            }
        }
    }

    /// `Ok(None)` when this manager serves the call, the leader's channel when it must
    /// forward it, an `Unavailable` status while no leader is known.
    pub fn leader_channel(&self) -> Result<Option<Channel>, tonic::Status> {
        match self.route() {
            Route::Local => Ok(None),
            Route::Leader(ch) => Ok(Some(ch)),
            Route::NoLeader => Err(no_leader()),
        }
    }

    /// The leader's address, if known and not this manager.
    pub fn leader_addr(&self) -> Option<String> {
        match &*self.inner {
            Inner::Local => None,
            Inner::Raft { raft, self_id, .. } => {
                let m = raft.metrics().borrow().clone();
                let id = m.current_leader.filter(|id| id != self_id)?;
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            }
        }
    }
}

/// The gRPC status a forwarded or local call returns when no leader is known.
pub fn no_leader() -> tonic::Status {
    tonic::Status::unavailable(
        "the swarm has no leader right now (an election is under way, or a majority of managers is down); retry in a moment",
    )
}
