//! The cluster store: an in-memory [`State`] that every manager holds, changed only by
//! applying committed log entries ([`Request`]s). Components read it under a lock and
//! write by proposing requests; `watch()` wakes them after each applied entry.
//!
//! The store knows nothing of Raft: writes go through a [`Proposer`] (SwarmKit's
//! `state.Proposer`), which the raft module implements for its Raft handle;
//! [`Store::memory`] applies proposals in process, so that the store can be used, tested
//! and benchmarked alone.

mod lock;
mod object;
mod ops;
mod state;

#[cfg(test)]
mod proptests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use lock::{ReadGuard, TimedLock};
pub use object::{task_name, Kind, Object};
pub use ops::{Op, OpOutcome, Request, Response, StoreError};
pub use state::{Standing, State};

/// The state and its applied index, shared by the Raft state machine and the store handle.
pub struct Shared {
    state: TimedLock<State>,
    applied: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: TimedLock::new(State::default()),
            applied: watch::channel(0).0,
        }
    }
}

impl Shared {
    /// The state, read (timed against the caller's line: `store/lock.rs`).
    #[track_caller]
    pub fn read(&self) -> ReadGuard<'_, State> {
        self.state.read()
    }

    /// The state if it can be read at once ([`TimedLock::try_read`]): for the Raft thread,
    /// which must not wait behind a writer queued behind a long reader.
    #[track_caller]
    pub fn try_read(&self) -> Option<ReadGuard<'_, State>> {
        self.state.try_read()
    }

    /// Applies one committed entry and wakes the watchers.
    pub fn apply(&self, index: u64, req: Request) -> Response {
        let resp = {
            let mut st = self.state.write();
            st.apply(index, req)
        };
        self.applied.send_replace(index);
        resp
    }

    /// Marks an entry with no request (membership, blank) as applied.
    pub fn mark_applied(&self, index: u64) {
        self.applied.send_replace(index);
    }

    /// Replaces the whole state (snapshot install or load at start).
    pub fn replace(&self, state: State, index: u64) {
        *self.state.write() = state;
        self.applied.send_replace(index);
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this manager is not the leader")]
    NotLeader { leader: Option<u64> },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replicated log (Raft) could not commit the request.
    #[error("raft: {0}")]
    Raft(String),
    /// No answer within the deadline ([`PROPOSE_DEADLINE`]): the request may still be
    /// committed and applied later (a leader that lost its leadership, managers overloaded).
    #[error("no answer from the replicated log within {0:?}; the change may still be applied")]
    Timeout(Duration),
}

/// How long a proposal or a linearizable read waits for the replicated log before its
/// caller is told the outcome is unknown ([`ProposeError::Timeout`]), instead of waiting
/// for ever: a write taken by a leader that then lost its leadership could leave its
/// client with no answer at all (seen with 5 000 nodes on 2 cores, over 3 minutes).
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(30);

/// The future of a proposal (boxed: a [`Proposer`] is used as a trait object).
pub type Proposal<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProposeError>> + Send + 'a>>;

/// Where the store's writes go: the replicated log that commits a request and applies it
/// to the [`Shared`] state of every manager (in a manager: Raft, `crate::raft`).
pub trait Proposer: Send + Sync + 'static {
    /// Proposes a request; resolves once it is committed and applied here.
    fn propose(&self, req: Request) -> Proposal<'_, Response>;

    /// Resolves once this manager's state reflects everything committed before the call
    /// (a linearizable read point). Only the leader can answer.
    fn linearize(&self) -> Proposal<'_, ()>;
}

/// Applies proposals at once, in process: benchmarks and unit tests.
struct InProcess {
    shared: Arc<Shared>,
    index: tokio::sync::Mutex<u64>,
}

impl Proposer for InProcess {
    fn propose(&self, req: Request) -> Proposal<'_, Response> {
        Box::pin(async move {
            let mut ix = self.index.lock().await;
            *ix += 1;
            Ok(self.shared.apply(*ix, req))
        })
    }

    fn linearize(&self) -> Proposal<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Handle to the store: read the state, propose changes.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    proposer: Arc<dyn Proposer>,
    deadline: Duration,
}

impl Store {
    /// A store of its own whose proposals apply at once, in process.
    pub fn memory() -> Store {
        let shared = Arc::new(Shared::default());
        Store {
            proposer: Arc::new(InProcess {
                shared: shared.clone(),
                index: tokio::sync::Mutex::new(0),
            }),
            shared,
            deadline: PROPOSE_DEADLINE,
        }
    }

    /// The store of `shared`, written through `proposer` (which applies committed
    /// requests to `shared`).
    pub fn new(shared: Arc<Shared>, proposer: Arc<dyn Proposer>) -> Store {
        Store {
            shared,
            proposer,
            deadline: PROPOSE_DEADLINE,
        }
    }

    /// The same store with another deadline for proposals and linearizable reads.
    pub fn with_deadline(mut self, deadline: Duration) -> Store {
        self.deadline = deadline;
        self
    }

    /// The state, read; see [`Shared::read`].
    #[track_caller]
    pub fn read(&self) -> ReadGuard<'_, State> {
        self.shared.read()
    }

    /// See [`Shared::try_read`].
    #[track_caller]
    pub fn try_read(&self) -> Option<ReadGuard<'_, State>> {
        self.shared.try_read()
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.watch()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Proposes a request; returns once it is committed (fsynced on a quorum) and applied.
    /// Past the store's deadline the caller gets [`ProposeError::Timeout`].
    pub async fn propose(&self, req: Request) -> Result<Response, ProposeError> {
        self.within_deadline(self.proposer.propose(req)).await
    }

    /// Proposes an atomic batch and returns the stored objects, one per op.
    pub async fn write(&self, ops: Vec<Op>) -> Result<Vec<Option<Object>>, ProposeError> {
        Ok(self.propose(Request::atomic(ops)).await?.into_objects()?)
    }

    /// Read-modify-write of a node, retried while other writers change it meanwhile.
    pub async fn update_node(
        &self,
        id: &str,
        mut change: impl FnMut(&mut proto::Node),
    ) -> Result<proto::Node, ProposeError> {
        const ATTEMPTS: usize = 10;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut node = self
                .read()
                .node(id)
                .cloned()
                .ok_or_else(|| StoreError::NotFound {
                    kind: Kind::Node,
                    id: id.to_string(),
                })?;
            change(&mut node);
            let op = Op::Update {
                object: Object::Node(node),
                check_version: true,
            };
            match self.write(vec![op]).await {
                Ok(mut objs) => match objs.pop().flatten() {
                    Some(Object::Node(n)) => return Ok(n),
                    _ => return Err(ProposeError::Raft("node update stored no node".into())),
                },
                Err(ProposeError::Store(StoreError::VersionMismatch { .. }))
                    if attempt < ATTEMPTS =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `proposal`'s answer, or [`ProposeError::Timeout`] past the store's deadline.
    async fn within_deadline<T>(&self, proposal: Proposal<'_, T>) -> Result<T, ProposeError> {
        tokio::time::timeout(self.deadline, proposal)
            .await
            .unwrap_or(Err(ProposeError::Timeout(self.deadline)))
    }

    /// Waits until this manager's state reflects everything committed before the call
    /// (a linearizable read point). Only the leader can answer.
    pub async fn linearize(&self) -> Result<(), ProposeError> {
        self.within_deadline(self.proposer.linearize()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replicated log that never answers: a leader that lost its leadership with the
    /// write in flight, as a caller sees it.
    struct Silent;

    impl Proposer for Silent {
        fn propose(&self, _: Request) -> Proposal<'_, Response> {
            Box::pin(std::future::pending())
        }
        fn linearize(&self) -> Proposal<'_, ()> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_write_or_read_point_nobody_answers_ends_at_the_deadline() {
        let store = Store::new(Arc::new(Shared::default()), Arc::new(Silent));
        assert_eq!(store.deadline, PROPOSE_DEADLINE);
        let store = store.with_deadline(Duration::from_millis(50));
        let err = store.write(Vec::new()).await.unwrap_err();
        assert!(
            matches!(err, ProposeError::Timeout(d) if d == Duration::from_millis(50)),
            "{err:?}"
        );
        let err = store.linearize().await.unwrap_err();
        assert!(matches!(err, ProposeError::Timeout(_)), "{err:?}");
        let status = crate::api::propose_status(err);
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("may still be applied"));
    }

    #[tokio::test]
    async fn an_answered_write_is_not_cut_by_the_deadline() {
        let store = Store::memory().with_deadline(Duration::from_millis(50));
        assert!(store.write(Vec::new()).await.is_ok());
    }
}
