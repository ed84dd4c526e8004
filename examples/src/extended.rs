//! The example application's extension server `extended` (SPEC §16.1): `POST /1.0/extended`
//! (also at `/1.0/extended/simple`) greets every other member and returns their answers.

use futures::SinkExt;
use hyper::Method;
use microcluster::extensions::tungstenite::Message;
use microcluster::extensions::tungstenite::protocol::CloseFrame;
use microcluster::extensions::tungstenite::protocol::frame::coding::CloseCode;
use microcluster::extensions::{
    EndpointRequest, ExtensionAction, ExtensionEndpoint, ExtensionServer, Reply,
};
use microcluster::{Error, Result, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The path of the greeting endpoint.
pub const EXTENDED_PATH: &str = "/1.0/extended";

/// The path of the WebSocket endpoint.
pub const WEBSOCKET_PATH: &str = "/1.0/extended/websocket";

/// The message every member sends to the others.
const MESSAGE: &str = "Testing 1 2 3...";

/// What one member sends the others.
#[derive(Serialize, Deserialize)]
struct Greeting {
    sender: String,
    message: String,
}

/// The `extended` server: core API, also on the control socket, under `1.0`, with
/// `POST /1.0/extended` and `GET /1.0/extended/websocket`.
pub fn server() -> ExtensionServer {
    let greet = ExtensionAction::new(greet).allow_untrusted().proxy_target();
    let endpoint = ExtensionEndpoint::new("extended", "extended")
        .alias("extended/simple")
        .post(greet);
    let websocket = ExtensionEndpoint::new("websocket", "extended/websocket")
        .get(ExtensionAction::new(websocket).proxy_target());
    let mut server = ExtensionServer::core_api("extended", "1.0", vec![endpoint, websocket]);
    server.serve_unix = true;
    server
}

/// A notification is answered with what it said; any other request is sent on to every other
/// member as a notification, and their answers are returned one per line, by member name.
async fn greet(state: State, request: EndpointRequest) -> Result<Reply> {
    let own = state.address();
    if request.is_notification() {
        let greeting: Greeting = serde_json::from_value(request.body.unwrap_or(Value::Null))
            .map_err(|err| Error::invalid(format!("Invalid greeting: {err}")))?;
        return Ok(Reply::Json(Value::String(format!(
            "cluster member at address \"{own}\" received message \"{}\" from cluster member at address \"{}\"",
            greeting.message, greeting.sender
        ))));
    }
    let greeting = serde_json::to_value(Greeting {
        sender: own,
        message: MESSAGE.to_string(),
    })
    .map_err(|err| Error::internal(format!("Failed to encode the greeting: {err}")))?;
    let mut text = String::new();
    for (name, answer) in state
        .query_cluster(Method::POST, EXTENDED_PATH, Some(&greeting))
        .await?
    {
        let answer = answer
            .map_err(|err| err.context(format!("Failed to greet cluster member {name:?}: ")))?;
        text.push_str(answer.as_str().unwrap_or_default());
        text.push('\n');
    }
    Ok(Reply::Json(Value::String(text)))
}

/// Upgrades to a WebSocket, sends `<own name>: websocket message 1` to `3` and closes
/// normally.
async fn websocket(state: State, _request: EndpointRequest) -> Result<Reply> {
    let name = state.name();
    Ok(Reply::websocket(move |mut socket| async move {
        for i in 1..=3 {
            let message = Message::text(format!("{name}: websocket message {i}"));
            if let Err(err) = socket.send(message).await {
                tracing::warn!("Failed to send a WebSocket message: {err}");
                return;
            }
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if let Err(err) = socket.close(Some(close)).await {
            tracing::warn!("Failed to close the WebSocket: {err}");
        }
    }))
}
