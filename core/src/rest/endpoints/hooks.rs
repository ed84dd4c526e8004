//! `POST /core/internal/hooks/{type}[?target=name]`: runs a hook on this member, or on the
//! member named by `target` (SPEC §5.4, §5.6, §10).

use std::sync::Arc;

use hyper::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::daemon::Daemon;
use crate::hooks::names;
use crate::member_config::MemberConfig;
use crate::membership::members;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::types::ClusterMemberLocal;
use crate::{Error, Result};

/// `POST /core/internal/hooks/{type}`.
pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/internal/hooks/{type}").post(Action::trusted(handler(post_hook)))
}

#[derive(Deserialize)]
struct NewMemberOptions {
    new_member: ClusterMemberLocal,
}

#[derive(Deserialize, Default)]
struct RemoveMemberOptions {
    #[serde(default)]
    force: bool,
}

async fn post_hook(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let kind = request.vars.get("type").cloned().unwrap_or_default();
    let target = request
        .query
        .iter()
        .find(|(key, _)| key == "target")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    if !target.is_empty() && target != daemon.server_info().name {
        let path = format!("/core/internal/hooks/{kind}");
        return proxy(&daemon, &target, &path, request.body.as_ref()).await;
    }
    let state = daemon.state();
    let hooks = &daemon.hooks.0;
    match kind.as_str() {
        names::ON_NEW_MEMBER => {
            let options: NewMemberOptions = request.json()?;
            hooks.on_new_member(state, options.new_member).await?;
        }
        names::PRE_REMOVE => {
            let options: RemoveMemberOptions = request.json().unwrap_or_default();
            hooks.pre_remove(state, options.force).await?;
        }
        names::POST_REMOVE => {
            let options: RemoveMemberOptions = request.json().unwrap_or_default();
            hooks.post_remove(state, options.force).await?;
        }
        names::ON_DAEMON_CONFIG_UPDATE => {
            let config: MemberConfig = request.json()?;
            hooks.on_daemon_config_update(state, config).await?;
        }
        _ => return Err(Error::invalid("No valid hook found for the given type")),
    }
    Ok(Response::empty())
}

/// Re-sends a request to the member `target` and re-wraps its answer (SPEC §5.6).
pub(crate) async fn proxy(
    daemon: &Arc<Daemon>,
    target: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Response> {
    let name = target.to_string();
    let rows = daemon
        .online_database()?
        .transaction(
            crate::db::ReadMode::Linearizable,
            crate::db::tx::DEFAULT_TIMEOUT,
            members::list,
        )
        .await?;
    let member = rows.into_iter().find(|m| m.name == name).ok_or_else(|| {
        Error::invalid(format!(
            "Failed to get cluster member for request target name {target:?}: not found"
        ))
    })?;
    let metadata: Value = daemon
        .peer_client(&member.address)?
        .query(Method::POST, path, body)
        .await
        .map_err(|err| err.context(format!("Failed to send request to target {target:?}: ")))?;
    Ok(Response::sync(metadata))
}
