//! `mc_app`: one cluster member for a state directory, its daemon's lifecycle and the
//! operations core's `App` offers.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use microcluster_core::extensions::{BlockingEndpoints, ServerSpec};
use microcluster_core::membership::local::LocalMember;
use microcluster_core::{App, Args, DaemonArgs, DaemonSlot, HookGate, HookSet, Spawned, runtime};
use serde::Deserialize;

use crate::boundary::{self, Out, arg, json_arg, parse_json, str_arg};
use crate::error::{Failure, mc_error, mc_result};
use crate::hooks::{CHooks, mc_hooks};

/// One cluster member: a state directory and, between `mc_app_start` and its end, a daemon
/// running in this process. Create with `mc_app_new`, free with `mc_app_free`.
pub struct mc_app {
    app: Arc<App>,
    /// The daemon started last, with its hook gate, closed once a stop or wait has returned:
    /// no hook of that start runs after it.
    daemon: DaemonSlot<Arc<HookGate>>,
}

/// A daemon started by `mc_app_start`.
struct Daemon {
    /// The daemon on core's runtime.
    spawned: Spawned,
    /// Its hook gate.
    gate: Arc<HookGate>,
}

/// `args_json` of `mc_app_start`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartArgs {
    version: String,
    #[serde(default)]
    heartbeat_ms: u64,
    #[serde(default)]
    schema_updates: Vec<String>,
    #[serde(default)]
    api_extensions: Vec<String>,
    #[serde(default)]
    extension_servers: Vec<ServerSpec>,
}

/// Whether an action of `servers` asks for the access handler.
fn any_access_handler(servers: &[ServerSpec]) -> bool {
    servers
        .iter()
        .flat_map(|server| &server.resources)
        .flat_map(|resource| &resource.endpoints)
        .flat_map(|endpoint| endpoint.methods.values())
        .any(|action| action.access_handler)
}

impl mc_app {
    /// Runs `f` with the app on the library's runtime and waits for it; on a library thread it
    /// fails with `MC_ERR_WOULD_BLOCK` instead.
    pub(crate) fn block<T, Fut>(&self, f: impl FnOnce(Arc<App>) -> Fut) -> Result<T, Failure>
    where
        Fut: Future<Output = microcluster_core::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        Ok(runtime::block_on(f(self.app.clone()))?)
    }

    /// The daemon started by the latest `mc_app_start`, if any.
    fn daemon(&self) -> Option<Daemon> {
        let (spawned, gate) = self.daemon.current()?;
        Some(Daemon { spawned, gate })
    }

    /// Stops the daemon (ours, or one another process runs on this state directory) and waits
    /// until ours has ended and its hooks have returned.
    fn stop(&self) -> Result<(), Failure> {
        let daemon = self.daemon();
        let spawned = daemon.as_ref().map(|daemon| daemon.spawned.clone());
        self.block(move |app| async move {
            match spawned {
                Some(spawned) => spawned.stop().await,
                None => app.stop().await,
            }
        })?;
        if let Some(daemon) = daemon {
            daemon.gate.close();
        }
        Ok(())
    }
}

/// Makes writes to closed connections fail with `EPIPE` instead of killing the process: sets
/// SIGPIPE to "ignore" when it has the default disposition (as Rust programs, Python and Node do
/// at start-up), and leaves a handler the program installed alone. Once per process.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use nix::libc::{SIG_DFL, SIG_IGN, SIGPIPE, sigaction, signal};
        // SAFETY: sigaction only reads into `current`, which is plain data; `signal` changes the
        // disposition only while it is the default.
        unsafe {
            let mut current: sigaction = std::mem::zeroed();
            if sigaction(SIGPIPE, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == SIG_DFL
            {
                signal(SIGPIPE, SIG_IGN);
            }
        }
    });
}

/// Creates an app for the member whose state lives in `state_dir` (created with the layout of
/// SPEC §2 if missing; nothing is contacted). On success `*out` receives the app, which the
/// caller frees with `mc_app_free`.
///
/// The first call sets SIGPIPE to be ignored if its disposition is the default, so that a peer
/// closing a connection cannot kill the process (writes then fail with `EPIPE`); a handler the
/// program installed is left alone — it must then tolerate SIGPIPE.
///
/// Thread-safety: any thread. The app may be shared between threads: every `mc_app_*`
/// function may be called concurrently on it.
///
/// # Safety
/// `state_dir` is a NUL-terminated string; `out` is valid for a write; `err` is NULL or valid
/// for a write and points to NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_new(
    state_dir: *const c_char,
    out: *mut *mut mc_app,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let state_dir = unsafe { str_arg(state_dir, "state_dir") }?;
        let out = unsafe { Out::new(out, "out") }?;
        ignore_sigpipe();
        let app = App::new(Args {
            state_dir: Some(state_dir.into()),
            socket_group: None,
        })?;
        out.write(Box::into_raw(Box::new(mc_app {
            app: Arc::new(app),
            daemon: DaemonSlot::default(),
        })))
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Frees an app. NULL is ignored. A daemon it still runs is stopped first and waited for, as by
/// `mc_app_stop` — except when called from a hook or transaction callback, where the stop is
/// only requested. The app must not be used afterwards: the library cannot detect a use after
/// free, so set your pointer to NULL.
///
/// Thread-safety: any thread, once no other thread uses the app.
///
/// # Safety
/// `app` is NULL or an app from `mc_app_new` that has not been freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_free(app: *mut mc_app) {
    boundary::guard((), || {
        if app.is_null() {
            return;
        }
        // SAFETY: per the contract, `app` came from `mc_app_new`.
        let app = unsafe { Box::from_raw(app) };
        let Some(daemon) = app.daemon() else {
            return;
        };
        if daemon.spawned.has_ended() {
            daemon.gate.close();
            return;
        }
        if let Err(failure) = app.stop()
            && failure.code() == mc_result::MC_ERR_WOULD_BLOCK
        {
            let spawned = daemon.spawned.clone();
            runtime::handle().spawn(async move { spawned.stop().await });
        }
    })
}

/// Starts the member's daemon on the library's runtime and returns at once; use `mc_app_ready`
/// to wait until it serves, `mc_app_stop` to stop it and `mc_app_wait` for its end and result.
///
/// `args_json` is a JSON object: `{"version": "1.0", "heartbeat_ms": 10000, "schema_updates":
/// ["CREATE TABLE …", …], "api_extensions": ["name", …], "extension_servers": [...]}`; only
/// `version` is required, `heartbeat_ms` 0 or absent means 10 s, and unknown keys are refused
/// (`MC_ERR_INVALID_ARGUMENT`).
///
/// `extension_servers` lists the application's REST servers (SPEC §13), all answered by
/// `hooks->endpoint` (see `mc_endpoint_fn`), which is then required: `[{"name": "<fqdn>",
/// "address": "", "core_api": true, "pre_init": false, "serve_unix": true,
/// "dedicated_certificate": false, "resources": [{"path_prefix": "1.0", "endpoints": [{"name":
/// "hello", "path": "hello/{who}", "aliases": [], "allowed_before_init": false,
/// "allowed_during_shutdown": false, "methods": {"GET": {"allow_untrusted": false,
/// "proxy_target": true, "access_handler": false}}}]}]}]` (every key but `name` optional). An
/// action with `"access_handler": true` is first checked by `hooks->endpoint_access` (see
/// `mc_endpoint_access_fn`), which is then required. A server breaking the rules of
/// SPEC §13.2 makes the daemon fail at start (`mc_app_ready`/`mc_app_wait` report it). `hooks` may be NULL (no hooks); the struct is copied, and its
/// `userdata` must stay valid until `mc_app_stop`, `mc_app_wait` or `mc_app_free` has returned.
/// Fails with `MC_ERR_CONFLICT` when a daemon started by this app is still running.
///
/// Thread-safety: any thread, including a callback thread (it does not block). Hooks run on
/// library threads (see `mc_hooks`).
///
/// # Safety
/// `app` is a live app; `args_json` a NUL-terminated string; `hooks` NULL or valid for a read;
/// `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_start(
    app: *mut mc_app,
    args_json: *const c_char,
    hooks: *const mc_hooks,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let args: StartArgs = parse_json(unsafe { str_arg(args_json, "args_json") }?, "args_json")?;
        // SAFETY: NULL or valid for a read, per the contract.
        let hooks = unsafe { hooks.as_ref() }.copied();
        let gate = Arc::new(HookGate::default());
        let extension_servers = match (args.extension_servers.is_empty(), hooks) {
            (true, _) => Vec::new(),
            (false, Some(hooks)) if hooks.endpoint.is_some() => {
                if hooks.endpoint_access.is_none() && any_access_handler(&args.extension_servers) {
                    return Err(boundary::invalid(
                        "Actions with \"access_handler\" need an access handler (mc_hooks.endpoint_access)",
                    ));
                }
                let handler: Arc<dyn BlockingEndpoints> = Arc::new(CHooks::new(hooks));
                ServerSpec::build_all(args.extension_servers, handler, gate.clone())?
            }
            (false, _) => {
                return Err(boundary::invalid(
                    "Extension servers need an endpoint handler (mc_hooks.endpoint)",
                ));
            }
        };
        let daemon_args = DaemonArgs {
            version: args.version,
            heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
            api_extensions: args.api_extensions,
            schema_updates: args.schema_updates,
            hooks: hooks.map_or_else(HookSet::default, |hooks| {
                HookSet::blocking(CHooks::new(hooks), gate.clone())
            }),
            extension_servers,
            ..DaemonArgs::default()
        };
        Ok(app.daemon.start(&app.app, daemon_args, gate)?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Stops the daemon and waits until it has ended and no hook of it runs any more; after it
/// returns, the hooks' userdata may be freed. Without a daemon started by this app, asks the
/// daemon another process runs on the state directory to shut down (through its control
/// socket). Succeeds even when the daemon had failed: `mc_app_wait` reports how it ended.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_stop(app: *mut mc_app, err: *mut *mut mc_error) -> mc_result {
    // SAFETY: the pointers are valid per the contract.
    let body = || unsafe { arg(app, "app") }?.stop();
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Waits until the daemon started by `mc_app_start` has ended (by `mc_app_stop`, a shutdown
/// request on its control socket, or a failure) and returns its result: `MC_OK` after a clean
/// stop, else the error it stopped with (for example an `on_start` hook's). Afterwards no hook of
/// it runs any more. `MC_ERR_INVALID_ARGUMENT` when the app was never started.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_wait(app: *mut mc_app, err: *mut *mut mc_error) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let daemon = app
            .daemon()
            .ok_or_else(|| boundary::invalid("The app was not started (mc_app_start)"))?;
        let spawned = daemon.spawned.clone();
        let result = app.block(|_| async move { spawned.finished().await });
        if !matches!(&result, Err(failure) if failure.code() == mc_result::MC_ERR_WOULD_BLOCK) {
            daemon.gate.close();
        }
        result
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Waits until the daemon is ready (answers `GET /core/1.0/ready` on its control socket), for
/// at most `timeout_ms` milliseconds (negative: no limit). `MC_ERR_TIMEOUT` when it is not
/// ready in time; `MC_ERR_UNAVAILABLE` at once when the daemon this app started has ended.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_ready(
    app: *const mc_app,
    timeout_ms: i64,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let spawned = app.daemon().map(|daemon| daemon.spawned);
        app.block(move |app| async move {
            match spawned {
                Some(spawned) => spawned.ready(timeout).await,
                None => app.ready(timeout).await,
            }
        })
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// The member's status (`GET /core/1.0`) as JSON, `{"name", "address", "version", "ready",
/// "extensions"}`, in `*json_out`, freed by the caller with `mc_string_free`.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `json_out` valid for a write; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_status(
    app: *const mc_app,
    json_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let out = unsafe { Out::new(json_out, "json_out") }?;
        out.write_json(&app.block(|app| async move { app.status().await })?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Bootstraps a new cluster with this member, named `name`, at `address` (`IP:port`), as its
/// first voter. `config_json` (NULL: none) is a JSON object of strings handed to the init hooks.
/// The daemon must be running (in this process or another).
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; the strings NUL-terminated (`config_json` may be NULL); `err` as for
/// `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_new_cluster(
    app: *const mc_app,
    name: *const c_char,
    address: *const c_char,
    config_json: *const c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let name = unsafe { str_arg(name, "name") }?.to_string();
        let address = unsafe { str_arg(address, "address") }?.to_string();
        let config: BTreeMap<String, String> = unsafe { json_arg(config_json, "config_json") }?;
        app.block(move |app| async move { app.new_cluster(&name, &address, config).await })
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Joins the cluster that issued `token`, as member `name` at `address`. `config_json` as for
/// `mc_app_new_cluster`. When it returns, the member is online with its final role; a hook that
/// fails (here or on another member) makes it fail with the hook's message.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// As `mc_app_new_cluster`; `token` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_join_cluster(
    app: *const mc_app,
    name: *const c_char,
    address: *const c_char,
    token: *const c_char,
    config_json: *const c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let name = unsafe { str_arg(name, "name") }?.to_string();
        let address = unsafe { str_arg(address, "address") }?.to_string();
        let token = unsafe { str_arg(token, "token") }?.to_string();
        let config: BTreeMap<String, String> = unsafe { json_arg(config_json, "config_json") }?;
        app.block(move |app| async move { app.join_cluster(&name, &address, &token, config).await })
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Issues a join token for the member `name`, valid for `expire_after_ms` milliseconds (0:
/// until used or revoked), in `*token_out`, freed by the caller with `mc_string_free`.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `name` NUL-terminated; `token_out` valid for a write; `err` as for
/// `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_new_join_token(
    app: *const mc_app,
    name: *const c_char,
    expire_after_ms: u64,
    token_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let name = unsafe { str_arg(name, "name") }?.to_string();
        let out = unsafe { Out::new(token_out, "token_out") }?;
        let expire_after = Duration::from_millis(expire_after_ms);
        let token =
            app.block(move |app| async move { app.new_join_token(&name, expire_after).await })?;
        out.write_string(&token)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// The join tokens that have not expired, as a JSON array of `{"name", "token" (always empty),
/// "expires_at"}`, in `*json_out`, freed by the caller with `mc_string_free`.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `json_out` valid for a write; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_join_tokens(
    app: *const mc_app,
    json_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let out = unsafe { Out::new(json_out, "json_out") }?;
        out.write_json(&app.block(|app| async move { app.join_tokens().await })?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Revokes the join token issued for `name`; `MC_ERR_NOT_FOUND` when there is none.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `name` NUL-terminated; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_revoke_join_token(
    app: *const mc_app,
    name: *const c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let name = unsafe { str_arg(name, "name") }?.to_string();
        app.block(move |app| async move { app.revoke_join_token(&name).await })
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// The cluster members with role and status, as a JSON array of `{"name", "address",
/// "certificate", "role", "schema_internal_version", "schema_external_version",
/// "last_heartbeat", "status", "extensions", "secret"}`, in `*json_out`, freed by the caller
/// with `mc_string_free`.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `json_out` valid for a write; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_cluster_members(
    app: *const mc_app,
    json_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let out = unsafe { Out::new(json_out, "json_out") }?;
        out.write_json(&app.block(|app| async move { app.cluster_members().await })?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Removes the member `name` from the cluster (SPEC §9): its PreRemove hook runs on it and
/// PostRemove on the others, and it resets. With `force` non-zero, failures of the member
/// being removed (unreachable, failing hooks) do not stop the removal; `address` (NULL: none)
/// also removes orphans at that address. An unknown name fails with its message.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `name` NUL-terminated; `address` NULL or NUL-terminated; `err` as for
/// `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_remove_cluster_member(
    app: *const mc_app,
    name: *const c_char,
    force: c_int,
    address: *const c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let name = unsafe { str_arg(name, "name") }?.to_string();
        let address = match address.is_null() {
            true => None,
            false => Some(unsafe { str_arg(address, "address") }?.to_string()),
        };
        app.block(move |app| async move {
            app.remove_cluster_member(&name, force != 0, address.as_deref())
                .await
        })
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// The members as this member's own `database/` has them (SPEC §14.1), as a JSON array of
/// `{"id", "name", "address", "role"}` sorted by name, in `*json_out`, freed by the caller with
/// `mc_string_free`. `id` is the Raft id, an unsigned 64-bit integer (parse it without losing
/// precision). Reads the state directory: works whether or not a daemon runs.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `app` is a live app; `json_out` valid for a write; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_local_members(
    app: *const mc_app,
    json_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let out = unsafe { Out::new(json_out, "json_out") }?;
        out.write_json(&app.app.local_members()?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Quorum-loss recovery (SPEC §14.2), with every member's daemon stopped: rewrites this
/// member's Raft membership to exactly `members_json` (the `mc_app_local_members` array with
/// edited roles and addresses; members cannot be added or removed) and returns the path of
/// the recovery tarball in `*path_out`, freed by the caller with `mc_string_free`. Copy the
/// tarball into the state directory of every other surviving member before it starts. Fails
/// with `MC_ERR_INVALID_ARGUMENT` for an invalid list and when a daemon still runs.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `members_json` NUL-terminated; `path_out` valid for a write; `err` as
/// for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_recover(
    app: *const mc_app,
    members_json: *const c_char,
    path_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let members: Vec<LocalMember> = parse_json(
            unsafe { str_arg(members_json, "members_json") }?,
            "members_json",
        )?;
        let out = unsafe { Out::new(path_out, "path_out") }?;
        let path =
            app.block(move |app| async move { app.recover_from_quorum_loss(members).await })?;
        out.write_string(&path.to_string_lossy())
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Runs `query` (one or more SQL statements) through the SQL API and returns
/// `{"Results": [{"type", "columns", "rows", "rows_affected"}, …]}` in `*json_out`, freed by the
/// caller with `mc_string_free`. Works with a daemon in this process or another.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; `query` NUL-terminated; `json_out` valid for a write; `err` as for
/// `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_sql(
    app: *const mc_app,
    query: *const c_char,
    json_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let query = unsafe { str_arg(query, "query") }?.to_string();
        let out = unsafe { Out::new(json_out, "json_out") }?;
        out.write_json(&app.block(move |app| async move { app.sql(&query).await })?)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}

/// Sends `method path` (for example `GET`, `/1.0/hello?target=c2`) with the JSON body
/// `body_json` (NULL: none) to the member's control socket, and returns the answer's
/// `metadata` as JSON in `*json_out`, freed by the caller with `mc_string_free`: the way to call
/// extension endpoints served on the control socket (`"serve_unix": true`), or any endpoint of
/// the REST API. An error answer fails with the code of its HTTP status (404
/// `MC_ERR_NOT_FOUND`, 400 `MC_ERR_INVALID_ARGUMENT`, …) and its message. Works with a daemon
/// in this process or another.
///
/// Thread-safety: any thread but a callback thread (`MC_ERR_WOULD_BLOCK` there).
///
/// # Safety
/// `app` is a live app; the strings NUL-terminated (`body_json` may be NULL); `json_out` valid
/// for a write; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_app_query(
    app: *const mc_app,
    method: *const c_char,
    path: *const c_char,
    body_json: *const c_char,
    json_out: *mut *mut c_char,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let app = unsafe { arg(app, "app") }?;
        let method = unsafe { str_arg(method, "method") }?.to_string();
        let path = unsafe { str_arg(path, "path") }?.to_string();
        let request: Option<serde_json::Value> = match body_json.is_null() {
            true => None,
            false => Some(unsafe { json_arg(body_json, "body_json") }?),
        };
        let out = unsafe { Out::new(json_out, "json_out") }?;
        let answer =
            app.block(move |app| async move { app.query(&method, &path, request).await })?;
        out.write_json(&answer)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}
