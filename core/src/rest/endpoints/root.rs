//! `GET /`: the API versions this server speaks.

use std::sync::Arc;

use serde_json::json;

use crate::Result;
use crate::daemon::Daemon;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};

pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("")
        .before_init()
        .get(Action::untrusted(handler(get)))
}

async fn get(_daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    Ok(Response::sync(json!(["/1.0"])))
}
