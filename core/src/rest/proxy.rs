//! `?target=<name>` proxying (SPEC §5.6): a request for another member is re-sent to it over
//! mTLS and its answer re-wrapped.

use std::sync::Arc;

use serde_json::Value;

use hyper::HeaderMap;
use hyper::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use hyper_util::rt::TokioIo;

use super::envelope::Response;
use super::router::Request;
use super::websocket::{self, Handshake};
use crate::client::Client;
use crate::daemon::Daemon;
use crate::membership::members;
use crate::{Error, Result};

/// The member a request names with `?target=`, unless that is empty or this member.
pub(crate) fn remote_target(daemon: &Daemon, request: &Request) -> Option<String> {
    let target = request.query_value("target")?;
    match target.is_empty() || target == daemon.server_info().name {
        true => None,
        false => Some(target.to_string()),
    }
}

/// Re-sends `request` (method, path, query, body) to the member `target` and returns its
/// `metadata` in a new success envelope; its errors keep their status, prefixed.
pub(crate) async fn forward(
    daemon: &Arc<Daemon>,
    target: &str,
    request: &Request,
) -> Result<Response> {
    let member = daemon
        .online_database()?
        .transaction(
            crate::db::ReadMode::Linearizable,
            crate::db::tx::DEFAULT_TIMEOUT,
            members::list,
        )
        .await
        .map_err(|err| {
            Error::invalid(format!(
                "Failed to get cluster member for request target name {target:?}: {}",
                err.message()
            ))
        })?
        .into_iter()
        .find(|member| member.name == target)
        .ok_or_else(|| {
            Error::invalid(format!(
                "Failed to get cluster member for request target name {target:?}: not found"
            ))
        })?;
    let client = daemon.peer_client(&member.address)?;
    if request.websocket_key().is_some() {
        return relay_websocket(client, target, request).await;
    }
    let metadata: Value = client
        .query(
            request.method.clone(),
            &request.path_and_query,
            request.body.as_ref(),
        )
        .await
        .map_err(|err| err.context(format!("Failed to send request to target {target:?}: ")))?;
    Ok(Response::sync(metadata))
}

/// Opens the same WebSocket on `target` and relays bytes both ways between it and the caller
/// (SPEC §5.6: "websocket upgrades are relayed as a byte stream").
async fn relay_websocket(client: Client, target: &str, request: &Request) -> Result<Response> {
    let mut headers = HeaderMap::new();
    for name in [
        CONNECTION,
        UPGRADE,
        SEC_WEBSOCKET_VERSION,
        SEC_WEBSOCKET_KEY,
    ] {
        if let Some(value) = request.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    let (_, remote) = client
        .upgrade(&request.path_and_query, &headers)
        .await
        .map_err(|err| err.context(format!("Failed to send request to target {target:?}: ")))?;
    websocket::accept(Handshake::of(request), |local| async move {
        let (mut local, mut remote) = (TokioIo::new(local), TokioIo::new(remote));
        if let Err(err) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
            tracing::debug!("A relayed WebSocket ended with an error: {err}");
        }
    })
}
