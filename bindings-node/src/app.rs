//! `App`: one cluster member for a state directory, its daemon's lifecycle and the operations
//! core's `App` offers, each returning a Promise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use microcluster::membership::local::LocalMember;
use microcluster::{Args, DaemonArgs, DaemonSlot, Error, HookGate, HookSet, Spawned};
use napi::Env;
use napi::bindgen_prelude::Object;
use napi_derive::napi;
use serde::Serialize;

use microcluster::extensions::{BlockingEndpoints, ServerSpec};

use crate::endpoints::{EndpointFunction, JsEndpoints};
use crate::error::{promise, to_js};
use crate::hooks::{JsHooks, NativeHooks};
use crate::tx::{TxFunction, closure};

/// The default validity of a join token (as in the Python binding and the CLI).
const DEFAULT_TOKEN_VALIDITY: Duration = Duration::from_secs(3 * 3600);

/// A daemon started by `start`, with the flag that stops calls into JavaScript.
struct Daemon {
    spawned: Spawned,
    closed: Arc<AtomicBool>,
}

/// Milliseconds from JavaScript as a duration.
fn millis(ms: f64) -> microcluster::Result<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|err| Error::invalid(format!("Invalid duration {ms} ms: {err}")))
}

/// A serializable core value as JSON for JavaScript.
fn json(value: &impl Serialize) -> microcluster::Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|err| Error::internal(err.to_string()))
}

/// A member of the local view from JavaScript, whose `id` is a decimal string (or a number
/// small enough to be exact).
fn local_member(mut value: serde_json::Value) -> microcluster::Result<LocalMember> {
    if let Some(id) = value.get("id").and_then(|id| id.as_str()) {
        let id: u64 = id
            .parse()
            .map_err(|_| Error::invalid(format!("Invalid members: id {id:?} is not a Raft id")))?;
        value["id"] = serde_json::Value::from(id);
    }
    serde_json::from_value(value).map_err(|err| Error::invalid(format!("Invalid members: {err}")))
}

/// What `start` runs the daemon with.
#[napi(object, object_to_js = false)]
pub struct StartOptions {
    /// The application version. Required.
    pub version: String,
    /// Lifecycle hooks.
    pub hooks: Option<NativeHooks>,
    /// Schema updates, SQL scripts in order.
    pub schema_updates: Option<Vec<String>>,
    /// API extensions, in order.
    pub api_extensions: Option<Vec<String>>,
    /// Interval between heartbeat rounds in milliseconds (0 or absent: the default).
    pub heartbeat_ms: Option<f64>,
    /// The extension servers as core's JSON description (`ServerSpec` list), built by the
    /// facade from `endpoints`.
    pub extension_servers: Option<String>,
    /// Answers every extension endpoint and, with `access`, runs its access handler (the
    /// facade's dispatcher); required with `extension_servers`.
    #[napi(
        ts_type = "(state: State, server: string, endpoint: string, request: object, access: boolean) => Promise<object>"
    )]
    pub endpoint_handler: Option<EndpointFunction>,
}

/// One cluster member: a state directory and, once started, its daemon running in this
/// process on the library's runtime.
#[napi(js_name = "App")]
pub struct JsApp {
    app: Arc<microcluster::App>,
    daemon: DaemonSlot<Arc<AtomicBool>>,
}

impl JsApp {
    /// The daemon started by the latest `start`, if any.
    fn daemon(&self) -> Option<Daemon> {
        let (spawned, closed) = self.daemon.current()?;
        Some(Daemon { spawned, closed })
    }

    /// A Promise of `f` run with the core app on core's runtime.
    fn call<'env, T, F, Fut>(&self, env: &'env Env, f: F) -> napi::Result<Object<'env>>
    where
        F: FnOnce(Arc<microcluster::App>) -> Fut,
        Fut: Future<Output = microcluster::Result<T>> + Send + 'static,
        T: napi::bindgen_prelude::ToNapiValue + Send + 'static,
    {
        promise(env, f(self.app.clone()))
    }
}

#[napi]
impl JsApp {
    /// Opens (creating if needed) the member's state directory; contacts nothing.
    #[napi(factory, catch_unwind)]
    pub fn open(env: Env, state_dir: String) -> napi::Result<JsApp> {
        let app = microcluster::App::new(Args {
            state_dir: Some(PathBuf::from(state_dir)),
            socket_group: None,
        })
        .map_err(|err| to_js(&env, &err))?;
        Ok(JsApp {
            app: Arc::new(app),
            daemon: DaemonSlot::default(),
        })
    }

    /// Starts the daemon on core's runtime and resolves at once; `ready` waits until it
    /// serves, `stop` stops it, `wait` waits for its end.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn start<'env>(&self, env: &'env Env, options: StartOptions) -> napi::Result<Object<'env>> {
        let heartbeat_interval =
            millis(options.heartbeat_ms.unwrap_or(0.0)).map_err(|err| to_js(env, &err))?;
        let closed = Arc::new(AtomicBool::new(false));
        let extension_servers = match (options.extension_servers, options.endpoint_handler) {
            (None, _) => Vec::new(),
            (Some(specs), Some(handler)) => {
                let handler: Arc<dyn BlockingEndpoints> =
                    Arc::new(JsEndpoints::new(handler, closed.clone()));
                // The JavaScript side is stopped by `closed`; the gate is never closed.
                let gate = Arc::new(HookGate::default());
                ServerSpec::parse_list(&specs)
                    .and_then(|specs| ServerSpec::build_all(specs, handler, gate))
                    .map_err(|err| to_js(env, &err))?
            }
            (Some(_), None) => {
                let err = Error::invalid("Extension servers need an endpoint handler");
                return Err(to_js(env, &err));
            }
        };
        let args = DaemonArgs {
            version: options.version,
            heartbeat_interval,
            api_extensions: options.api_extensions.unwrap_or_default(),
            schema_updates: options.schema_updates.unwrap_or_default(),
            hooks: options.hooks.map_or_else(HookSet::default, |hooks| {
                HookSet::from(JsHooks::new(hooks, closed.clone()))
            }),
            extension_servers,
            ..DaemonArgs::default()
        };
        self.daemon
            .start(&self.app, args, closed)
            .map_err(|err| to_js(env, &err))?;
        promise(env, async { Ok(()) })
    }

    /// Stops the daemon this app started and waits until it has ended; after that no hook is
    /// called. Does nothing when it is not running (idempotent).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let Some(daemon) = self.daemon() else {
            return promise(env, async { Ok(()) });
        };
        self.call(env, move |_| async move {
            daemon.spawned.stop().await?;
            daemon.closed.store(true, Ordering::SeqCst);
            Ok(())
        })
    }

    /// Resolves when the daemon has ended (by `stop`, a shutdown request or a failure);
    /// rejects with the error it failed with.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn wait<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        let spawned = self.daemon().map(|daemon| daemon.spawned);
        promise(env, async move {
            match spawned {
                Some(spawned) => spawned.finished().await,
                None => Err(Error::invalid("The app was not started (app.start)")),
            }
        })
    }

    /// Resolves when the daemon is ready; rejects with `MC_TIMEOUT` after `timeout_ms`, or
    /// `MC_UNAVAILABLE` when the daemon has ended.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn ready<'env>(
        &self,
        env: &'env Env,
        timeout_ms: Option<f64>,
    ) -> napi::Result<Object<'env>> {
        let timeout = timeout_ms
            .map(millis)
            .transpose()
            .map_err(|err| to_js(env, &err))?;
        let spawned = self.daemon().map(|daemon| daemon.spawned);
        self.call(env, move |app| async move {
            match spawned {
                Some(spawned) => spawned.ready(timeout).await,
                None => app.ready(timeout).await,
            }
        })
    }

    /// The member's status: `{ name, address, version, ready, extensions }`.
    #[napi(catch_unwind, ts_return_type = "Promise<object>")]
    pub fn status<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.call(env, |app| async move { json(&app.status().await?) })
    }

    /// Bootstraps a new cluster with this member as `name` at `address`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn new_cluster<'env>(
        &self,
        env: &'env Env,
        name: String,
        address: String,
        config: Option<HashMap<String, String>>,
    ) -> napi::Result<Object<'env>> {
        let config = config.unwrap_or_default().into_iter().collect();
        self.call(env, move |app| async move {
            app.new_cluster(&name, &address, config).await
        })
    }

    /// Joins the cluster that issued `token`, as `name` at `address`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn join_cluster<'env>(
        &self,
        env: &'env Env,
        name: String,
        address: String,
        token: String,
        config: Option<HashMap<String, String>>,
    ) -> napi::Result<Object<'env>> {
        let config = config.unwrap_or_default().into_iter().collect();
        self.call(env, move |app| async move {
            app.join_cluster(&name, &address, &token, config).await
        })
    }

    /// Issues a join token for `name`, valid for `expire_after_ms` (0: until used or revoked).
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn new_join_token<'env>(
        &self,
        env: &'env Env,
        name: String,
        expire_after_ms: Option<f64>,
    ) -> napi::Result<Object<'env>> {
        let expire_after = match expire_after_ms {
            Some(ms) => millis(ms).map_err(|err| to_js(env, &err))?,
            None => DEFAULT_TOKEN_VALIDITY,
        };
        self.call(env, move |app| async move {
            app.new_join_token(&name, expire_after).await
        })
    }

    /// The join tokens that have not expired.
    #[napi(catch_unwind, ts_return_type = "Promise<Array<object>>")]
    pub fn join_tokens<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.call(env, |app| async move { json(&app.join_tokens().await?) })
    }

    /// Revokes the join token issued for `name`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn revoke_join_token<'env>(
        &self,
        env: &'env Env,
        name: String,
    ) -> napi::Result<Object<'env>> {
        self.call(
            env,
            move |app| async move { app.revoke_join_token(&name).await },
        )
    }

    /// The cluster members with role and status.
    #[napi(catch_unwind, ts_return_type = "Promise<Array<object>>")]
    pub fn cluster_members<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.call(
            env,
            |app| async move { json(&app.cluster_members().await?) },
        )
    }

    /// Removes the member `name`; `force` ignores its failures, `address` also removes
    /// orphans at that address.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn remove_cluster_member<'env>(
        &self,
        env: &'env Env,
        name: String,
        force: Option<bool>,
        address: Option<String>,
    ) -> napi::Result<Object<'env>> {
        self.call(env, move |app| async move {
            app.remove_cluster_member(&name, force.unwrap_or(false), address.as_deref())
                .await
        })
    }

    /// The members as this member's own `database/` has them (SPEC §14.1): `{ id, name,
    /// address, role }` sorted by name, `id` (the Raft id, an unsigned 64-bit integer) as a
    /// decimal string. Works with the daemon stopped.
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<Array<{ id: string, name: string, address: string, role: string }>>"
    )]
    pub fn local_members<'env>(&self, env: &'env Env) -> napi::Result<Object<'env>> {
        self.call(env, |app| async move {
            let members = app.local_members()?;
            let members: Vec<serde_json::Value> = members
                .into_iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id.to_string(),
                        "name": m.name,
                        "address": m.address,
                        "role": m.role,
                    })
                })
                .collect();
            Ok(serde_json::Value::Array(members))
        })
    }

    /// Quorum-loss recovery (SPEC §14.2) with every member stopped: rewrites this member's Raft
    /// membership to exactly `members` (`localMembers()` with edited roles and addresses) and
    /// resolves with the path of the recovery tarball.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn recover<'env>(
        &self,
        env: &'env Env,
        members: Vec<serde_json::Value>,
    ) -> napi::Result<Object<'env>> {
        self.call(env, move |app| async move {
            let members = members
                .into_iter()
                .map(local_member)
                .collect::<microcluster::Result<Vec<_>>>()?;
            let path = app.recover_from_quorum_loss(members).await?;
            Ok(path.to_string_lossy().into_owned())
        })
    }

    /// Runs `query` through the SQL API: `{ Results: [...] }`.
    #[napi(catch_unwind, ts_return_type = "Promise<object>")]
    pub fn sql<'env>(&self, env: &'env Env, query: String) -> napi::Result<Object<'env>> {
        self.call(env, move |app| async move { app.sql(&query).await })
    }

    /// Sends `method path` with an optional JSON `body` to the member's control socket and
    /// resolves with the answer's `metadata`; an error answer rejects with its code.
    #[napi(catch_unwind, ts_return_type = "Promise<unknown>")]
    pub fn query<'env>(
        &self,
        env: &'env Env,
        method: String,
        path: String,
        body: Option<serde_json::Value>,
    ) -> napi::Result<Object<'env>> {
        self.call(env, move |app| async move {
            app.query(&method, &path, body).await
        })
    }

    /// Runs `function(tx)` as a serializable transaction; it may run more than once.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn transaction<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "(tx: Tx) => Promise<void>")] function: TxFunction,
    ) -> napi::Result<Object<'env>> {
        let run = closure(function);
        self.call(env, move |app| async move { app.transaction(run).await })
    }
}
