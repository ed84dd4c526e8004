//! The Raft transport (SPEC §5.9): RPCs between members over their mTLS core listeners, at
//! `/core/internal/raft/{append,vote,snapshot}`, with `postcard` bodies.
//!
//! Each peer gets one pooled, persistent [`Client`] that presents this member's server
//! certificate and pins the cluster certificate. A reply is `postcard(RpcReply<T>)`: either the
//! peer's Raft answer or its Raft error (carried as JSON, since openraft's error types are only
//! known to serialize with self-describing formats). Failures to reach a peer are reported as
//! `Unreachable` so openraft backs off; other transport failures as `Network`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::LogId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{MemberNode, NodeId, TypeConfig};
use crate::certs::CertKeyPair;
use crate::client::Client;
use crate::rest::server::MAX_BODY_BYTES;
use crate::sync;
use crate::{Error, ErrorKind, Result};

/// Path of the append-entries (and heartbeat) RPC.
pub const APPEND_PATH: &str = "/core/internal/raft/append";
/// Path of the vote RPC.
pub const VOTE_PATH: &str = "/core/internal/raft/vote";
/// Path of the install-snapshot RPC (one chunk per call).
pub const SNAPSHOT_PATH: &str = "/core/internal/raft/snapshot";

/// The answer of a Raft RPC: the peer's result, or its Raft error as JSON.
#[derive(Serialize, Deserialize)]
pub enum RpcReply<T> {
    /// The peer's answer.
    Ok(T),
    /// The peer's Raft error, serialized with `serde_json`.
    RaftError(String),
}

impl<T: Serialize> RpcReply<T> {
    /// Encodes the result of a local Raft call as the reply body.
    pub fn encode<E: Serialize>(result: std::result::Result<T, E>) -> Result<Vec<u8>> {
        let reply =
            match result {
                Ok(value) => RpcReply::Ok(value),
                Err(err) => RpcReply::RaftError(serde_json::to_string(&err).map_err(|err| {
                    Error::internal(format!("Failed to encode a Raft error: {err}"))
                })?),
            };
        encode(&reply)
    }
}

/// Encodes a Raft message with `postcard`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|err| Error::internal(format!("Failed to encode a Raft message: {err}")))
}

/// Decodes a Raft message encoded by [`encode`]; garbage is a 400.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|err| Error::invalid(format!("Failed to decode a Raft message: {err}")))
}

/// The credentials members use to reach each other: this member's server certificate as the
/// TLS client identity, and the cluster certificate every core listener presents.
#[derive(Clone)]
pub struct PeerCredentials {
    /// This member's `server.crt`/`server.key`.
    pub identity: CertKeyPair,
    /// The cluster certificate, PEM.
    pub cluster_cert_pem: String,
}

impl PeerCredentials {
    /// A client of the member at `address`.
    pub fn client(&self, address: &str) -> Result<Client> {
        Client::remote(address, &self.cluster_cert_pem, Some(&self.identity))
    }
}

/// Creates the connection to each peer for openraft. Cheap to clone; clones share the
/// credentials, which a certificate rotation replaces (SPEC §13.7).
#[derive(Clone)]
pub struct Network {
    credentials: Arc<std::sync::RwLock<Arc<PeerCredentials>>>,
}

impl Network {
    /// A network using `credentials`.
    pub fn new(credentials: PeerCredentials) -> Network {
        Network {
            credentials: Arc::new(std::sync::RwLock::new(Arc::new(credentials))),
        }
    }

    /// The credentials members are reached with now.
    pub fn credentials(&self) -> Arc<PeerCredentials> {
        sync::read(&self.credentials).clone()
    }

    /// Pins `cluster_cert_pem` from now on; connections made before are replaced at their next
    /// request.
    pub fn set_cluster_certificate(&self, cluster_cert_pem: String) {
        let mut credentials = sync::write(&self.credentials);
        *credentials = Arc::new(PeerCredentials {
            identity: credentials.identity.clone(),
            cluster_cert_pem,
        });
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        let credentials = self.credentials();
        PeerConnection {
            target,
            address: node.address.clone(),
            client: credentials.client(&node.address),
            credentials,
            network: self.clone(),
        }
    }
}

/// The transport to one peer.
pub struct PeerConnection {
    target: NodeId,
    address: String,
    /// The client, or why none could be made (an invalid address or certificate).
    client: Result<Client>,
    /// The credentials `client` was made with.
    credentials: Arc<PeerCredentials>,
    network: Network,
}

type RpcResult<T, E> = std::result::Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let credentials = self.network.credentials();
        if !Arc::ptr_eq(&credentials, &self.credentials) {
            self.client = credentials.client(&self.address);
            self.credentials = credentials;
        }
        let client = self
            .client
            .as_ref()
            .map_err(|err| RPCError::Unreachable(Unreachable::new(err)))?;
        let body = encode(request).map_err(|err| RPCError::Network(NetworkError::new(&err)))?;
        let answer = client
            .post_binary(path, Bytes::from(body), timeout)
            .await
            .map_err(|err| {
                let err = err.context(format!("Raft RPC to {}: ", self.address));
                match err.kind() {
                    // Not listening, refused, timed out or shutting down: back off.
                    ErrorKind::Unavailable | ErrorKind::Timeout => {
                        RPCError::Unreachable(Unreachable::new(&err))
                    }
                    _ => RPCError::Network(NetworkError::new(&err)),
                }
            })?;
        match decode::<RpcReply<Resp>>(&answer) {
            Ok(RpcReply::Ok(response)) => Ok(response),
            Ok(RpcReply::RaftError(json)) => {
                match serde_json::from_str::<RaftError<NodeId, E>>(&json) {
                    Ok(err) => Err(RPCError::RemoteError(RemoteError::new(self.target, err))),
                    Err(err) => Err(RPCError::Network(NetworkError::new(&err))),
                }
            }
            Err(err) => Err(RPCError::Network(NetworkError::new(&err))),
        }
    }
}

/// The most bytes of entries one append-entries request carries: the rest of the request is a
/// few bytes, and every member refuses bodies over [`MAX_BODY_BYTES`].
const APPEND_ENTRIES_BYTES: usize = MAX_BODY_BYTES - (64 << 10);

/// Cuts `rpc` to the entries that fit in one request body ([`APPEND_ENTRIES_BYTES`], but at
/// least one entry), and returns it with the log id of its last entry if entries were left
/// out. A member that lagged behind would otherwise be sent hundreds of entries at once
/// (openraft limits their number, not their size), a body every member refuses, again and
/// again.
fn cut_to_body_limit(
    mut rpc: AppendEntriesRequest<TypeConfig>,
) -> (AppendEntriesRequest<TypeConfig>, Option<LogId<NodeId>>) {
    let mut bytes = 0;
    let fitting = rpc
        .entries
        .iter()
        .take_while(|entry| {
            bytes += postcard::experimental::serialized_size(entry).unwrap_or(usize::MAX);
            bytes <= APPEND_ENTRIES_BYTES
        })
        .count()
        .max(1);
    if fitting >= rpc.entries.len() {
        return (rpc, None);
    }
    rpc.entries.truncate(fitting);
    let last = rpc.entries.last().map(|entry| entry.log_id);
    // Entries of the leader's log up to its commit index are committed, so the last one sent is
    // if the commit index is beyond it.
    if rpc.leader_commit.map(|id| id.index) > last.map(|id| id.index) {
        rpc.leader_commit = last;
    }
    (rpc, last)
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let (rpc, cut_after) = cut_to_body_limit(rpc);
        let response = self.call(APPEND_PATH, &rpc, option.hard_ttl()).await?;
        // openraft sends the rest next, from the entry after the last one that arrived.
        Ok(match (response, cut_after) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(SNAPSHOT_PATH, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Vote};

    use super::*;
    use crate::db::raft::Command;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// A request carrying entries 1..=count of `bytes` of SQL each, committed up to `commit`.
    fn request(count: u64, bytes: usize, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(0)),
            leader_commit: Some(log_id(commit)),
            entries: (1..=count)
                .map(|index| Entry {
                    log_id: log_id(index),
                    payload: EntryPayload::Normal(Command::Sql {
                        sql: "x".repeat(bytes),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn append_requests_are_cut_to_what_a_member_accepts() {
        // Small requests go as they are.
        let (rpc, cut_after) = cut_to_body_limit(request(300, 1000, 300));
        assert_eq!((rpc.entries.len(), cut_after), (300, None));

        // Four entries of 3 MiB: two fit, and the commit index sent is not beyond them.
        let (rpc, cut_after) = cut_to_body_limit(request(4, 3 << 20, 4));
        assert_eq!(rpc.entries.len(), 2);
        assert_eq!(cut_after, Some(log_id(2)));
        assert_eq!(rpc.leader_commit, Some(log_id(2)));
        assert!(encode(&rpc).unwrap().len() <= MAX_BODY_BYTES);
        // A commit index below the cut is kept.
        let (rpc, _) = cut_to_body_limit(request(4, 3 << 20, 1));
        assert_eq!(rpc.leader_commit, Some(log_id(1)));

        // One entry always goes, however large.
        let (rpc, cut_after) = cut_to_body_limit(request(2, 9 << 20, 0));
        assert_eq!((rpc.entries.len(), cut_after), (1, Some(log_id(1))));
    }
}
