//! `/core/control/…`: administration over the control socket only.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::Result;
use crate::daemon::Daemon;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};

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
