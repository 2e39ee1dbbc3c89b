//! The store's [`Proposer`] on Raft: writes are openraft client writes, linearizable reads
//! openraft's `ensure_linearizable`; a follower's "forward to leader" becomes
//! [`ProposeError::NotLeader`].

use crate::store::{Proposal, ProposeError, Proposer, Request, Response};

use super::{Raft, RaftError};

impl Proposer for Raft {
    fn propose(&self, req: Request) -> Proposal<'_, Response> {
        Box::pin(async move {
            match self.client_write(req).await {
                Ok(resp) => Ok(resp.data),
                Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                    Err(ProposeError::NotLeader {
                        leader: f.leader_id,
                    })
                }
                Err(e) => Err(ProposeError::Raft(e.to_string())),
            }
        })
    }

    fn linearize(&self) -> Proposal<'_, ()> {
        Box::pin(async move {
            match self.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                    f,
                ))) => Err(ProposeError::NotLeader {
                    leader: f.leader_id,
                }),
                Err(e) => Err(ProposeError::Raft(e.to_string())),
            }
        })
    }
}
