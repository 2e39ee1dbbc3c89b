//! Client side of the Raft transport: openraft's RPCs as bincode payloads over the
//! `swarm.v1.Raft` gRPC service of the other managers.
//!
//! Error mapping (it decides how openraft retries):
//! - the peer cannot be reached or refuses us (`Unavailable`, `PermissionDenied`,
//!   `Unauthenticated`, `Unimplemented`, `InvalidArgument`, an undecodable answer):
//!   [`Unreachable`], so openraft backs off before trying again;
//! - no answer within the RPC's hard TTL, or `DeadlineExceeded`: [`Timeout`];
//! - a message too large for the transport while sending several entries:
//!   [`PayloadTooLarge`] with a hint, so openraft sends fewer entries at once;
//! - several entries above [`MAX_APPEND_BYTES`] once encoded: not sent, [`PayloadTooLarge`]
//!   with the number of entries that fit (at least one), so a batch is bounded by bytes as
//!   well as by openraft's `max_payload_entries`;
//! - several entries not answered in time: [`PayloadTooLarge`] with half as many, so that a
//!   batch too large for the timeout is not sent again and again (openraft resends the same
//!   batch after a [`Timeout`]); one entry not answered in time is a [`Timeout`];
//! - any other transport failure: [`NetworkError`] (retried without backoff);
//! - the peer answered with an openraft error: [`RemoteError`].
//!
//! Each call runs in a task of its own that keeps waiting for the answer
//! [`LATE_ANSWER_WAIT`] after openraft gave up on it, so that [`RpcTiming`] can tell a link
//! slower than the timeout from a cut one and say so (`rpc_timing.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};
use proto::raft_client::RaftClient;
use proto::RaftPayload;
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Channel;
use tonic::Code;

use super::config::{MAX_APPEND_BYTES, MAX_MESSAGE_BYTES};
use super::rpc_timing::{RpcTiming, LATE_ANSWER_WAIT};
use super::TypeConfig;
use crate::tls::Connector;

/// When each peer last answered a Raft RPC (any answer, including an openraft error).
/// The leader sends heartbeats every 150 ms, so on the leader a recent contact means the
/// peer is reachable.
#[derive(Clone, Default)]
pub struct PeerHealth {
    inner: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl PeerHealth {
    /// The last time the manager with Raft id `id` answered an RPC of this manager.
    pub fn last_contact(&self, id: u64) -> Option<Instant> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }

    fn record(&self, id: u64) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
    }
}

/// openraft's network factory: one [`Connection`] per peer and purpose, over a channel
/// per address that is shared by all connections to that address.
pub struct Network {
    connect: Connector,
    health: PeerHealth,
    timing: Arc<RpcTiming>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    /// `connect` opens a lazy (m)TLS channel to a manager's address; `health` is updated on
    /// every answered RPC.
    pub fn new(connect: Connector, health: PeerHealth) -> Network {
        Network {
            connect,
            health,
            timing: Arc::default(),
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Channel {
        let mut ch = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        ch.entry(addr.to_string())
            .or_insert_with(|| (self.connect)(addr))
            .clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        let client = RaftClient::new(self.channel(&node.addr))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Connection {
            target,
            node: node.clone(),
            client,
            health: self.health.clone(),
            timing: self.timing.clone(),
        }
    }
}

/// A client of one peer's Raft service.
pub struct Connection {
    target: u64,
    node: BasicNode,
    client: RaftClient<Channel>,
    health: PeerHealth,
    timing: Arc<RpcTiming>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

fn any_error(msg: String) -> AnyError {
    AnyError::new(&TransportError(msg))
}

impl Connection {
    /// Sends one RPC. `from` is this manager's Raft id (the sender of the request's vote),
    /// `entries` the number of log entries it carries.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RPCTypes,
        req: &Req,
        option: &RPCOption,
        from: u64,
        entries: usize,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = bincode::serialize(req).map_err(|e| {
            RPCError::Network(NetworkError::from(any_error(format!(
                "encoding the {kind} request for manager {}: {e}",
                self.target
            ))))
        })?;
        if kind == RPCTypes::AppendEntries && entries > 1 && data.len() > MAX_APPEND_BYTES {
            return Err(too_large(
                entries_that_fit(entries, data.len(), MAX_APPEND_BYTES),
                format!(
                    "{entries} entries to manager {} are {} bytes, above {MAX_APPEND_BYTES}",
                    self.target,
                    data.len()
                ),
            ));
        }
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(ttl + LATE_ANSWER_WAIT);
        let mut client = self.client.clone();
        let (target, addr, timing) = (self.target, self.node.addr.clone(), self.timing.clone());
        let started = Instant::now();
        // Its own task: it outlives this future when openraft drops it at the timeout.
        let call = tokio::spawn(async move {
            let res = match kind {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            };
            timing.finished(target, &addr, kind, started.elapsed(), ttl, res.is_ok());
            res
        });
        let timeout = || {
            if kind == RPCTypes::AppendEntries && entries > 1 {
                return too_large(
                    entries / 2,
                    format!("{entries} entries to manager {target} not answered within {ttl:?}"),
                );
            }
            RPCError::Timeout(Timeout {
                action: kind,
                id: from,
                target,
                timeout: ttl,
            })
        };
        let resp = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(timeout()),
            Ok(Err(ended)) => {
                return Err(RPCError::Network(NetworkError::from(any_error(format!(
                    "the {kind} call to manager {target} ended without an answer: {ended}"
                )))))
            }
            Ok(Ok(Err(status))) if status.code() == Code::DeadlineExceeded => return Err(timeout()),
            Ok(Ok(Err(status))) => return Err(self.status_error(kind, status, entries)),
            Ok(Ok(Ok(resp))) => resp.into_inner(),
        };
        self.health.record(self.target);
        let res: Result<Resp, RaftError<u64, E>> =
            bincode::deserialize(&resp.data).map_err(|e| {
                RPCError::Unreachable(Unreachable::from(any_error(format!(
                    "manager {} at {} sent an undecodable {kind} response ({e}); are both managers the same version?",
                    self.target, self.node.addr
                ))))
            })?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    fn status_error<E: std::error::Error>(
        &self,
        kind: RPCTypes,
        status: tonic::Status,
        entries: usize,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        let msg = format!(
            "{kind} to manager {} at {}: {:?}: {}",
            self.target,
            self.node.addr,
            status.code(),
            status.message()
        );
        match status.code() {
            Code::Unavailable
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::InvalidArgument => RPCError::Unreachable(Unreachable::from(any_error(msg))),
            Code::OutOfRange | Code::ResourceExhausted
                if kind == RPCTypes::AppendEntries && entries > 1 =>
            {
                too_large(entries / 2, msg)
            }
            _ => RPCError::Network(NetworkError::from(any_error(msg))),
        }
    }
}

/// openraft's "send at most `entries` entries next time" (at least one).
fn too_large<E: std::error::Error>(
    entries: usize,
    why: String,
) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::PayloadTooLarge(
        PayloadTooLarge::new_entries_hint(entries.max(1) as u64)
            .with_source_error(&TransportError(why)),
    )
}

/// How many of `entries` entries encoded in `bytes` fit in `cap` bytes, assuming entries of
/// equal size (at least one, fewer than `entries` when they do not all fit).
fn entries_that_fit(entries: usize, bytes: usize, cap: usize) -> usize {
    let fit = (entries as u128 * cap as u128 / bytes.max(1) as u128) as usize;
    fit.clamp(1, entries.saturating_sub(1).max(1))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        let n = rpc.entries.len();
        self.call(RPCTypes::AppendEntries, &rpc, &option, from, n)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.call(RPCTypes::InstallSnapshot, &rpc, &option, from, 0)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.call(RPCTypes::Vote, &rpc, &option, from, 0).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // An unreachable peer is probed every 500 ms at first, then at most every 2 s.
        openraft::network::Backoff::new(
            (0..)
                .map(|i: u32| Duration::from_millis(500u64.saturating_mul(1u64 << i.min(2))))
                .map(|d| d.min(Duration::from_secs(2))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_above_the_byte_cap_is_cut_to_what_fits() {
        assert_eq!(entries_that_fit(300, 30 << 20, 3 << 20), 30);
        assert_eq!(entries_that_fit(2, 9 << 20, 4 << 20), 1);
        // Just above the cap: at least one entry fewer, so the batch shrinks every time.
        assert_eq!(entries_that_fit(10, (4 << 20) + 1, 4 << 20), 9);
        assert_eq!(entries_that_fit(300, usize::MAX, 1), 1);
    }
}
