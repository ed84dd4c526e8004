//! `PATCH /core/internal/database`: a peer announces that its database came online, which
//! wakes this member if it waits for an upgrade (SPEC §5.4, §11.5).

use std::sync::Arc;

use crate::Result;
use crate::daemon::Daemon;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};

/// `PATCH /core/internal/database` (trusted, allowed before init, socket and network).
pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/internal/database")
        .before_init()
        .patch(Action::trusted(handler(patch)))
}

async fn patch(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    // Without a database (not initialised, stopped) there is nobody to wake.
    if let Ok(database) = daemon.database() {
        database.announce_peer_started();
    }
    Ok(Response::empty())
}
