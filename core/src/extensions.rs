//! Extension servers (SPEC §13): REST resources the embedding application mounts on the core
//! listener (core-API servers, optionally also on the control socket and before init) or on
//! dedicated listeners of their own.
//!
//! ```no_run
//! use microcluster::extensions::{ExtensionAction, ExtensionEndpoint, ExtensionServer, Reply};
//! let hello = ExtensionEndpoint::new("hello", "hello").get(ExtensionAction::new(
//!     |state, _request| async move { Ok(Reply::Json(serde_json::json!(state.name()))) },
//! ));
//! let server = ExtensionServer::core_api("hello.example.com", "1.0", vec![hello]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::{HeaderMap, Method};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hooks::{HookGate, State, run_blocking};
use crate::rest::access::Origin;
use crate::rest::envelope::Response;
use crate::rest::router::{self, Endpoint, Router, Served};
use crate::rest::websocket;
use crate::{Error, Result, validate};

/// The WebSocket library the connections of [`Reply::WebSocket`] come from.
pub use tokio_tungstenite::tungstenite;

/// A WebSocket connection: with the caller in a handler ([`Reply::WebSocket`]), or with a
/// member ([`crate::Client::websocket`]).
pub type WebSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Serves a WebSocket connection until it returns.
pub type WebSocketHandler =
    Box<dyn FnOnce(WebSocket) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What an endpoint handler answers on success.
#[non_exhaustive]
pub enum Reply {
    /// The `metadata` of a sync envelope (SPEC §5.1).
    Json(Value),
    /// Switch the request (which must be a WebSocket upgrade, else 400) to a WebSocket served
    /// by the handler.
    WebSocket(WebSocketHandler),
}

impl Reply {
    /// A WebSocket served by `serve`.
    pub fn websocket<F, Fut>(serve: F) -> Reply
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Reply::WebSocket(Box::new(move |socket| Box::pin(serve(socket))))
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Json(value) => f.debug_tuple("Json").field(value).finish(),
            Reply::WebSocket(_) => f.write_str("WebSocket"),
        }
    }
}

/// The future an endpoint handler returns.
pub type EndpointFuture = Pin<Box<dyn Future<Output = Result<Reply>> + Send>>;

/// An endpoint handler: gets the member's [`State`] and the request. An error answers with its
/// status and message.
pub type EndpointHandler = Arc<dyn Fn(State, EndpointRequest) -> EndpointFuture + Send + Sync>;

/// The future an access handler returns: whether the request may go on.
pub type AccessFuture = Pin<Box<dyn Future<Output = Result<bool>> + Send>>;

/// A custom access check, run after the trust decision: `Ok(false)` answers 403
/// `not authorized`, an error answers with that error.
pub type AccessHandler = Arc<dyn Fn(State, EndpointRequest) -> AccessFuture + Send + Sync>;

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Caller {
    /// The control socket (always trusted).
    ControlSocket,
    /// A cluster member, identified by the server certificate it presented.
    Member {
        /// The member's name in the truststore.
        name: String,
        /// The SHA-256 fingerprint of its certificate.
        fingerprint: String,
    },
    /// A network client that is not a trusted member.
    Unknown {
        /// The fingerprint of the client certificate it presented, if any.
        fingerprint: Option<String>,
    },
}

/// A request to an extension endpoint.
#[derive(Clone, Debug)]
pub struct EndpointRequest {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The values of the `{var}` segments of the endpoint path.
    pub vars: BTreeMap<String, String>,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The JSON body, if there was one.
    pub body: Option<Value>,
    /// The trust decision of SPEC §4.
    pub trusted: bool,
    /// Who sent the request.
    pub caller: Caller,
}

impl EndpointRequest {
    /// Whether the request is a cluster notification (SPEC §5.7): another member telling this
    /// one about something it is already doing. Handlers that fan out must not fan out again.
    pub fn is_notification(&self) -> bool {
        self.headers
            .get(hyper::header::USER_AGENT)
            .is_some_and(|agent| agent == crate::client::NOTIFIER_USER_AGENT)
    }

    /// The request as one JSON object (what the C, Python and Node bindings hand to their
    /// handlers): `method`, `path`, `vars`, `query`, `body`, `trusted`, `notification`,
    /// `caller`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "vars": self.vars,
            "query": self.query,
            "body": self.body,
            "trusted": self.trusted,
            "notification": self.is_notification(),
            "caller": self.caller,
        })
    }
}

/// One method's behaviour on an extension endpoint.
#[derive(Clone)]
pub struct ExtensionAction {
    /// Answers the request.
    pub handler: EndpointHandler,
    /// Checked after the trust decision, before the handler.
    pub access_handler: Option<AccessHandler>,
    /// Lets untrusted callers through (the access handler, if any, still runs).
    pub allow_untrusted: bool,
    /// `?target=<name>` forwards the request to that member and re-wraps its answer.
    pub proxy_target: bool,
}

impl fmt::Debug for ExtensionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtensionAction")
            .field("access_handler", &self.access_handler.is_some())
            .field("allow_untrusted", &self.allow_untrusted)
            .field("proxy_target", &self.proxy_target)
            .finish()
    }
}

impl ExtensionAction {
    /// An action for trusted callers, answered by `handler`.
    pub fn new<F, Fut>(handler: F) -> ExtensionAction
    where
        F: Fn(State, EndpointRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply>> + Send + 'static,
    {
        ExtensionAction {
            handler: Arc::new(move |state, request| Box::pin(handler(state, request))),
            access_handler: None,
            allow_untrusted: false,
            proxy_target: false,
        }
    }

    /// Lets untrusted callers through.
    pub fn allow_untrusted(mut self) -> ExtensionAction {
        self.allow_untrusted = true;
        self
    }

    /// Forwards `?target=<name>` requests to that member.
    pub fn proxy_target(mut self) -> ExtensionAction {
        self.proxy_target = true;
        self
    }

    /// Adds a custom access check.
    pub fn access_handler<F, Fut>(mut self, check: F) -> ExtensionAction
    where
        F: Fn(State, EndpointRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool>> + Send + 'static,
    {
        self.access_handler = Some(Arc::new(move |state, request| {
            Box::pin(check(state, request))
        }));
        self
    }
}

/// A REST resource path with one action per method.
#[derive(Clone, Debug, Default)]
pub struct ExtensionEndpoint {
    /// The endpoint's name (for logs, errors and foreign dispatch).
    pub name: String,
    /// Mounted at `/<path_prefix>/<path>` (or `/<path_prefix>` when empty); `{var}` matches
    /// one segment.
    pub path: String,
    /// Further paths serving the same actions.
    pub aliases: Vec<String>,
    /// Served while the daemon shuts down.
    pub allowed_during_shutdown: bool,
    /// Served while the database is not online.
    pub allowed_before_init: bool,
    /// The GET action.
    pub get: Option<ExtensionAction>,
    /// The PUT action.
    pub put: Option<ExtensionAction>,
    /// The POST action.
    pub post: Option<ExtensionAction>,
    /// The DELETE action.
    pub delete: Option<ExtensionAction>,
    /// The PATCH action.
    pub patch: Option<ExtensionAction>,
}

impl ExtensionEndpoint {
    /// An endpoint `name` at `path`, with no actions yet.
    pub fn new(name: &str, path: &str) -> ExtensionEndpoint {
        ExtensionEndpoint {
            name: name.to_string(),
            path: path.to_string(),
            ..ExtensionEndpoint::default()
        }
    }

    /// Adds an alias path.
    pub fn alias(mut self, path: &str) -> ExtensionEndpoint {
        self.aliases.push(path.to_string());
        self
    }

    /// Sets the GET action.
    pub fn get(mut self, action: ExtensionAction) -> ExtensionEndpoint {
        self.get = Some(action);
        self
    }

    /// Sets the PUT action.
    pub fn put(mut self, action: ExtensionAction) -> ExtensionEndpoint {
        self.put = Some(action);
        self
    }

    /// Sets the POST action.
    pub fn post(mut self, action: ExtensionAction) -> ExtensionEndpoint {
        self.post = Some(action);
        self
    }

    /// Sets the DELETE action.
    pub fn delete(mut self, action: ExtensionAction) -> ExtensionEndpoint {
        self.delete = Some(action);
        self
    }

    /// Sets the PATCH action.
    pub fn patch(mut self, action: ExtensionAction) -> ExtensionEndpoint {
        self.patch = Some(action);
        self
    }
}

/// Endpoints under one path prefix.
#[derive(Clone, Debug, Default)]
pub struct ExtensionResource {
    /// The first path segment(s), e.g. `1.0`.
    pub path_prefix: String,
    /// The endpoints, each mounted under the prefix.
    pub endpoints: Vec<ExtensionEndpoint>,
}

/// An extension server (SPEC §13.1).
#[derive(Clone, Debug, Default)]
pub struct ExtensionServer {
    /// An FQDN, neither `core` nor `unix`.
    pub name: String,
    /// The default address of a dedicated listener; empty for a core-API server.
    pub address: String,
    /// Mounted on the core listener, with the cluster certificate.
    pub core_api: bool,
    /// With `core_api` and `serve_unix`: available on the control socket before init.
    pub pre_init: bool,
    /// With `core_api`: also served on the control socket.
    pub serve_unix: bool,
    /// A dedicated listener with its own certificate, `certificates/<name>.crt`.
    pub dedicated_certificate: bool,
    /// The resources.
    pub resources: Vec<ExtensionResource>,
}

impl ExtensionServer {
    /// A core-API server `name` with `endpoints` under `path_prefix`.
    pub fn core_api(
        name: &str,
        path_prefix: &str,
        endpoints: Vec<ExtensionEndpoint>,
    ) -> ExtensionServer {
        ExtensionServer {
            name: name.to_string(),
            core_api: true,
            resources: vec![ExtensionResource {
                path_prefix: path_prefix.to_string(),
                endpoints,
            }],
            ..ExtensionServer::default()
        }
    }

    /// Every path this server serves, with the endpoint's name.
    fn paths(&self) -> impl Iterator<Item = (String, &ExtensionEndpoint)> {
        self.resources.iter().flat_map(|resource| {
            resource.endpoints.iter().flat_map(move |endpoint| {
                std::iter::once(&endpoint.path)
                    .chain(&endpoint.aliases)
                    .map(move |path| (join_path(&resource.path_prefix, path), endpoint))
            })
        })
    }

    /// The router endpoints serving this server.
    fn router_endpoints(&self) -> Vec<Endpoint> {
        let served = match (self.core_api, self.serve_unix) {
            (true, true) => Served::Everywhere,
            _ => Served::Network,
        };
        let before_init = self.core_api && self.serve_unix && self.pre_init;
        self.paths()
            .map(|(path, endpoint)| {
                let mut mounted = Endpoint::new(&path);
                mounted.served = served;
                mounted.served_before_init = before_init;
                mounted.allowed_before_init = endpoint.allowed_before_init;
                mounted.allowed_during_shutdown = endpoint.allowed_during_shutdown;
                mounted.get = endpoint.get.as_ref().map(router_action);
                mounted.put = endpoint.put.as_ref().map(router_action);
                mounted.post = endpoint.post.as_ref().map(router_action);
                mounted.delete = endpoint.delete.as_ref().map(router_action);
                mounted.patch = endpoint.patch.as_ref().map(router_action);
                mounted
            })
            .collect()
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let path = path.trim_matches('/');
    match (prefix.is_empty(), path.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => path.to_string(),
        (false, false) => format!("{prefix}/{path}"),
    }
}

/// The router action running an extension action.
fn router_action(action: &ExtensionAction) -> router::Action {
    let handler = action.handler.clone();
    let access = action
        .access_handler
        .clone()
        .map(|check| -> router::AccessCheck {
            Arc::new(move |daemon, request| {
                let state = daemon.state();
                let request = endpoint_request(&daemon, request);
                check(state, request)
            })
        });
    router::Action {
        handler: router::handler(move |daemon, request| {
            let state = daemon.state();
            let handshake = websocket::Handshake::of(&request);
            let request = endpoint_request(&daemon, request);
            let reply = handler(state, request);
            async move {
                match reply.await? {
                    Reply::Json(metadata) => Ok(Response::sync(metadata)),
                    Reply::WebSocket(serve) => {
                        websocket::accept(handshake, |upgraded| async move {
                            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                TokioIo::new(upgraded),
                                tungstenite::protocol::Role::Server,
                                None,
                            )
                            .await;
                            serve(socket).await;
                        })
                    }
                }
            }
        }),
        allow_untrusted: action.allow_untrusted,
        access,
        proxy_target: action.proxy_target,
    }
}

fn endpoint_request(daemon: &crate::daemon::Daemon, request: router::Request) -> EndpointRequest {
    let caller = match &request.origin {
        Origin::ControlSocket => Caller::ControlSocket,
        Origin::Network {
            client_certificate, ..
        } => {
            let fingerprint = client_certificate
                .as_ref()
                .map(|certificate| certificate.fingerprint.clone());
            let member = fingerprint
                .as_ref()
                .filter(|_| request.trusted)
                .and_then(|fingerprint| daemon.truststore.by_fingerprint(fingerprint));
            match (member, fingerprint) {
                (Some(member), Some(fingerprint)) => Caller::Member {
                    name: member.name,
                    fingerprint,
                },
                (_, fingerprint) => Caller::Unknown { fingerprint },
            }
        }
    };
    let path = request
        .path_and_query
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    EndpointRequest {
        method: request.method,
        path,
        vars: request.vars.into_iter().collect(),
        query: request.query,
        headers: request.headers,
        body: request.body,
        trusted: request.trusted,
        caller,
    }
}

/// Checks `servers` against the rules of SPEC §13.2; `core_address` is the member's address
/// once known, and `core_endpoints` the library's own endpoints.
pub(crate) fn validate(
    servers: &[ExtensionServer],
    core_address: Option<&str>,
    core_endpoints: &[Endpoint],
) -> Result<()> {
    let mut names = BTreeSet::new();
    let mut addresses: BTreeSet<String> = core_address.map(String::from).into_iter().collect();
    for server in servers {
        validate::fqdn(&server.name).map_err(|reason| {
            Error::invalid(format!(
                "Server name {:?} is not a valid FQDN: {reason}",
                server.name
            ))
        })?;
        if server.name == "core" || server.name == "unix" {
            return Err(Error::invalid(format!(
                "Cannot use the reserved server name {:?}",
                server.name
            )));
        }
        if !names.insert(server.name.as_str()) {
            return Err(Error::invalid(format!(
                "Server name {:?} is defined more than once",
                server.name
            )));
        }
        if server.resources.is_empty() {
            return Err(Error::invalid("Server must have defined resources"));
        }
        if server.resources.iter().any(|r| r.endpoints.is_empty()) {
            return Err(Error::invalid(format!(
                "Server {:?} resource must have defined endpoints",
                server.name
            )));
        }
        if server.serve_unix && !server.core_api {
            return Err(Error::invalid(
                "Cannot serve non-core API resources over the core unix socket",
            ));
        }
        if server.core_api && server.dedicated_certificate {
            return Err(Error::invalid(
                "Core API server cannot have a dedicated certificate",
            ));
        }
        if server.core_api && !server.address.is_empty() {
            return Err(Error::invalid(
                "Core API server cannot have a pre-defined address",
            ));
        }
        // A forwarded request goes to the target's core listener, where only core-API
        // servers are mounted.
        let proxied = server
            .resources
            .iter()
            .flat_map(|r| &r.endpoints)
            .any(|endpoint| {
                [
                    &endpoint.get,
                    &endpoint.put,
                    &endpoint.post,
                    &endpoint.delete,
                    &endpoint.patch,
                ]
                .into_iter()
                .flatten()
                .any(|action| action.proxy_target)
            });
        if proxied && !server.core_api {
            return Err(Error::invalid(format!(
                "Server {:?} cannot use proxy_target: only core API servers can forward requests to other members",
                server.name
            )));
        }
        if !server.address.is_empty() {
            validate::member_address(&server.address).map_err(|reason| {
                Error::invalid(format!("Invalid address {:?}: {reason}", server.address))
            })?;
            if !addresses.insert(server.address.clone()) {
                return Err(Error::invalid(format!(
                    "Server address {:?} conflicts with another Server",
                    server.address
                )));
            }
        }
    }
    validate_paths(servers, core_endpoints)
}

/// No `core_api` path under `/core`, and no path twice on one listener.
fn validate_paths(servers: &[ExtensionServer], core_endpoints: &[Endpoint]) -> Result<()> {
    // Pattern → (endpoint name, server name), per listener ("" is the core listener).
    let mut listeners: BTreeMap<&str, BTreeMap<String, (String, String)>> = BTreeMap::new();
    let core = listeners.entry("").or_default();
    for endpoint in core_endpoints {
        core.insert(endpoint.pattern(), (endpoint.pattern(), "core".to_string()));
    }
    for server in servers {
        let listener = match server.core_api {
            true => "",
            false => server.name.as_str(),
        };
        for (path, endpoint) in server.paths() {
            if server.core_api && path.split('/').next() == Some("core") {
                return Err(Error::invalid(format!(
                    "Endpoint from server {:?} conflicts with reserved namespace \"/core\"",
                    server.name
                )));
            }
            let pattern = Endpoint::new(&path).pattern();
            let taken = listeners.entry(listener).or_default();
            if let Some((_, other)) = taken.get(&pattern) {
                return Err(Error::invalid(format!(
                    "Endpoint {:?} from server {:?} conflicts with another endpoint from server {other:?}",
                    endpoint.name, server.name
                )));
            }
            taken.insert(pattern, (endpoint.name.clone(), server.name.clone()));
        }
    }
    Ok(())
}

/// The core endpoints followed by those of the core-API servers: what the core listener and
/// the control socket serve.
pub(crate) fn core_router(core: Vec<Endpoint>, servers: &[ExtensionServer]) -> Router {
    let mut endpoints = core;
    for server in servers.iter().filter(|server| server.core_api) {
        endpoints.extend(server.router_endpoints());
    }
    Router::new(endpoints)
}

/// The router of each server with a dedicated listener.
pub(crate) fn dedicated_routers(servers: &[ExtensionServer]) -> BTreeMap<String, Arc<Router>> {
    servers
        .iter()
        .filter(|server| !server.core_api)
        .map(|server| {
            let router = Router::new(server.router_endpoints());
            (server.name.clone(), Arc::new(router))
        })
        .collect()
}

/// Extension endpoints written as one blocking dispatch function, which is what C, Python and
/// Node handlers are. Each request runs on a blocking thread of the library's runtime.
pub trait BlockingEndpoints: Send + Sync + 'static {
    /// Answers a request; the `Ok` value is the response `metadata`.
    fn call(&self, call: EndpointCall<'_>) -> Result<Value>;

    /// The custom access check of an action whose [`ActionSpec::access_handler`] is set: runs
    /// after the trust decision, before `?target=` forwarding and the handler. `Ok(true)` lets
    /// the request on, `Ok(false)` answers 403 `not authorized`, an error answers with its
    /// status and message.
    fn access(&self, call: EndpointCall<'_>) -> Result<bool>;
}

/// One request to a [`BlockingEndpoints`] dispatcher: for the endpoint `endpoint` of the
/// server `server`, on the member whose state is `state`.
pub struct EndpointCall<'a> {
    /// The member's state.
    pub state: &'a State,
    /// The name of the extension server.
    pub server: &'a str,
    /// The name of the endpoint.
    pub endpoint: &'a str,
    /// The request.
    pub request: EndpointRequest,
}

/// How errors name the handler of the endpoint `endpoint`.
pub fn handler_name(endpoint: &str) -> String {
    format!("The {endpoint} endpoint")
}

/// How errors name the access handler of the endpoint `endpoint`.
pub fn access_handler_name(endpoint: &str) -> String {
    format!("The access handler of the {endpoint} endpoint")
}

/// The description of an extension server as data (JSON), for the bindings: the same fields as
/// [`ExtensionServer`], with each endpoint's actions given as flags per method and answered by
/// one [`BlockingEndpoints`] dispatcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSpec {
    /// See [`ExtensionServer::name`].
    pub name: String,
    /// See [`ExtensionServer::address`].
    pub address: String,
    /// See [`ExtensionServer::core_api`].
    pub core_api: bool,
    /// See [`ExtensionServer::pre_init`].
    pub pre_init: bool,
    /// See [`ExtensionServer::serve_unix`].
    pub serve_unix: bool,
    /// See [`ExtensionServer::dedicated_certificate`].
    pub dedicated_certificate: bool,
    /// The resources.
    pub resources: Vec<ResourceSpec>,
}

/// A resource of a [`ServerSpec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceSpec {
    /// See [`ExtensionResource::path_prefix`].
    pub path_prefix: String,
    /// The endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// An endpoint of a [`ResourceSpec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointSpec {
    /// See [`ExtensionEndpoint::name`].
    pub name: String,
    /// See [`ExtensionEndpoint::path`].
    pub path: String,
    /// See [`ExtensionEndpoint::aliases`].
    pub aliases: Vec<String>,
    /// See [`ExtensionEndpoint::allowed_during_shutdown`].
    pub allowed_during_shutdown: bool,
    /// See [`ExtensionEndpoint::allowed_before_init`].
    pub allowed_before_init: bool,
    /// The methods served (`GET`, `PUT`, `POST`, `DELETE`, `PATCH`) and their flags.
    pub methods: BTreeMap<String, ActionSpec>,
}

/// The flags of one method of an [`EndpointSpec`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionSpec {
    /// See [`ExtensionAction::allow_untrusted`].
    pub allow_untrusted: bool,
    /// See [`ExtensionAction::proxy_target`].
    pub proxy_target: bool,
    /// Whether the dispatcher's [`BlockingEndpoints::access`] checks each request first (see
    /// [`ExtensionAction::access_handler`]).
    pub access_handler: bool,
}

impl ServerSpec {
    /// Parses a JSON array of server descriptions.
    pub fn parse_list(json: &str) -> Result<Vec<ServerSpec>> {
        serde_json::from_str(json)
            .map_err(|err| Error::invalid(format!("Invalid extension server configuration: {err}")))
    }

    /// The servers described by `specs`, every action answered by `dispatch` on a blocking
    /// thread while `gate` is open.
    pub fn build_all(
        specs: Vec<ServerSpec>,
        dispatch: Arc<dyn BlockingEndpoints>,
        gate: Arc<HookGate>,
    ) -> Result<Vec<ExtensionServer>> {
        specs
            .into_iter()
            .map(|spec| spec.build(&dispatch, &gate))
            .collect()
    }

    fn build(
        self,
        dispatch: &Arc<dyn BlockingEndpoints>,
        gate: &Arc<HookGate>,
    ) -> Result<ExtensionServer> {
        let server_name = self.name.clone();
        // The dispatcher tells endpoints apart by name, so a name may be used once per server.
        let mut names = BTreeSet::new();
        for endpoint in self.resources.iter().flat_map(|r| &r.endpoints) {
            if !names.insert(endpoint.name.as_str()) {
                return Err(Error::invalid(format!(
                    "Server {server_name:?} has more than one endpoint named {:?}",
                    endpoint.name
                )));
            }
        }
        let resources = self
            .resources
            .into_iter()
            .map(|resource| {
                let endpoints = resource
                    .endpoints
                    .into_iter()
                    .map(|spec| spec.build(&server_name, dispatch, gate))
                    .collect::<Result<_>>()?;
                Ok(ExtensionResource {
                    path_prefix: resource.path_prefix,
                    endpoints,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ExtensionServer {
            name: self.name,
            address: self.address,
            core_api: self.core_api,
            pre_init: self.pre_init,
            serve_unix: self.serve_unix,
            dedicated_certificate: self.dedicated_certificate,
            resources,
        })
    }
}

impl EndpointSpec {
    fn build(
        self,
        server: &str,
        dispatch: &Arc<dyn BlockingEndpoints>,
        gate: &Arc<HookGate>,
    ) -> Result<ExtensionEndpoint> {
        let mut endpoint = ExtensionEndpoint {
            name: self.name.clone(),
            path: self.path,
            aliases: self.aliases,
            allowed_during_shutdown: self.allowed_during_shutdown,
            allowed_before_init: self.allowed_before_init,
            ..ExtensionEndpoint::default()
        };
        for (method, flags) in self.methods {
            let action = blocking_action(server, &self.name, flags, dispatch, gate);
            let slot = match method.to_ascii_uppercase().as_str() {
                "GET" => &mut endpoint.get,
                "PUT" => &mut endpoint.put,
                "POST" => &mut endpoint.post,
                "DELETE" => &mut endpoint.delete,
                "PATCH" => &mut endpoint.patch,
                _ => {
                    return Err(Error::invalid(format!(
                        "Endpoint {:?} has an unknown method {method:?}: expected GET, PUT, POST, DELETE or PATCH",
                        self.name
                    )));
                }
            };
            *slot = Some(action);
        }
        Ok(endpoint)
    }
}

fn blocking_action(
    server: &str,
    endpoint: &str,
    flags: ActionSpec,
    dispatch: &Arc<dyn BlockingEndpoints>,
    gate: &Arc<HookGate>,
) -> ExtensionAction {
    let names = (server, endpoint);
    let mut action = ExtensionAction::new(on_blocking_thread(
        dispatch,
        gate,
        names,
        handler_name(endpoint),
        |dispatch, call| dispatch.call(call).map(Reply::Json),
    ));
    if flags.access_handler {
        action = action.access_handler(on_blocking_thread(
            dispatch,
            gate,
            names,
            access_handler_name(endpoint),
            |dispatch, call| dispatch.access(call),
        ));
    }
    action.allow_untrusted = flags.allow_untrusted;
    action.proxy_target = flags.proxy_target;
    action
}

/// A call of a [`BlockingEndpoints`] dispatcher: the handler or the access check.
type DispatchCall<T> = fn(&dyn BlockingEndpoints, EndpointCall<'_>) -> Result<T>;

/// An async function of (state, request) that makes `call` for the endpoint `names` (server,
/// endpoint) on a blocking thread, while `gate` is open; `what` names it in errors.
fn on_blocking_thread<T: Send + 'static>(
    dispatch: &Arc<dyn BlockingEndpoints>,
    gate: &Arc<HookGate>,
    (server, endpoint): (&str, &str),
    what: String,
    call: DispatchCall<T>,
) -> impl Fn(State, EndpointRequest) -> Pin<Box<dyn Future<Output = Result<T>> + Send>>
+ Send
+ Sync
+ 'static {
    let (server, endpoint) = (server.to_string(), endpoint.to_string());
    let (dispatch, gate) = (dispatch.clone(), gate.clone());
    move |state, request| {
        let (server, endpoint, dispatch) = (server.clone(), endpoint.clone(), dispatch.clone());
        run_blocking(gate.clone(), what.clone(), move || {
            let call_of = EndpointCall {
                state: &state,
                server: &server,
                endpoint: &endpoint,
                request,
            };
            call(dispatch.as_ref(), call_of)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ExtensionAction {
        ExtensionAction::new(|_, _| async { Ok(Reply::Json(Value::Null)) })
    }

    fn server(name: &str, prefix: &str, paths: &[&str]) -> ExtensionServer {
        let endpoints = paths
            .iter()
            .map(|path| ExtensionEndpoint::new(path, path).get(ok()))
            .collect();
        ExtensionServer::core_api(name, prefix, endpoints)
    }

    fn check(servers: &[ExtensionServer]) -> std::result::Result<(), String> {
        let core = crate::rest::endpoints::all();
        validate(servers, Some("127.0.0.1:9001"), &core).map_err(|err| err.message().to_string())
    }

    #[test]
    fn valid_servers_pass() {
        let mut dedicated = server("metrics.example.com", "metrics", &["a", "b/{id}"]);
        dedicated.core_api = false;
        dedicated.address = "127.0.0.1:9443".into();
        dedicated.dedicated_certificate = true;
        check(&[
            server("ext.example.com", "1.0", &["x", "y/{id}"]),
            dedicated,
        ])
        .unwrap();
    }

    #[test]
    fn each_rule_of_spec_13_2_has_its_error() {
        let mut bad_name = server("bad_name!", "1.0", &["x"]);
        assert!(
            check(std::slice::from_ref(&bad_name))
                .unwrap_err()
                .starts_with("Server name \"bad_name!\" is not a valid FQDN: ")
        );
        bad_name.name = "core".into();
        assert_eq!(
            check(&[bad_name]).unwrap_err(),
            "Cannot use the reserved server name \"core\""
        );

        let mut empty = server("e.example.com", "1.0", &["x"]);
        empty.resources.clear();
        assert_eq!(
            check(&[empty]).unwrap_err(),
            "Server must have defined resources"
        );

        let no_endpoints = server("e.example.com", "1.0", &[]);
        assert_eq!(
            check(&[no_endpoints]).unwrap_err(),
            "Server \"e.example.com\" resource must have defined endpoints"
        );

        let mut unix = server("u.example.com", "1.0", &["x"]);
        unix.core_api = false;
        unix.serve_unix = true;
        assert_eq!(
            check(&[unix]).unwrap_err(),
            "Cannot serve non-core API resources over the core unix socket"
        );

        let mut certificate = server("c.example.com", "1.0", &["x"]);
        certificate.dedicated_certificate = true;
        assert_eq!(
            check(&[certificate]).unwrap_err(),
            "Core API server cannot have a dedicated certificate"
        );

        let mut address = server("a.example.com", "1.0", &["x"]);
        address.address = "127.0.0.1:9443".into();
        assert_eq!(
            check(&[address]).unwrap_err(),
            "Core API server cannot have a pre-defined address"
        );

        let mut clash = server("d.example.com", "1.0", &["x"]);
        clash.core_api = false;
        clash.address = "127.0.0.1:9001".into();
        assert_eq!(
            check(&[clash]).unwrap_err(),
            "Server address \"127.0.0.1:9001\" conflicts with another Server"
        );

        assert_eq!(
            check(&[server("r.example.com", "core", &["x"])]).unwrap_err(),
            "Endpoint from server \"r.example.com\" conflicts with reserved namespace \"/core\""
        );

        let first = server("one.example.com", "1.0", &["x/{a}"]);
        let second = server("two.example.com", "1.0", &["x/{b}"]);
        assert_eq!(
            check(&[first, second]).unwrap_err(),
            "Endpoint \"x/{b}\" from server \"two.example.com\" conflicts with another endpoint from server \"one.example.com\""
        );

        let mut forwarding = server("f.example.com", "1.0", &["x"]);
        forwarding.core_api = false;
        forwarding.address = "127.0.0.1:9503".into();
        forwarding.resources[0].endpoints[0].get = Some(ok().proxy_target());
        assert_eq!(
            check(&[forwarding]).unwrap_err(),
            "Server \"f.example.com\" cannot use proxy_target: only core API servers can forward requests to other members"
        );

        // The same path on two dedicated listeners is fine; on the core listener it is not.
        let mut left = server("l.example.com", "1.0", &["x"]);
        let mut right = server("r.example.com", "1.0", &["x"]);
        for (dedicated, port) in [(&mut left, 9501), (&mut right, 9502)] {
            dedicated.core_api = false;
            dedicated.address = format!("127.0.0.1:{port}");
        }
        check(&[left, right]).unwrap();
        // An empty prefix and path would shadow the core root endpoint.
        assert!(
            check(&[server("root.example.com", "", &[""])])
                .unwrap_err()
                .contains("conflicts with another endpoint from server \"core\"")
        );
    }

    #[test]
    fn specs_parse_and_reject_unknown_methods_and_fields() {
        let specs = ServerSpec::parse_list(
            r#"[{"name":"ext.example.com","core_api":true,"resources":[{"path_prefix":"1.0",
                "endpoints":[{"name":"hello","path":"hello","methods":{"GET":{"allow_untrusted":true}}}]}]}]"#,
        )
        .unwrap();
        assert!(specs[0].resources[0].endpoints[0].methods["GET"].allow_untrusted);
        assert!(
            ServerSpec::parse_list(r#"[{"name":"x","colour":"blue"}]"#)
                .unwrap_err()
                .message()
                .contains("unknown field `colour`")
        );
        struct Nothing;
        impl BlockingEndpoints for Nothing {
            fn call(&self, _: EndpointCall<'_>) -> Result<Value> {
                Ok(Value::Null)
            }
            fn access(&self, _: EndpointCall<'_>) -> Result<bool> {
                Ok(false)
            }
        }
        let mut bad = specs.clone();
        bad[0].resources[0].endpoints[0]
            .methods
            .insert("BREW".into(), ActionSpec::default());
        let err = ServerSpec::build_all(bad, Arc::new(Nothing), Arc::default()).unwrap_err();
        assert_eq!(
            err.message(),
            "Endpoint \"hello\" has an unknown method \"BREW\": expected GET, PUT, POST, DELETE or PATCH"
        );
        let mut twice = specs.clone();
        let mut other = twice[0].resources[0].endpoints[0].clone();
        other.path = "other".into();
        twice[0].resources[0].endpoints.push(other);
        let err = ServerSpec::build_all(twice, Arc::new(Nothing), Arc::default()).unwrap_err();
        assert_eq!(
            err.message(),
            "Server \"ext.example.com\" has more than one endpoint named \"hello\""
        );
        let mut checked = specs.clone();
        checked[0].resources[0].endpoints[0].methods.insert(
            "POST".into(),
            ActionSpec {
                access_handler: true,
                ..ActionSpec::default()
            },
        );
        let built = ServerSpec::build_all(checked, Arc::new(Nothing), Arc::default()).unwrap();
        let endpoint = &built[0].resources[0].endpoints[0];
        assert!(endpoint.get.as_ref().unwrap().allow_untrusted);
        assert!(endpoint.get.as_ref().unwrap().access_handler.is_none());
        assert!(endpoint.post.as_ref().unwrap().access_handler.is_some());
        assert!(endpoint.put.is_none());
    }
}
