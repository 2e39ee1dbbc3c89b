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
    /// This manager's Raft core stopped (a storage failure): it serves nothing and leads
    /// nothing, whatever its last metrics said. The reason names the fault.
    Stopped(String),
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
                if let Err(e) = &m.running_state {
                    return Route::Stopped(e.to_string());
                }
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

    /// A watch on this manager's view of who leads, taken now: [`LeaderWatch::changed`]
    /// resolves once that view moves on (another leader or none, or its Raft stopped). A
    /// forwarded call races it, so that a call forwarded to a leader that was cut off does
    /// not wait for its deadline once the others elected a new one.
    pub fn leader_watch(&self) -> LeaderWatch {
        match &*self.inner {
            Inner::Local => LeaderWatch {
                rx: None,
                leader: None,
            },
            Inner::Raft { raft, .. } => {
                // The server metrics change with the vote, the role, the leader or the
                // membership only, not with every entry as the full metrics do: a call in
                // flight wakes once per election, not once per commit.
                let mut rx = raft.server_metrics();
                let leader = rx.borrow_and_update().current_leader;
                LeaderWatch {
                    rx: Some(rx),
                    leader,
                }
            }
        }
    }

    /// This manager's term as leader: `None` when it is not the leader (a single-process
    /// router is always leader, of term 0).
    pub fn leader_term(&self) -> Option<u64> {
        match &*self.inner {
            Inner::Local => Some(0),
            Inner::Raft { raft, self_id, .. } => {
                let m = raft.metrics();
                let m = m.borrow();
                (m.running_state.is_ok() && m.current_leader == Some(*self_id))
                    .then_some(m.current_term)
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
            Route::Stopped(reason) => Err(raft_stopped(&reason)),
        }
    }

    /// Why this manager's Raft core stopped, if it did (see [`Route::Stopped`]).
    pub fn stopped(&self) -> Option<String> {
        match self.route() {
            Route::Stopped(reason) => Some(reason),
            _ => None,
        }
    }

    /// The leader's address, if known and not this manager.
    pub fn leader_addr(&self) -> Option<String> {
        match &*self.inner {
            Inner::Local => None,
            Inner::Raft { raft, self_id, .. } => {
                let m = raft.metrics().borrow().clone();
                m.running_state.as_ref().ok()?;
                let id = m.current_leader.filter(|id| id != self_id)?;
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            }
        }
    }
}

/// See [`Router::leader_watch`].
pub struct LeaderWatch {
    rx: Option<
        tokio::sync::watch::Receiver<
            openraft::metrics::RaftServerMetrics<u64, openraft::BasicNode>,
        >,
    >,
    leader: Option<u64>,
}

impl LeaderWatch {
    /// Resolves when the leader differs from the one seen when the watch was taken, or this
    /// manager's Raft stopped or shut down (its core, which holds the sending side, is gone);
    /// never for a single-process router.
    pub async fn changed(mut self) {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            if rx.borrow_and_update().current_leader != self.leader {
                return;
            }
        }
    }
}

/// The gRPC status of a forwarded call whose leader lost its place while the call waited.
pub fn leader_changed() -> tonic::Status {
    tonic::Status::unavailable(
        "the leader changed while this call was forwarded to it; a change it asked for may or may not have been applied: check the object (for example with `inspect` or `ls`) before retrying",
    )
}

/// The gRPC status a forwarded or local call returns when no leader is known.
pub fn no_leader() -> tonic::Status {
    tonic::Status::unavailable(
        "the swarm has no leader right now (an election is under way, or a majority of managers is down); retry in a moment",
    )
}

/// The gRPC status of every call to a manager whose Raft core stopped: it names the
/// storage fault, and tells the caller to go to another manager.
pub fn raft_stopped(reason: &str) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "this manager stopped serving the swarm: its Raft node stopped ({reason}); the other managers elect a leader: use one of them; fix the disk of this node's data root (free space, I/O errors) and restart it"
    ))
}
