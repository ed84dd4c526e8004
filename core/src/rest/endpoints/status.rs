//! `GET /core/1.0`: what this member says about itself, to anyone (SPEC §5.4, `Server`).

use std::sync::Arc;

use crate::daemon::Daemon;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::{Error, Result};

pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/1.0")
        .before_init()
        .get(Action::untrusted(handler(get)))
}

async fn get(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    let server = daemon.server_info();
    let metadata = serde_json::to_value(server)
        .map_err(|err| Error::internal(format!("Failed to encode server status: {err}")))?;
    Ok(Response::sync(metadata))
}
