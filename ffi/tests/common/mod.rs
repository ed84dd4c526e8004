//! Helpers of the C ABI tests: calling `mc_*` functions from Rust the way C does, and members
//! started through them on temporary state directories.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::ptr;

use microcluster::*;

/// How long a member may take to become ready (generous: CI machines are loaded).
pub const READY_MS: i64 = 120_000;

/// A NUL-terminated copy of `text`.
pub fn c(text: &str) -> CString {
    CString::new(text).expect("no NUL in test strings")
}

/// A failed call: its code and its error's code and message.
#[derive(Debug)]
pub struct Failed {
    pub code: mc_result,
    pub error_code: mc_result,
    pub message: String,
}

/// Calls `f` with an `mc_error *` slot the way C does and turns the outcome into a `Result`,
/// checking that the error object agrees with the returned code.
pub fn call(f: impl FnOnce(*mut *mut mc_error) -> mc_result) -> Result<(), Failed> {
    let mut err: *mut mc_error = ptr::null_mut();
    let code = f(&mut err);
    if code == mc_result::MC_OK {
        assert!(err.is_null(), "an error object was written on success");
        return Ok(());
    }
    assert!(!err.is_null(), "no error object written for {code:?}");
    // SAFETY: `err` was just written by the library.
    let failed = unsafe {
        Failed {
            code,
            error_code: mc_error_code(err),
            message: CStr::from_ptr(mc_error_message(err))
                .to_string_lossy()
                .into_owned(),
        }
    };
    // SAFETY: as above; freed once.
    unsafe { mc_error_free(err) };
    assert_eq!(failed.code, failed.error_code, "{failed:?}");
    Err(failed)
}

/// Like [`call`], panicking with the error on failure.
pub fn ok(what: &str, f: impl FnOnce(*mut *mut mc_error) -> mc_result) {
    if let Err(failed) = call(f) {
        panic!("{what} failed: {failed:?}");
    }
}

/// Takes a string returned by the library, freeing it.
///
/// # Safety
/// `s` is a string from the library, not freed yet.
pub unsafe fn take_string(s: *mut c_char) -> String {
    assert!(!s.is_null());
    // SAFETY: per the contract.
    let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    // SAFETY: per the contract.
    unsafe { mc_string_free(s) };
    text
}

/// Calls a function returning a string through `char **` and decodes it as JSON.
pub fn json_out(
    what: &str,
    f: impl FnOnce(*mut *mut c_char, *mut *mut mc_error) -> mc_result,
) -> serde_json::Value {
    let text = string_out(what, f);
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{what} returned bad JSON {text}: {err}"))
}

/// Calls a function returning a string through `char **`.
pub fn string_out(
    what: &str,
    f: impl FnOnce(*mut *mut c_char, *mut *mut mc_error) -> mc_result,
) -> String {
    let mut out: *mut c_char = ptr::null_mut();
    ok(what, |err| f(&mut out, err));
    // SAFETY: written by the library on success.
    unsafe { take_string(out) }
}

pub use microcluster_it::free_address;

/// A new app for `dir`.
pub fn new_app(dir: &Path) -> *mut mc_app {
    let dir = c(dir.to_str().expect("UTF-8 temp dir"));
    let mut app: *mut mc_app = ptr::null_mut();
    // SAFETY: valid arguments.
    ok("mc_app_new", |err| unsafe {
        mc_app_new(dir.as_ptr(), &mut app, err)
    });
    app
}

/// The schema updates of the test members.
pub const START_ARGS: &str = r#"{"version": "1.0", "schema_updates": [
    "CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n TEXT)"
]}"#;

/// A member whose daemon runs in this process; stopped, waited for and freed when dropped.
pub struct Member {
    pub app: *mut mc_app,
    pub name: String,
}

// SAFETY: an mc_app may be used from any thread (documented).
unsafe impl Send for Member {}
// SAFETY: as above.
unsafe impl Sync for Member {}

impl Member {
    /// Creates the app for `dir`, starts it with `hooks` and waits until it is ready.
    pub fn start(dir: &Path, name: &str, hooks: Option<&mc_hooks>) -> Member {
        let app = new_app(dir);
        let args = c(START_ARGS);
        let hooks = hooks.map_or(ptr::null(), |h| h as *const mc_hooks);
        // SAFETY: valid arguments; the hooks' userdata outlives the member (tests keep it).
        ok("mc_app_start", |err| unsafe {
            mc_app_start(app, args.as_ptr(), hooks, err)
        });
        // SAFETY: valid arguments.
        ok("mc_app_ready", |err| unsafe {
            mc_app_ready(app, READY_MS, err)
        });
        Member {
            app,
            name: name.to_string(),
        }
    }

    /// The app (a method, so that closures capture the `Sync` member rather than the pointer).
    pub fn app(&self) -> *mut mc_app {
        self.app
    }

    /// Bootstraps a cluster with this member at a free address.
    pub fn bootstrap(&self, config_json: &str) -> Result<(), Failed> {
        let (name, address, config) = (c(&self.name), c(&free_address()), c(config_json));
        // SAFETY: valid arguments.
        call(|err| unsafe {
            mc_app_new_cluster(
                self.app,
                name.as_ptr(),
                address.as_ptr(),
                config.as_ptr(),
                err,
            )
        })
    }

    /// Issues a join token for `name`.
    pub fn token(&self, name: &str) -> String {
        let name = c(name);
        // SAFETY: valid arguments.
        string_out("mc_app_new_join_token", |out, err| unsafe {
            mc_app_new_join_token(self.app, name.as_ptr(), 600_000, out, err)
        })
    }

    /// Joins with `token` at a free address.
    pub fn join(&self, token: &str) -> Result<(), Failed> {
        let (name, address, token) = (c(&self.name), c(&free_address()), c(token));
        // SAFETY: valid arguments; NULL config is allowed.
        call(|err| unsafe {
            mc_app_join_cluster(
                self.app,
                name.as_ptr(),
                address.as_ptr(),
                token.as_ptr(),
                ptr::null(),
                err,
            )
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // SAFETY: the app is live until freed here.
        unsafe {
            let _ = call(|err| mc_app_stop(self.app, err));
            let _ = call(|err| mc_app_wait(self.app, err));
            mc_app_free(self.app);
        }
    }
}

/// The body of a transaction, as a Rust closure called through a C trampoline.
pub type TxBody<'f> = Box<dyn FnMut(*mut mc_tx<'_, '_>, *mut *mut mc_error) -> c_int + Send + 'f>;

unsafe extern "C" fn trampoline(
    userdata: *mut c_void,
    tx: *mut mc_tx<'_, '_>,
    err: *mut *mut mc_error,
) -> c_int {
    // SAFETY: `userdata` is the `TxBody` that `transaction` passed, alive during the call.
    let body = unsafe { &mut *userdata.cast::<TxBody<'_>>() };
    body(tx, err)
}

/// `mc_app_transaction` with a Rust closure as the transaction function.
pub fn transaction(
    app: *const mc_app,
    body: impl FnMut(*mut mc_tx<'_, '_>, *mut *mut mc_error) -> c_int + Send,
) -> Result<(), Failed> {
    let mut body: TxBody<'_> = Box::new(body);
    let userdata = (&mut body as *mut TxBody<'_>).cast::<c_void>();
    // SAFETY: the trampoline matches `mc_tx_fn`; `body` outlives the call.
    call(|err| unsafe { mc_app_transaction(app, Some(trampoline), userdata, err) })
}

/// `mc_tx_query` inside a transaction function, leaving a failure in `err`.
pub fn query(
    tx: *mut mc_tx<'_, '_>,
    sql: &str,
    params: &str,
    err: *mut *mut mc_error,
) -> Option<serde_json::Value> {
    let (sql, params) = (c(sql), c(params));
    let mut rows: *mut c_char = ptr::null_mut();
    // SAFETY: `tx` and `err` are the transaction function's.
    let code = unsafe { mc_tx_query(tx, sql.as_ptr(), params.as_ptr(), &mut rows, err) };
    // SAFETY: written by the library on success.
    (code == mc_result::MC_OK).then(|| serde_json::from_str(&unsafe { take_string(rows) }).unwrap())
}

/// `mc_tx_execute` inside a transaction function, leaving a failure in `err`.
pub fn execute(
    tx: *mut mc_tx<'_, '_>,
    sql: &str,
    params: &str,
    err: *mut *mut mc_error,
) -> Option<i64> {
    let (sql, params) = (c(sql), c(params));
    let mut changed = -1;
    // SAFETY: `tx` and `err` are the transaction function's.
    let code = unsafe { mc_tx_execute(tx, sql.as_ptr(), params.as_ptr(), &mut changed, err) };
    (code == mc_result::MC_OK).then_some(changed)
}

/// Hooks with no function set (to fill a struct update).
pub fn no_hooks() -> mc_hooks {
    mc_hooks {
        userdata: ptr::null_mut(),
        pre_init: None,
        post_bootstrap: None,
        pre_join: None,
        post_join: None,
        on_new_member: None,
        on_start: None,
        pre_remove: None,
        post_remove: None,
        on_heartbeat: None,
        on_daemon_config_update: None,
        endpoint: None,
        endpoint_access: None,
    }
}

/// Hooks that record what ran, optionally fail one hook, and probe a blocking call from
/// OnStart.
#[derive(Default)]
pub struct Recorder {
    /// `"<Hook> <member name> <args_json>"`, in order.
    pub events: std::sync::Mutex<Vec<String>>,
    /// The hook that fails (with `MC_ERR_INVALID_ARGUMENT`), if any.
    pub fail: Option<&'static str>,
    /// When set, OnStart calls `mc_app_status` on this app and records the code.
    pub probe: std::sync::atomic::AtomicPtr<mc_app>,
    /// The codes of the probes.
    pub probed: std::sync::Mutex<Vec<mc_result>>,
}

impl Recorder {
    /// A recorder whose hook `fail` fails.
    pub fn failing(fail: &'static str) -> Recorder {
        Recorder {
            fail: Some(fail),
            ..Recorder::default()
        }
    }

    /// The hooks recording into `self`, which must outlive the daemon they are given to.
    pub fn hooks(&self) -> mc_hooks {
        mc_hooks {
            userdata: (self as *const Recorder).cast_mut().cast(),
            pre_init: Some(pre_init),
            post_bootstrap: Some(post_bootstrap),
            pre_join: Some(pre_join),
            post_join: Some(post_join),
            on_new_member: Some(on_new_member),
            on_start: Some(on_start),
            pre_remove: Some(pre_remove),
            post_remove: Some(post_remove),
            on_heartbeat: None,
            on_daemon_config_update: Some(on_daemon_config_update),
            endpoint: None,
            endpoint_access: None,
        }
    }

    /// The recorded events of `hook`, as their args JSON.
    pub fn of(&self, hook: &str) -> Vec<serde_json::Value> {
        let prefix = format!("{hook} ");
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|event| event.strip_prefix(&prefix))
            .map(|rest| {
                let json = &rest[rest.find(' ').unwrap() + 1..];
                serde_json::from_str(json).unwrap()
            })
            .collect()
    }

    /// The position of the first event of `hook`.
    pub fn position(&self, hook: &str) -> Option<usize> {
        let prefix = format!("{hook} ");
        self.events
            .lock()
            .unwrap()
            .iter()
            .position(|event| event.starts_with(&prefix))
    }
}

/// What every recording hook does.
///
/// # Safety
/// The arguments of an `mc_hook_fn` whose userdata is a `Recorder`.
unsafe fn record(
    hook: &'static str,
    userdata: *mut c_void,
    state: *const mc_state,
    args: *const c_char,
    err: *mut *mut mc_error,
) -> c_int {
    // SAFETY: per the contract.
    let (recorder, name, args) = unsafe {
        (
            &*userdata.cast::<Recorder>(),
            CStr::from_ptr(mc_state_name(state))
                .to_string_lossy()
                .into_owned(),
            CStr::from_ptr(args).to_string_lossy().into_owned(),
        )
    };
    recorder
        .events
        .lock()
        .unwrap()
        .push(format!("{hook} {name} {args}"));
    let app = recorder.probe.load(std::sync::atomic::Ordering::SeqCst);
    if hook == "OnStart" && !app.is_null() {
        let mut json: *mut c_char = ptr::null_mut();
        // SAFETY: the probed app outlives its daemon.
        let code = unsafe { mc_app_status(app, &mut json, ptr::null_mut()) };
        recorder.probed.lock().unwrap().push(code);
    }
    if recorder.fail == Some(hook) {
        let message = c(&format!("{hook} refused by the test"));
        // SAFETY: `err` is the hook's.
        unsafe {
            mc_error_set(
                err,
                mc_result::MC_ERR_INVALID_ARGUMENT as i32,
                message.as_ptr(),
            )
        };
        return 1;
    }
    0
}

macro_rules! recording_hooks {
    ($($fn_name:ident => $hook:literal),* $(,)?) => {$(
        unsafe extern "C" fn $fn_name(
            userdata: *mut c_void,
            state: *const mc_state,
            args: *const c_char,
            err: *mut *mut mc_error,
        ) -> c_int {
            // SAFETY: called by the library as an `mc_hook_fn` with our userdata.
            unsafe { record($hook, userdata, state, args, err) }
        }
    )*};
}

recording_hooks! {
    pre_init => "PreInit",
    post_bootstrap => "PostBootstrap",
    pre_join => "PreJoin",
    post_join => "PostJoin",
    on_new_member => "OnNewMember",
    on_start => "OnStart",
    pre_remove => "PreRemove",
    post_remove => "PostRemove",
    on_daemon_config_update => "OnDaemonConfigUpdate",
}
