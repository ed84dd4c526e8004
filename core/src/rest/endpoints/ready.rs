//! `GET /core/1.0/ready`: 200 once start-up has finished, 503 before.

use std::sync::Arc;

use crate::daemon::Daemon;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::{Error, Result};

pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/1.0/ready")
        .before_init()
        .get(Action::trusted(handler(get)))
}

async fn get(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    if !daemon.is_ready() {
        return Err(Error::unavailable("Daemon is not ready yet"));
    }
    Ok(Response::empty())
}
