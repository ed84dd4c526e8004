//! Listeners: the accept loops of the control socket and the core network listener, and the
//! request pipeline of SPEC §5.3 that both share.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access::{self, Origin, PeerCertificate};
use super::envelope::{self, Response, ResponseBody};
use super::proxy;
use super::router::{Request, Router, UpgradeSlot};
use crate::daemon::Daemon;
use crate::{Error, ErrorKind, Result};

/// The largest request body accepted (SPEC: oversized bodies get 413).
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests get to finish when a listener stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the control socket until `stop` is cancelled, then drains open connections.
pub(crate) async fn serve_control_socket(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let router = daemon.router.clone();
                    serve_connection(&daemon, &router, &connections, &stop, stream, Origin::ControlSocket)
                }
                Err(err) => {
                    tracing::warn!("Failed to accept on the control socket: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drain(connections).await;
}

/// Serves `router` over HTTPS with `tls` on `listener` until `stop` is cancelled, then
/// drains open connections. `listener_address` is the address of a dedicated extension
/// listener (`None` for the core listener).
pub(crate) async fn serve_network(
    daemon: Arc<Daemon>,
    router: Arc<Router>,
    listener_address: Option<String>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("Failed to accept on a network listener: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let daemon = daemon.clone();
        let router = router.clone();
        let listener_address = listener_address.clone();
        let connections = connections.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                result = handshake => match result {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!("TLS handshake with {peer} failed: {err}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake with {peer} timed out");
                        return;
                    }
                },
            };
            let client_certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|certificate| Arc::new(PeerCertificate::new(certificate)));
            serve_connection(
                &daemon,
                &router,
                &connections,
                &stop,
                stream,
                Origin::Network {
                    client_certificate,
                    listener_address,
                },
            );
        });
    }
    // Free the address at once, so that a restarted listener can bind it.
    drop(listener);
    drain(connections).await;
}

/// Waits for the open connections of a stopped listener to finish their requests, at most
/// [`DRAIN_TIMEOUT`]; the rest are dropped.
async fn drain(connections: TaskTracker) {
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("Connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

fn serve_connection<S>(
    daemon: &Arc<Daemon>,
    router: &Arc<Router>,
    connections: &TaskTracker,
    stop: &CancellationToken,
    stream: S,
    origin: Origin,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let daemon = daemon.clone();
    let router = router.clone();
    let service = service_fn(move |request| {
        let daemon = daemon.clone();
        let router = router.clone();
        let origin = origin.clone();
        async move { Ok::<_, Infallible>(handle(daemon, &router, origin, request).await) }
    });
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let stop = stop.clone();
    connections.spawn(async move {
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            _ = stop.cancelled() => {
                // Finish the request in progress, then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = ended {
            tracing::debug!("Connection ended with an error: {err}");
        }
    });
}

/// Answers one request: the envelope of the handler's result or of the first failed check.
async fn handle(
    daemon: Arc<Daemon>,
    router: &Router,
    origin: Origin,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match process(daemon, router, origin, request).await {
        Ok(response) => envelope::sync(response),
        Err(err) => {
            tracing::debug!("{method} {path}: {} {err}", err.http_status());
            envelope::error(&err)
        }
    }
}

/// The pipeline of SPEC §5.3.
async fn process(
    daemon: Arc<Daemon>,
    router: &Router,
    origin: Origin,
    request: hyper::Request<Incoming>,
) -> Result<Response> {
    let (mut parts, body) = request.into_parts();
    let upgrade = UpgradeSlot::new(parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let (endpoint, vars) = router
        .find(&origin, parts.uri.path())
        .ok_or_else(|| Error::not_found("not found"))?;

    if daemon.is_shutting_down() && !endpoint.allowed_during_shutdown {
        return Err(Error::unavailable("Daemon is shutting down"));
    }
    if !endpoint.served_before_init && daemon.member_address().is_none() {
        return Err(Error::unavailable(
            crate::DatabaseState::NotInitialized.text(),
        ));
    }
    if !endpoint.allowed_before_init {
        daemon.database_state().require_open()?;
    }

    let host = parts.headers.get(HOST).and_then(|host| host.to_str().ok());
    let member_address = daemon.member_address();
    let trusted = access::is_trusted(&origin, host, member_address.as_deref(), &daemon.truststore);
    let action = endpoint
        .action(&parts.method)?
        .ok_or_else(|| Error::new(ErrorKind::NotImplemented, "not implemented"))?;
    if !trusted && !action.allow_untrusted {
        return Err(Error::forbidden("not authorized"));
    }
    let action = action.clone();

    let declared_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(body_too_large());
    }
    let bytes = read_body(body).await?;
    let (body, raw) = if endpoint.binary {
        (None, bytes)
    } else if bytes.iter().all(u8::is_ascii_whitespace) {
        (None, Bytes::new())
    } else {
        let body = serde_json::from_slice::<Value>(&bytes)
            .map_err(|err| Error::invalid(format!("Invalid JSON in request body: {err}")))?;
        (Some(body), Bytes::new())
    };
    let query = parts
        .uri
        .query()
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let request = Request {
        method: parts.method,
        path_and_query,
        vars,
        query,
        headers: parts.headers,
        body,
        raw,
        origin,
        trusted,
        upgrade,
    };
    if let Some(access) = &action.access
        && !access(daemon.clone(), request.clone()).await?
    {
        return Err(Error::forbidden("not authorized"));
    }
    if action.proxy_target
        && let Some(target) = proxy::remote_target(&daemon, &request)
    {
        return proxy::forward(&daemon, &target, &request).await;
    }
    (action.handler)(daemon, request).await
}

/// The 413 of a body over [`MAX_BODY_BYTES`].
pub(crate) fn body_too_large() -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!("Request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
    )
}

async fn read_body(body: Incoming) -> Result<Bytes> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(body_too_large()),
        Err(err) => Err(Error::invalid(format!(
            "Failed to read request body: {err}"
        ))),
    }
}
