//! The JSON envelope of every REST response (SPEC §5.1) and the body type that carries it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::Error;

/// What a handler answers on success: the `metadata` of a sync envelope (or, for the Raft
/// transport, raw bytes), and optionally a signal fired once the response has been handed to
/// the connection (used by shutdown to close the control socket only after its caller got the
/// answer).
pub(crate) struct Response {
    pub payload: Payload,
    pub on_sent: Option<oneshot::Sender<()>>,
}

/// The body of a successful response.
pub(crate) enum Payload {
    /// The `metadata` of a sync envelope.
    Json(Value),
    /// Raw bytes, sent as `application/octet-stream` without an envelope (SPEC §5.9).
    Binary(Bytes),
    /// `101 Switching Protocols` to a WebSocket, with its `Sec-WebSocket-Accept` value.
    WebSocket {
        /// The `Sec-WebSocket-Accept` header.
        accept: String,
    },
}

impl Response {
    /// A sync response with `metadata`.
    pub fn sync(metadata: Value) -> Response {
        Response {
            payload: Payload::Json(metadata),
            on_sent: None,
        }
    }

    /// A raw binary response (Raft transport only).
    pub fn binary(bytes: impl Into<Bytes>) -> Response {
        Response {
            payload: Payload::Binary(bytes.into()),
            on_sent: None,
        }
    }

    /// The switch to a WebSocket whose handshake answer is `accept`.
    pub fn websocket(accept: String) -> Response {
        Response {
            payload: Payload::WebSocket { accept },
            on_sent: None,
        }
    }

    /// The empty success, `"metadata":{}`.
    pub fn empty() -> Response {
        Response::sync(json!({}))
    }

    /// Fires `signal` once this response has been written out.
    pub fn notify_when_sent(mut self, signal: oneshot::Sender<()>) -> Response {
        self.on_sent = Some(signal);
        self
    }
}

/// A full response body that fires an optional signal when hyper drops it, which happens once
/// the body has been written to the connection.
pub(crate) struct ResponseBody {
    inner: Full<Bytes>,
    on_drop: Option<oneshot::Sender<()>>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(signal) = self.on_drop.take() {
            let _ = signal.send(());
        }
    }
}

fn bytes_response(
    status: u16,
    content_type: &'static str,
    body: Bytes,
    on_drop: Option<oneshot::Sender<()>>,
) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(ResponseBody {
        inner: Full::new(body),
        on_drop,
    });
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(
    status: u16,
    body: &Value,
    on_drop: Option<oneshot::Sender<()>>,
) -> hyper::Response<ResponseBody> {
    let body = Bytes::from(body.to_string());
    bytes_response(status, "application/json", body, on_drop)
}

/// The success answer: the sync envelope (HTTP 200 with `metadata`), or raw bytes.
pub(crate) fn sync(response: Response) -> hyper::Response<ResponseBody> {
    let metadata = match response.payload {
        Payload::Json(metadata) => metadata,
        Payload::Binary(bytes) => {
            return bytes_response(200, BINARY_CONTENT_TYPE, bytes, response.on_sent);
        }
        Payload::WebSocket { accept } => return switching_protocols(&accept),
    };
    let body = json!({
        "type": "sync",
        "status": "Success",
        "status_code": 200,
        "operation": "",
        "error_code": 0,
        "error": "",
        "metadata": metadata,
    });
    json_response(200, &body, response.on_sent)
}

/// `101 Switching Protocols` to a WebSocket.
fn switching_protocols(accept: &str) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(ResponseBody {
        inner: Full::new(Bytes::new()),
        on_drop: None,
    });
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = HeaderValue::from_str(accept) {
        headers.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// The content type of raw binary bodies.
pub(crate) const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// The error envelope: the HTTP status equals `error_code`.
pub(crate) fn error(err: &Error) -> hyper::Response<ResponseBody> {
    let body = json!({
        "type": "error",
        "status": "",
        "status_code": 0,
        "operation": "",
        "error_code": err.http_status(),
        "error": err.message(),
        "metadata": null,
    });
    json_response(err.http_status(), &body, None)
}
