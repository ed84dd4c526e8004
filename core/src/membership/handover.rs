//! Leadership hand-over at shutdown (issue 4): a leader that stops first makes another
//! voter the leader, so the cluster does not wait for an election timeout and a possibly
//! split vote.
//!
//! openraft 0.9 has no leadership transfer, and followers refuse to vote while the leader's
//! lease (the longest election timeout) has not expired. So the leader stops sending
//! heartbeats and stops competing, waits out the lease, and then asks one chosen, reachable
//! voter to start an election at once.

use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::daemon::Daemon;

/// Path of the request that makes a voter start an election now.
pub(crate) const ELECT_PATH: &str = "/core/internal/raft/elect";

/// How long a voter gets to answer the readiness probe when a successor is chosen.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the old leader waits for the new one to be known before stopping anyway.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// If this member leads, hands leadership to another reachable voter; best effort.
pub(crate) async fn hand_over_leadership(daemon: &Daemon) {
    let Ok(db) = daemon.database() else {
        return;
    };
    if !db.is_leader() {
        return;
    }
    let mut successor = None;
    for (id, node, voter) in db.members() {
        if voter && id != db.id() && daemon.probe_ready(&node.address, PROBE_TIMEOUT).await {
            successor = Some((id, node));
            break;
        }
    }
    let Some((successor_id, successor)) = successor else {
        tracing::info!("No other reachable voter to hand leadership to");
        return;
    };
    tracing::info!("Handing leadership over to {}", successor.name);
    let raft = db.raft();
    raft.runtime_config().heartbeat(false);
    raft.runtime_config().elect(false);
    // Followers refuse votes while the lease of the last heartbeat lasts.
    tokio::time::sleep(daemon.raft_settings.election_timeout.1 + Duration::from_millis(50)).await;
    let asked = match daemon.peer_client(&successor.address) {
        Ok(client) => client
            .with_timeout(HANDOVER_TIMEOUT)
            .query::<Value>(Method::POST, ELECT_PATH, None)
            .await
            .map(|_| ()),
        Err(err) => Err(err),
    };
    if let Err(err) = asked {
        tracing::warn!("Failed to ask {} to take over: {err}", successor.name);
        return;
    }
    let elected = raft
        .wait(Some(HANDOVER_TIMEOUT))
        .metrics(
            |metrics| metrics.current_leader == Some(successor_id),
            "the successor leads",
        )
        .await;
    match elected {
        Ok(_) => tracing::info!("{} is the leader now", successor.name),
        Err(err) => tracing::warn!("Leadership hand-over did not complete: {err}"),
    }
}
