//! `POST /core/internal/hooks/{type}[?target=name]`: runs a hook on this member, or on the
//! member named by `target` (SPEC §5.4, §5.6, §10).

use std::sync::Arc;

use serde::Deserialize;

use crate::daemon::Daemon;
use crate::hooks::names;
use crate::member_config::MemberConfig;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::types::ClusterMemberLocal;
use crate::{Error, Result};

/// `POST /core/internal/hooks/{type}`.
pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/internal/hooks/{type}")
        .post(Action::trusted(handler(post_hook)).with_proxy_target())
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
