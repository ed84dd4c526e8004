//! Lifecycle hooks as C callbacks: `mc_hooks`, the `mc_state` they get, and the one adapter
//! that implements core's `Hooks` trait by calling them on blocking threads.

use std::ffi::{CStr, CString, c_char, c_int, c_void};

use microcluster_core::extensions::{
    BlockingEndpoints, EndpointCall, access_handler_name, handler_name,
};
use microcluster_core::{BlockingHooks, Error, HookEvent, Result, State};
use serde_json::Value;

use crate::boundary::{self, string_lossy};
use crate::error::{callback_result, mc_error};

/// A lifecycle hook. `userdata` is `mc_hooks.userdata`; `state` describes the member and is
/// valid only during the call; `args_json` is a JSON object with the hook's arguments (see
/// `mc_hooks`), valid only during the call. Return 0 on success; non-zero fails the hook, with
/// the error stored by `mc_error_set(err, …)` (or a generic one when none was stored).
pub type mc_hook_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        state: *const mc_state,
        args_json: *const c_char,
        err: *mut *mut mc_error,
    ) -> c_int,
>;

/// The handler of the application's extension endpoints (SPEC §13), one function for all of
/// them: `server` and `endpoint` are the `name`s given in `"extension_servers"` (see
/// `mc_app_start`), and `request_json` is the request as a JSON object: `{"method", "path",
/// "vars": {name: value}, "query": [[key, value], …], "body": JSON or null, "trusted": bool,
/// "notification": bool, "caller": {"kind": "control_socket" | "member" | "unknown", …}}`.
/// `state`, `server`, `endpoint` and `request_json` are valid only during the call.
///
/// Return 0 to answer 200 with `*response_json` as the response's `metadata`: a JSON text the
/// handler allocates with `mc_string_new` (the library takes and frees it; leave it NULL to
/// answer `null`). Return non-zero to answer with the error stored by `mc_error_set(err, code,
/// message)`: its code gives the HTTP status (`MC_ERR_NOT_FOUND` 404, `MC_ERR_INVALID_ARGUMENT`
/// 400, `MC_ERR_FORBIDDEN` 403, …) and the message reaches the caller; without one it is 500.
/// A `*response_json` left set on failure is freed by the library.
///
/// Runs like a hook (see `mc_hooks`): on a library thread for blocking work, possibly
/// concurrently with other requests, never after `mc_app_stop`/`mc_app_wait`/`mc_app_free` has
/// returned. It may block, and may run transactions with `mc_state_transaction`.
pub type mc_endpoint_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        state: *const mc_state,
        server: *const c_char,
        endpoint: *const c_char,
        request_json: *const c_char,
        response_json: *mut *mut c_char,
        err: *mut *mut mc_error,
    ) -> c_int,
>;

/// The custom access check of extension endpoint actions declared with `"access_handler":
/// true` in `"extension_servers"` (SPEC §13), one function for all of them, with the arguments
/// of `mc_endpoint_fn`. It runs after the trust decision (so `request_json`'s `"trusted"` is
/// known), before `?target=` forwarding and the endpoint handler.
///
/// Return 0 with `*allowed` set: non-zero lets the request on, 0 answers 403 `not authorized`
/// (`*allowed` starts at 0). Return non-zero to answer with the error stored by
/// `mc_error_set(err, code, message)`, as `mc_endpoint_fn` does (without one, 500).
///
/// Runs like a hook (see `mc_hooks`), on a library thread; it may block.
pub type mc_endpoint_access_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        state: *const mc_state,
        server: *const c_char,
        endpoint: *const c_char,
        request_json: *const c_char,
        allowed: *mut c_int,
        err: *mut *mut mc_error,
    ) -> c_int,
>;

/// The application's lifecycle hooks (SPEC §10): each optional (NULL: nothing to do). Pass it
/// to `mc_app_start`, which copies the struct; zero-initialise it (`mc_hooks hooks = {0};`) and
/// set the hooks you need.
///
/// Hooks run on library threads (a pool for blocking work), never on the thread that called
/// `mc_app_*`, and different hooks may run concurrently: `userdata` must be safe to use from
/// any thread. A hook may take long without stalling the daemon's network work, but the
/// operation that runs it (a bootstrap, a join…) waits for it. Blocking `mc_app_*` functions
/// called from a hook return `MC_ERR_WOULD_BLOCK`. Once `mc_app_stop`, `mc_app_wait` or
/// `mc_app_free` has returned, no hook of that start runs again and `userdata` may be freed.
///
/// The `args_json` of each hook:
/// - `pre_init`: `{"bootstrap": bool, "config": {string: string}}` — before a bootstrap or
///   join; an error aborts it.
/// - `post_bootstrap`, `pre_join`, `post_join`: `{"config": {string: string}}` — an error
///   rolls the bootstrap or join back.
/// - `on_new_member`: `{"new_member": {"name", "address", "certificate"}}` — on existing
///   members when one joins; an error rolls the join back.
/// - `on_start`: `{}` — at every start, before the daemon is ready; an error stops it.
/// - `pre_remove`, `post_remove`: `{"force": bool}`.
/// - `on_heartbeat`: `{"roles": {name: {"old": role, "new": role}}}` — on the leader.
/// - `on_daemon_config_update`: `{"config": {"name", "address", "servers",
///   "failure-domain"}}`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mc_hooks {
    /// Passed as the first argument of every hook.
    pub userdata: *mut c_void,
    /// PreInit.
    pub pre_init: mc_hook_fn,
    /// PostBootstrap.
    pub post_bootstrap: mc_hook_fn,
    /// PreJoin.
    pub pre_join: mc_hook_fn,
    /// PostJoin.
    pub post_join: mc_hook_fn,
    /// OnNewMember.
    pub on_new_member: mc_hook_fn,
    /// OnStart.
    pub on_start: mc_hook_fn,
    /// PreRemove.
    pub pre_remove: mc_hook_fn,
    /// PostRemove.
    pub post_remove: mc_hook_fn,
    /// OnHeartbeat.
    pub on_heartbeat: mc_hook_fn,
    /// OnDaemonConfigUpdate.
    pub on_daemon_config_update: mc_hook_fn,
    /// Answers every extension endpoint (see `mc_endpoint_fn`); required when `mc_app_start`
    /// is given `"extension_servers"`.
    pub endpoint: mc_endpoint_fn,
    /// Checks access to the extension endpoint actions declared with `"access_handler": true`
    /// (see `mc_endpoint_access_fn`); required when any is.
    pub endpoint_access: mc_endpoint_access_fn,
}

/// What a hook or endpoint handler can see of its member. Valid only during the call.
pub struct mc_state {
    name: CString,
    address: CString,
    /// The member's state, for `mc_state_transaction`.
    pub(crate) state: State,
}

impl mc_state {
    /// The C view of `state`.
    fn new(state: &State) -> mc_state {
        mc_state {
            name: string_lossy(&state.name()),
            address: string_lossy(&state.address()),
            state: state.clone(),
        }
    }
}

/// The member's name (the host name before init), NUL-terminated UTF-8 owned by `state`:
/// valid during the hook call only (copy it to keep it). NULL when `state` is NULL.
///
/// Thread-safety: the hook's thread.
///
/// # Safety
/// `state` is NULL or the state a running hook was given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_state_name(state: *const mc_state) -> *const c_char {
    boundary::guard(std::ptr::null(), || {
        // SAFETY: per the contract.
        unsafe { state.as_ref() }.map_or(std::ptr::null(), |state| state.name.as_ptr())
    })
}

/// The member's address, `IP:port` (empty before init), NUL-terminated UTF-8 owned by
/// `state`: valid during the hook call only. NULL when `state` is NULL.
///
/// Thread-safety: the hook's thread.
///
/// # Safety
/// `state` is NULL or the state a running hook was given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_state_address(state: *const mc_state) -> *const c_char {
    boundary::guard(std::ptr::null(), || {
        // SAFETY: per the contract.
        unsafe { state.as_ref() }.map_or(std::ptr::null(), |state| state.address.as_ptr())
    })
}

/// The C hooks behind core's `Hooks` trait.
pub(crate) struct CHooks {
    hooks: mc_hooks,
}

// SAFETY: `mc_hooks` holds function pointers and the userdata that C promises (see its doc) may
// be used from any thread, concurrently.
unsafe impl Send for CHooks {}
// SAFETY: as above.
unsafe impl Sync for CHooks {}

impl CHooks {
    /// Wraps the C hooks.
    pub(crate) fn new(hooks: mc_hooks) -> CHooks {
        CHooks { hooks }
    }

    /// The callback for `event`, if C gave one (the reset event has none).
    fn callback(&self, event: &HookEvent) -> mc_hook_fn {
        let hooks = &self.hooks;
        match event {
            HookEvent::PreInit { .. } => hooks.pre_init,
            HookEvent::PostBootstrap { .. } => hooks.post_bootstrap,
            HookEvent::PreJoin { .. } => hooks.pre_join,
            HookEvent::PostJoin { .. } => hooks.post_join,
            HookEvent::OnNewMember { .. } => hooks.on_new_member,
            HookEvent::OnStart => hooks.on_start,
            HookEvent::PreRemove { .. } => hooks.pre_remove,
            HookEvent::PostRemove { .. } => hooks.post_remove,
            HookEvent::OnHeartbeat { .. } => hooks.on_heartbeat,
            HookEvent::OnDaemonConfigUpdate { .. } => hooks.on_daemon_config_update,
            HookEvent::Reset { .. } => None,
        }
    }
}

/// Core runs each event on a blocking thread (`HookSet::blocking`), until the app's gate is
/// closed; this calls the C function.
impl BlockingHooks for CHooks {
    fn call(&self, state: &State, event: HookEvent) -> Result<()> {
        let Some(hook) = self.callback(&event) else {
            return Ok(());
        };
        let what = event.name();
        let c_state = mc_state::new(state);
        let args = string_lossy(&event.args_json().to_string());
        let userdata = self.hooks.userdata;
        callback_result(&format!("{what} hook"), |err| {
            // SAFETY: the C contract of `mc_hooks`; state and args live across the call.
            unsafe { hook(userdata, &c_state, args.as_ptr(), err) }
        })
        .map_err(|err| err.context(format!("{what} hook failed: ")))
    }
}

/// The C type of both endpoint callbacks: `mc_endpoint_fn` (`O` is the response) and
/// `mc_endpoint_access_fn` (`O` is the verdict).
type EndpointCallback<O> = unsafe extern "C" fn(
    *mut c_void,
    *const mc_state,
    *const c_char,
    *const c_char,
    *const c_char,
    *mut O,
    *mut *mut mc_error,
) -> c_int;

impl CHooks {
    /// Calls an endpoint callback with the C forms of the state, the names and the request,
    /// which live across the call, and its out-parameter `out`; fails with `missing` when C
    /// gave no such callback (`mc_app_start` refuses servers that need one, so this is a bug).
    fn call_endpoint_fn<O>(
        &self,
        what: &str,
        (callback, missing): (Option<EndpointCallback<O>>, &str),
        call: &EndpointCall<'_>,
        out: &mut O,
    ) -> Result<()> {
        let callback = callback.ok_or_else(|| Error::internal(missing))?;
        let c_state = mc_state::new(call.state);
        let (c_server, c_endpoint) = (string_lossy(call.server), string_lossy(call.endpoint));
        let request = string_lossy(&call.request.to_json().to_string());
        let userdata = self.hooks.userdata;
        callback_result(what, |err| {
            // SAFETY: the C contract of `mc_endpoint_fn` and `mc_endpoint_access_fn`; the
            // arguments live across the call.
            unsafe {
                callback(
                    userdata,
                    &c_state,
                    c_server.as_ptr(),
                    c_endpoint.as_ptr(),
                    request.as_ptr(),
                    out,
                    err,
                )
            }
        })
    }
}

/// Core runs each request (and each access check) on a blocking thread while the app's gate is
/// open; this calls the C endpoint callbacks.
impl BlockingEndpoints for CHooks {
    fn call(&self, call: EndpointCall<'_>) -> Result<Value> {
        let what = handler_name(call.endpoint);
        let handler = (
            self.hooks.endpoint,
            "No endpoint handler was given (mc_hooks.endpoint)",
        );
        let mut response: *mut c_char = std::ptr::null_mut();
        let result = self.call_endpoint_fn(&what, handler, &call, &mut response);
        // SAFETY: the handler stored NULL or a string from `mc_string_new`, which we own now.
        let response = (!response.is_null()).then(|| unsafe { CString::from_raw(response) });
        result?;
        let Some(response) = response else {
            return Ok(Value::Null);
        };
        let text = CStr::to_str(&response)
            .map_err(|_| Error::internal(format!("{what} answered invalid UTF-8")))?;
        serde_json::from_str(text)
            .map_err(|err| Error::internal(format!("{what} answered invalid JSON: {err}")))
    }

    fn access(&self, call: EndpointCall<'_>) -> Result<bool> {
        let what = access_handler_name(call.endpoint);
        let check = (
            self.hooks.endpoint_access,
            "No access handler was given (mc_hooks.endpoint_access)",
        );
        let mut allowed: c_int = 0;
        self.call_endpoint_fn(&what, check, &call, &mut allowed)?;
        Ok(allowed != 0)
    }
}
