//! `/core/internal/raft/…`: the Raft transport (SPEC §5.9), and the two RPCs followers send
//! the leader (proposals and read indexes). Binary bodies; trusted members only; served before
//! init and during shutdown, since the Raft node answers until it has stopped.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::Result;
use crate::daemon::Daemon;
use crate::db::Database;
use crate::db::raft::MemberNode;
use crate::db::raft::network::{self, APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::db::raft::{Command, NodeId, TypeConfig};
use crate::db::{PROPOSE_PATH, READ_INDEX_PATH, SET_NODE_PATH};
use crate::membership::handover::ELECT_PATH;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Handler, Request, handler};

/// How long a forwarded proposal or read index may take on the leader.
const LEADER_RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn raft_endpoint(path: &str, handler: Handler) -> Endpoint {
    Endpoint::new(path.trim_start_matches('/'))
        .binary()
        .before_init()
        .during_shutdown()
        .network_only()
        .post(Action::trusted(handler))
}

/// The Raft transport endpoints.
pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        raft_endpoint(APPEND_PATH, handler(append)),
        raft_endpoint(VOTE_PATH, handler(vote)),
        raft_endpoint(SNAPSHOT_PATH, handler(snapshot)),
        raft_endpoint(PROPOSE_PATH, handler(propose)),
        raft_endpoint(READ_INDEX_PATH, handler(read_index)),
        raft_endpoint(SET_NODE_PATH, handler(set_node)),
        Endpoint::new(ELECT_PATH.trim_start_matches('/'))
            .before_init()
            .network_only()
            .post(Action::trusted(handler(elect))),
    ]
}

/// Starts an election on this member now (the old leader hands over at shutdown).
async fn elect(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    let db = daemon.database()?;
    db.raft()
        .trigger()
        .elect()
        .await
        .map_err(|err| crate::Error::unavailable(format!("Failed to start an election: {err}")))?;
    Ok(Response::empty())
}

async fn append(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let rpc: AppendEntriesRequest<TypeConfig> = network::decode(&request.raw)?;
    let db = daemon.database()?;
    let reply = Database::rpc_reply(db.raft().append_entries(rpc).await)?;
    Ok(Response::binary(reply))
}

async fn vote(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let rpc: VoteRequest<NodeId> = network::decode(&request.raw)?;
    let db = daemon.database()?;
    let reply = Database::rpc_reply(db.raft().vote(rpc).await)?;
    Ok(Response::binary(reply))
}

async fn snapshot(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let rpc: InstallSnapshotRequest<TypeConfig> = network::decode(&request.raw)?;
    let db = daemon.database()?;
    let reply = Database::rpc_reply(db.raft().install_snapshot(rpc).await)?;
    Ok(Response::binary(reply))
}

async fn propose(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let command: Command = network::decode(&request.raw)?;
    let db = daemon.database()?;
    let reply = Database::leader_reply(db.propose_forwarded(command, LEADER_RPC_TIMEOUT).await)?;
    Ok(Response::binary(reply))
}

async fn read_index(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    let db = daemon.database()?;
    let reply = Database::leader_reply(db.read_index_local(LEADER_RPC_TIMEOUT).await)?;
    Ok(Response::binary(reply))
}

async fn set_node(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let (id, node): (NodeId, MemberNode) = network::decode(&request.raw)?;
    let db = daemon.database()?;
    let _serialised = daemon.membership_lock.lock().await;
    let reply = Database::leader_reply(db.set_node_local(id, node).await)?;
    Ok(Response::binary(reply))
}
