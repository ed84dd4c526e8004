//! Clients of the REST API: over the control socket, and over mTLS to another member.
//!
//! A client keeps its connections open and reuses them. Every request has a deadline (30 s by
//! default). Error envelopes become [`Error`]s with the status the server sent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::certs::CertKeyPair;
use crate::rest::tls;
use crate::sync;
use crate::{Error, ErrorKind, Result, validate};

/// HTTP methods, for [`Client::query`].
pub use hyper::Method;

/// The default deadline of a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `User-Agent` that marks a request as a cluster notification (SPEC §5.7).
pub const NOTIFIER_USER_AGENT: &str = "lxd-cluster-notifier";

/// The content type of raw binary bodies (the Raft transport).
const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// Idle connections kept per client.
const MAX_IDLE_CONNECTIONS: usize = 8;

enum Target {
    Unix(PathBuf),
    Member {
        address: String,
        socket_address: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Unix(path) => format!("the daemon at {path:?}"),
            Target::Member { address, .. } => address.clone(),
        }
    }

    fn host(&self) -> &str {
        match self {
            Target::Unix(_) => "unix.socket",
            Target::Member { address, .. } => address,
        }
    }
}

struct Inner {
    target: Target,
    timeout: Duration,
    user_agent: Option<HeaderValue>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// A REST client of one daemon. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.inner.target.describe())
            .finish()
    }
}

impl Client {
    fn with_target(target: Target) -> Client {
        Client {
            inner: Arc::new(Inner {
                target,
                timeout: DEFAULT_TIMEOUT,
                user_agent: None,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A client of the daemon listening on the control socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client::with_target(Target::Unix(path.into()))
    }

    /// A client of the member at `address` (`IP:port`) that accepts only `server_cert_pem` as
    /// the server's certificate and presents `identity` (normally the local `server.crt`).
    pub fn remote(
        address: &str,
        server_cert_pem: &str,
        identity: Option<&CertKeyPair>,
    ) -> Result<Client> {
        let socket_address = validate::member_address(address)
            .map_err(|reason| Error::invalid(format!("Invalid address {address:?}: {reason}")))?;
        let tls = tls::client_config(server_cert_pem, identity)?;
        Ok(Client::with_target(Target::Member {
            address: address.to_string(),
            socket_address,
            tls,
        }))
    }

    /// The same target with another request deadline (new connections).
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        self.rebuild(timeout, self.inner.user_agent.clone())
    }

    /// The same target, sending requests as cluster notifications (new connections).
    pub fn as_notifier(&self) -> Client {
        self.rebuild(
            self.inner.timeout,
            Some(HeaderValue::from_static(NOTIFIER_USER_AGENT)),
        )
    }

    fn rebuild(&self, timeout: Duration, user_agent: Option<HeaderValue>) -> Client {
        let target = match &self.inner.target {
            Target::Unix(path) => Target::Unix(path.clone()),
            Target::Member {
                address,
                socket_address,
                tls,
            } => Target::Member {
                address: address.clone(),
                socket_address: *socket_address,
                tls: tls.clone(),
            },
        };
        Client {
            inner: Arc::new(Inner {
                target,
                timeout,
                user_agent,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends `method path` with an optional JSON body and decodes the envelope's `metadata`
    /// as `T`.
    pub async fn query<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let body = body
            .map(|body| Bytes::from(body.to_string()))
            .unwrap_or_default();
        let (status, bytes) = self
            .exchange(method, path, "application/json", body, self.inner.timeout)
            .await?;
        decode(status, &bytes)
    }

    /// Sends `POST path` with a raw binary body (the Raft transport, SPEC §5.9) and returns the
    /// raw answer, within `timeout`. An error answer (a JSON envelope) becomes an [`Error`].
    pub async fn post_binary(&self, path: &str, body: Bytes, timeout: Duration) -> Result<Bytes> {
        let (status, bytes) = self
            .exchange(Method::POST, path, BINARY_CONTENT_TYPE, body, timeout)
            .await?;
        match status {
            StatusCode::OK => Ok(bytes),
            _ => decode::<Value>(status, &bytes).and_then(|_| {
                Err(Error::internal(format!(
                    "Unexpected success envelope with HTTP {status} from {}",
                    self.inner.target.describe()
                )))
            }),
        }
    }

    /// One request and its answer, within `timeout`.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        // Every member refuses such a body; refusing it here gives the same 413 without a
        // race between the early answer and the body still being written.
        if body.len() > crate::rest::server::MAX_BODY_BYTES {
            return Err(crate::rest::server::body_too_large());
        }
        let target = self.inner.target.describe();
        let exchange = self.exchange_unbounded(method.clone(), path, content_type, body);
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("Timed out after {timeout:?} waiting for {method} {path} on {target}"),
            )
        })?
    }

    async fn exchange_unbounded(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let build = || -> Result<hyper::Request<Full<Bytes>>> {
            let mut builder = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(HOST, self.inner.target.host())
                .header(CONTENT_TYPE, content_type);
            if let Some(agent) = &self.inner.user_agent {
                builder = builder.header(USER_AGENT, agent.clone());
            }
            builder
                .body(Full::new(body.clone()))
                .map_err(|err| Error::invalid(format!("Invalid request {method} {path}: {err}")))
        };
        let mut request = build()?;
        // A reused connection may have been closed by the server in the meantime; a request
        // that was never sent on it is retried once on a fresh connection.
        let mut sender = match self.take_idle() {
            Some(sender) => sender,
            None => self.connect(false).await?,
        };
        let response = loop {
            match sender.try_send_request(request).await {
                Ok(response) => break response,
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => {
                        request = unsent;
                        sender = self.connect(false).await?;
                    }
                    None => return Err(self.transport_error(failed.into_error())),
                },
            }
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| self.transport_error(err))?
            .to_bytes();
        self.put_idle(sender);
        Ok((status, bytes))
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = sync::lock(&self.inner.idle);
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Full<Bytes>>) {
        let mut idle = sync::lock(&self.inner.idle);
        if !sender.is_closed() && idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(sender);
        }
    }

    fn transport_error(&self, err: impl std::fmt::Display) -> Error {
        Error::unavailable(format!(
            "Failed to talk to {}: {err}",
            self.inner.target.describe()
        ))
    }

    /// A new connection; with `upgrades` it can switch protocols (and is not pooled).
    async fn connect(&self, upgrades: bool) -> Result<SendRequest<Full<Bytes>>> {
        let connect_error = |err: std::io::Error| {
            Error::unavailable(format!(
                "Failed to connect to {}: {err}",
                self.inner.target.describe()
            ))
        };
        match &self.inner.target {
            Target::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(connect_error)?;
                self.handshake(stream, upgrades).await
            }
            Target::Member {
                socket_address,
                tls,
                ..
            } => {
                let tcp = TcpStream::connect(socket_address)
                    .await
                    .map_err(connect_error)?;
                let _ = tcp.set_nodelay(true);
                let server_name =
                    rustls::pki_types::ServerName::IpAddress(socket_address.ip().into());
                let stream = TlsConnector::from(tls.clone())
                    .connect(server_name, tcp)
                    .await
                    .map_err(connect_error)?;
                self.handshake(stream, upgrades).await
            }
        }
    }

    async fn handshake<S>(&self, stream: S, upgrades: bool) -> Result<SendRequest<Full<Bytes>>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| self.transport_error(err))?;
        tokio::spawn(async move {
            let ended = match upgrades {
                true => connection.with_upgrades().await,
                false => connection.await,
            };
            if let Err(err) = ended {
                tracing::debug!("Client connection ended with an error: {err}");
            }
        });
        Ok(sender)
    }

    /// Sends `GET path` with the WebSocket upgrade `headers` on a new connection and returns
    /// the answer's headers and the upgraded connection; an error answer becomes an
    /// [`Error`].
    pub(crate) async fn upgrade(
        &self,
        path: &str,
        headers: &hyper::HeaderMap,
    ) -> Result<(hyper::HeaderMap, hyper::upgrade::Upgraded)> {
        let open = async {
            let mut sender = self.connect(true).await?;
            let mut request = hyper::Request::builder()
                .method(Method::GET)
                .uri(path)
                .header(HOST, self.inner.target.host());
            if let Some(agent) = &self.inner.user_agent {
                request = request.header(USER_AGENT, agent.clone());
            }
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(Bytes::new()))
                .map_err(|err| Error::invalid(format!("Invalid request GET {path}: {err}")))?;
            let mut response = sender
                .send_request(request)
                .await
                .map_err(|err| self.transport_error(err))?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|err| self.transport_error(err))?
                    .to_bytes();
                return decode::<Value>(status, &body).and_then(|_| {
                    Err(Error::internal(format!(
                        "{} answered the WebSocket request with HTTP {status}",
                        self.inner.target.describe()
                    )))
                });
            }
            let headers = response.headers().clone();
            let upgraded = hyper::upgrade::on(&mut response)
                .await
                .map_err(|err| self.transport_error(err))?;
            Ok((headers, upgraded))
        };
        tokio::time::timeout(self.inner.timeout, open)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "Timed out after {:?} opening a WebSocket to {path} on {}",
                        self.inner.timeout,
                        self.inner.target.describe()
                    ),
                )
            })?
    }

    /// Opens a WebSocket to `path` (SPEC §13.1: handlers may upgrade).
    pub async fn websocket(&self, path: &str) -> Result<crate::extensions::WebSocket> {
        use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
        let key = generate_key();
        let mut headers = hyper::HeaderMap::new();
        let header = |value: &str| {
            HeaderValue::from_str(value)
                .map_err(|err| Error::internal(format!("Invalid header value: {err}")))
        };
        headers.insert(hyper::header::CONNECTION, header("Upgrade")?);
        headers.insert(hyper::header::UPGRADE, header("websocket")?);
        headers.insert(hyper::header::SEC_WEBSOCKET_VERSION, header("13")?);
        headers.insert(hyper::header::SEC_WEBSOCKET_KEY, header(&key)?);
        let (answer, upgraded) = self.upgrade(path, &headers).await?;
        let expected = derive_accept_key(key.as_bytes());
        let accepted = answer
            .get(hyper::header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|accept| accept.as_bytes() == expected.as_bytes());
        if !accepted {
            return Err(Error::internal(format!(
                "{} answered the WebSocket handshake with a wrong Sec-WebSocket-Accept",
                self.inner.target.describe()
            )));
        }
        Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await)
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    error: String,
    #[serde(default)]
    metadata: Value,
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T> {
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(envelope) if envelope.kind == "error" || !status.is_success() => {
            let code = if envelope.error_code != 0 {
                envelope.error_code
            } else {
                status.as_u16()
            };
            Err(Error::from_status(code, envelope.error))
        }
        Ok(envelope) => serde_json::from_value(envelope.metadata)
            .map_err(|err| Error::internal(format!("Failed to decode the response: {err}"))),
        Err(_) => Err(Error::from_status(
            status.as_u16(),
            format!(
                "Unexpected response (HTTP {status}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_decode_into_values_and_typed_errors() {
        let ok = br#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":{"a":1}}"#;
        let value: Value = decode(StatusCode::OK, ok).unwrap();
        assert_eq!(value["a"], 1);
        let err = br#"{"type":"error","status":"","status_code":0,"operation":"","error_code":404,"error":"not found","metadata":null}"#;
        let err = decode::<Value>(StatusCode::NOT_FOUND, err).unwrap_err();
        assert_eq!(
            (err.kind(), err.message()),
            (ErrorKind::NotFound, "not found")
        );
        let err = decode::<Value>(StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert_eq!(err.http_status(), 502);
        assert!(err.message().contains("<html>"));
    }
}
