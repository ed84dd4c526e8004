//! Endpoint declarations and path matching. One router serves the control socket and the
//! network listener; each endpoint says where it is served and what it allows.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{HeaderMap, Method};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::access::Origin;
use super::envelope::Response;
use crate::daemon::Daemon;
use crate::sync;
use crate::{Error, Result};

/// The future a handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response>> + Send>>;

/// A request handler.
pub(crate) type Handler = Arc<dyn Fn(Arc<Daemon>, Request) -> HandlerFuture + Send + Sync>;

/// Wraps an async fn as a [`Handler`].
pub(crate) fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Arc<Daemon>, Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response>> + Send + 'static,
{
    Arc::new(move |daemon, request| Box::pin(f(daemon, request)))
}

/// A request as handlers see it, after routing, trust decision and body decoding.
#[derive(Clone)]
pub(crate) struct Request {
    /// The request method.
    pub method: Method,
    /// The request path and query, as received (what `?target=` proxying re-sends).
    pub path_and_query: String,
    /// Values of the `{var}` segments of the endpoint path.
    pub vars: HashMap<String, String>,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The JSON body, if the request had one (never for binary endpoints).
    pub body: Option<Value>,
    /// The raw body of a binary endpoint (empty for JSON endpoints).
    pub raw: Bytes,
    /// Where the request came in.
    pub origin: Origin,
    /// The trust decision of SPEC §4.
    pub trusted: bool,
    /// The connection's protocol upgrade, for handlers that switch to a WebSocket.
    pub upgrade: UpgradeSlot,
}

/// A request's pending protocol upgrade, taken by at most one handler.
#[derive(Clone, Default)]
pub(crate) struct UpgradeSlot(Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl UpgradeSlot {
    /// A slot holding `upgrade`.
    pub fn new(upgrade: Option<hyper::upgrade::OnUpgrade>) -> UpgradeSlot {
        UpgradeSlot(Arc::new(std::sync::Mutex::new(upgrade)))
    }

    /// The upgrade, unless it was taken already.
    pub fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        sync::lock(&self.0).take()
    }
}

impl Request {
    /// Whether the request is a cluster notification (SPEC §5.7).
    pub fn is_notification(&self) -> bool {
        self.headers
            .get(hyper::header::USER_AGENT)
            .is_some_and(|agent| agent == crate::client::NOTIFIER_USER_AGENT)
    }

    /// The `Sec-WebSocket-Key` of a WebSocket upgrade request; `None` for other requests.
    pub fn websocket_key(&self) -> Option<String> {
        let upgrade = self.headers.get(hyper::header::UPGRADE)?.to_str().ok()?;
        if !upgrade.eq_ignore_ascii_case("websocket") {
            return None;
        }
        let key = self.headers.get(hyper::header::SEC_WEBSOCKET_KEY)?;
        key.to_str().ok().map(String::from)
    }

    /// The value of the query parameter `key`, if present.
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The body decoded as `T`; a missing or ill-shaped body is a 400.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let body = self.body.clone().unwrap_or(Value::Null);
        serde_json::from_value(body)
            .map_err(|err| Error::invalid(format!("Invalid request body: {err}")))
    }
}

/// The future an access check returns: whether the request may go on.
pub(crate) type AccessFuture = Pin<Box<dyn Future<Output = Result<bool>> + Send>>;

/// A custom access check (SPEC §5.3 step 3), run after the trust decision.
pub(crate) type AccessCheck = Arc<dyn Fn(Arc<Daemon>, Request) -> AccessFuture + Send + Sync>;

/// One method's behaviour on an endpoint.
#[derive(Clone)]
pub(crate) struct Action {
    pub handler: Handler,
    pub allow_untrusted: bool,
    /// Checked after the trust decision; `Ok(false)` is a 403.
    pub access: Option<AccessCheck>,
    /// `?target=<name>` forwards the request to that member (SPEC §5.6).
    pub proxy_target: bool,
}

impl Action {
    /// An action for trusted callers only.
    pub fn trusted(handler: Handler) -> Action {
        Action {
            handler,
            allow_untrusted: false,
            access: None,
            proxy_target: false,
        }
    }

    /// An action anyone may call.
    pub fn untrusted(handler: Handler) -> Action {
        Action {
            allow_untrusted: true,
            ..Action::trusted(handler)
        }
    }

    /// Forwards requests with `?target=<name>` to that member (SPEC §5.6).
    pub fn with_proxy_target(mut self) -> Action {
        self.proxy_target = true;
        self
    }
}

/// Which listeners serve an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// Only the unix control socket (`/core/control…`).
    ControlSocket,
    /// Only the core network listener (the Raft transport).
    Network,
    /// The control socket and the core network listener.
    Everywhere,
}

/// A REST resource: a path, where it is served, what it allows, and its actions per method.
pub(crate) struct Endpoint {
    segments: Vec<String>,
    pub served: Served,
    pub allowed_before_init: bool,
    pub allowed_during_shutdown: bool,
    /// Served while the member is un-initialised (core endpoints, and the endpoints of
    /// extension servers with `pre_init`, SPEC §13.3).
    pub served_before_init: bool,
    /// The body is raw bytes, not JSON (the Raft transport, SPEC §5.9).
    pub binary: bool,
    pub get: Option<Action>,
    pub put: Option<Action>,
    pub post: Option<Action>,
    pub delete: Option<Action>,
    pub patch: Option<Action>,
}

impl Endpoint {
    /// An endpoint at `path` (without leading slash; `{var}` matches one segment), served
    /// everywhere, not allowed before init or during shutdown, with no actions yet.
    pub fn new(path: &str) -> Endpoint {
        Endpoint {
            segments: split_path(path).map(String::from).collect(),
            served: Served::Everywhere,
            allowed_before_init: false,
            allowed_during_shutdown: false,
            served_before_init: true,
            binary: false,
            get: None,
            put: None,
            post: None,
            delete: None,
            patch: None,
        }
    }

    /// Serves the endpoint only on the control socket.
    pub fn control_socket_only(mut self) -> Endpoint {
        self.served = Served::ControlSocket;
        self
    }

    /// Serves the endpoint only on the core network listener.
    pub fn network_only(mut self) -> Endpoint {
        self.served = Served::Network;
        self
    }

    /// Allows the endpoint while the database is not open.
    pub fn before_init(mut self) -> Endpoint {
        self.allowed_before_init = true;
        self
    }

    /// Allows the endpoint while the daemon shuts down.
    pub fn during_shutdown(mut self) -> Endpoint {
        self.allowed_during_shutdown = true;
        self
    }

    /// Takes the request body as raw bytes instead of JSON.
    pub fn binary(mut self) -> Endpoint {
        self.binary = true;
        self
    }

    /// Sets the GET action.
    pub fn get(mut self, action: Action) -> Endpoint {
        self.get = Some(action);
        self
    }

    /// Sets the DELETE action.
    pub fn delete(mut self, action: Action) -> Endpoint {
        self.delete = Some(action);
        self
    }

    /// Sets the PUT action.
    pub fn put(mut self, action: Action) -> Endpoint {
        self.put = Some(action);
        self
    }

    /// Sets the PATCH action.
    pub fn patch(mut self, action: Action) -> Endpoint {
        self.patch = Some(action);
        self
    }

    /// Sets the POST action.
    pub fn post(mut self, action: Action) -> Endpoint {
        self.post = Some(action);
        self
    }

    /// The action for `method`: `Err` 404 for a method the API does not know, `Ok(None)` for a
    /// known method this endpoint has no handler for.
    pub fn action(&self, method: &Method) -> Result<Option<&Action>> {
        Ok(match *method {
            Method::GET => self.get.as_ref(),
            Method::PUT => self.put.as_ref(),
            Method::POST => self.post.as_ref(),
            Method::DELETE => self.delete.as_ref(),
            Method::PATCH => self.patch.as_ref(),
            ref other => return Err(Error::not_found(format!("Method '{other}' not found"))),
        })
    }

    /// The path pattern with every `{var}` written `{}`: two endpoints with the same pattern
    /// serve the same requests.
    pub fn pattern(&self) -> String {
        self.segments
            .iter()
            .map(
                |segment| match segment.starts_with('{') && segment.ends_with('}') {
                    true => "{}",
                    false => segment.as_str(),
                },
            )
            .collect::<Vec<_>>()
            .join("/")
    }

    fn matches(&self, segments: &[&str]) -> Option<HashMap<String, String>> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut vars = HashMap::new();
        for (pattern, segment) in self.segments.iter().zip(segments) {
            match pattern.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(var) => {
                    vars.insert(var.to_string(), percent_decode(segment));
                }
                None if pattern == segment => {}
                None => return None,
            }
        }
        Some(vars)
    }
}

fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|segment| !segment.is_empty())
}

fn percent_decode(segment: &str) -> String {
    form_urlencoded::parse(format!("x={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// The set of endpoints of a daemon.
pub(crate) struct Router {
    endpoints: Vec<Endpoint>,
}

impl Router {
    /// A router over `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>) -> Router {
        Router { endpoints }
    }

    /// The endpoint serving `path` on a listener of kind `origin`, with its path variables.
    pub fn find(
        &self,
        origin: &Origin,
        path: &str,
    ) -> Option<(&Endpoint, HashMap<String, String>)> {
        let segments: Vec<&str> = split_path(path).collect();
        self.endpoints
            .iter()
            .filter(|endpoint| match endpoint.served {
                Served::Everywhere => true,
                Served::ControlSocket => origin.is_control_socket(),
                Served::Network => !origin.is_control_socket(),
            })
            .find_map(|endpoint| endpoint.matches(&segments).map(|vars| (endpoint, vars)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_variables() {
        let endpoint = Endpoint::new("core/1.0/cluster/{name}");
        let vars = endpoint
            .matches(&["core", "1.0", "cluster", "c%201"])
            .unwrap();
        assert_eq!(vars["name"], "c 1");
        assert!(endpoint.matches(&["core", "1.0", "cluster"]).is_none());
        assert!(endpoint.matches(&["core", "1.0", "tokens", "x"]).is_none());
        assert!(Endpoint::new("").matches(&[]).is_some());
    }

    #[test]
    fn unknown_methods_are_not_found_and_missing_actions_are_none() {
        let endpoint = Endpoint::new("x");
        assert!(endpoint.action(&Method::GET).unwrap().is_none());
        let err = endpoint
            .action(&Method::from_bytes(b"BREW").unwrap())
            .err()
            .unwrap();
        assert_eq!(err.message(), "Method 'BREW' not found");
        assert_eq!(err.http_status(), 404);
    }
}
