//! `?target=<name>` proxying (SPEC §5.6): a request for another member is re-sent to it over
//! mTLS and its answer re-wrapped.

use std::sync::Arc;

use serde_json::Value;

use super::envelope::Response;
use super::router::Request;
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
    let metadata: Value = daemon
        .peer_client(&member.address)?
        .query(
            request.method.clone(),
            &request.path_and_query,
            request.body.as_ref(),
        )
        .await
        .map_err(|err| err.context(format!("Failed to send request to target {target:?}: ")))?;
    Ok(Response::sync(metadata))
}
