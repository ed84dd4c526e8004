//! `/core/control/…`: administration over the control socket only.

use std::sync::Arc;

use tokio::sync::oneshot;

use serde_json::json;

use crate::Result;
use crate::daemon::Daemon;
use crate::membership::{self, tokens};
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::types::{Control, TokenRequest};

/// `POST /core/control`: bootstrap or join (SPEC §7).
pub(super) fn init() -> Endpoint {
    Endpoint::new("core/control")
        .control_socket_only()
        .before_init()
        .post(Action::trusted(handler(post_init)))
}

async fn post_init(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let control: Control = request.json()?;
    membership::init(daemon, control).await?;
    Ok(Response::empty())
}

/// `POST`/`GET /core/control/tokens`: issue and list join tokens (SPEC §6).
pub(super) fn tokens() -> Endpoint {
    Endpoint::new("core/control/tokens")
        .control_socket_only()
        .post(Action::trusted(handler(post_token)))
        .get(Action::trusted(handler(get_tokens)))
}

async fn post_token(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let token_request: TokenRequest = request.json()?;
    let token = tokens::issue(&daemon, token_request).await?;
    Ok(Response::sync(json!(token)))
}

async fn get_tokens(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    let records = tokens::list(&daemon).await?;
    Ok(Response::sync(json!(records)))
}

/// `POST /core/control/shutdown` (SPEC §15).
pub(super) fn shutdown() -> Endpoint {
    Endpoint::new("core/control/shutdown")
        .control_socket_only()
        .before_init()
        .during_shutdown()
        .post(Action::trusted(handler(post_shutdown)))
}

/// Stops everything but the control socket, answers, and lets the daemon close the control
/// socket once the answer is out.
async fn post_shutdown(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    daemon.begin_shutdown().await?;
    let stopped = daemon.stop_services().await;
    let (sent, when_sent) = oneshot::channel();
    daemon.finish_after(when_sent);
    stopped.map(|()| Response::empty().notify_when_sent(sent))
}
