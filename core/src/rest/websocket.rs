//! Switching a request to a WebSocket: the handshake answer, and the hand-over of the upgraded
//! connection to whoever serves it (an extension handler, or a relay to another member).

use std::future::Future;

use hyper::upgrade::Upgraded;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::envelope::Response;
use super::router::{Request, UpgradeSlot};
use crate::{Error, Result};

/// What switching a request to a WebSocket needs from it.
pub(crate) struct Handshake {
    key: Option<String>,
    upgrade: UpgradeSlot,
}

impl Handshake {
    /// The handshake of `request` (which may not be an upgrade at all).
    pub fn of(request: &Request) -> Handshake {
        Handshake {
            key: request.websocket_key(),
            upgrade: request.upgrade.clone(),
        }
    }
}

/// Answers with `101 Switching Protocols` and runs `serve` on the upgraded connection once
/// the answer is out. A request that is not a WebSocket upgrade is a 400.
pub(crate) fn accept<F, Fut>(handshake: Handshake, serve: F) -> Result<Response>
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let not_websocket = || Error::invalid("Expected a WebSocket upgrade request");
    let key = handshake.key.ok_or_else(not_websocket)?;
    let upgrade = handshake.upgrade.take().ok_or_else(not_websocket)?;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(upgraded).await,
            Err(err) => tracing::debug!("A WebSocket upgrade failed: {err}"),
        }
    });
    Ok(Response::websocket(derive_accept_key(key.as_bytes())))
}
