//! Bad input through the C ABI, without a cluster: every case a defined code and a message,
//! out-parameters untouched on failure, never a crash.

mod common;

use std::ffi::{CStr, c_char};
use std::ptr;

use common::{Failed, c, call, new_app};
use microcluster::*;

/// A pointer C code would have left in an out-parameter before the call.
fn sentinel<T>() -> *mut T {
    ptr::dangling_mut()
}

fn expect(result: Result<(), Failed>, code: mc_result, words: &str) {
    let failed = result.expect_err("the call should fail");
    assert_eq!(failed.code, code, "{failed:?}");
    assert!(
        failed.message.contains(words),
        "message {:?} does not say {words:?}",
        failed.message
    );
}

#[test]
fn null_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = sentinel::<mc_app>();
    // SAFETY: NULL is what is being tested; `app` is a valid out-parameter.
    expect(
        call(|err| unsafe { mc_app_new(ptr::null(), &mut app, err) }),
        mc_result::MC_ERR_NULL_ARGUMENT,
        "state_dir",
    );
    assert_eq!(app, sentinel(), "out-parameter written on failure");
    let path = c(dir.path().to_str().unwrap());
    // SAFETY: NULL out-parameter is what is being tested.
    expect(
        call(|err| unsafe { mc_app_new(path.as_ptr(), ptr::null_mut(), err) }),
        mc_result::MC_ERR_NULL_ARGUMENT,
        "out",
    );

    let app = new_app(dir.path());
    let name = c("c1");
    // SAFETY: the NULL arguments are what is being tested; the rest is valid.
    unsafe {
        expect(
            call(|err| mc_app_start(ptr::null_mut(), name.as_ptr(), ptr::null(), err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "app",
        );
        expect(
            call(|err| mc_app_start(app, ptr::null(), ptr::null(), err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "args_json",
        );
        expect(
            call(|err| mc_app_status(app, ptr::null_mut(), err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "json_out",
        );
        expect(
            call(|err| mc_app_new_cluster(app, ptr::null(), name.as_ptr(), ptr::null(), err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "name",
        );
        expect(
            call(|err| mc_app_transaction(app, None, ptr::null_mut(), err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "func",
        );
        let mut rows = sentinel::<c_char>();
        expect(
            call(|err| mc_tx_query(ptr::null_mut(), name.as_ptr(), ptr::null(), &mut rows, err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "tx",
        );
        assert_eq!(rows, sentinel());
        // Without an err out-parameter the code still tells what happened.
        assert_eq!(
            mc_app_status(app, ptr::null_mut(), ptr::null_mut()),
            mc_result::MC_ERR_NULL_ARGUMENT
        );
        // The infallible functions take NULL too.
        assert_eq!(mc_error_code(ptr::null()), mc_result::MC_ERR_NULL_ARGUMENT);
        assert!(mc_error_message(ptr::null()).is_null());
        assert!(mc_state_name(ptr::null()).is_null());
        assert!(mc_state_address(ptr::null()).is_null());
        mc_error_free(ptr::null_mut());
        mc_string_free(ptr::null_mut());
        mc_app_free(ptr::null_mut());
        mc_app_free(app);
    }
}

#[test]
fn invalid_utf8_is_refused() {
    let bad = b"/tmp/\xff\xfe\0";
    let mut app = sentinel::<mc_app>();
    // SAFETY: a NUL-terminated (invalid UTF-8) string and a valid out-parameter.
    expect(
        call(|err| unsafe { mc_app_new(bad.as_ptr().cast(), &mut app, err) }),
        mc_result::MC_ERR_INVALID_UTF8,
        "state_dir is not valid UTF-8",
    );
    assert_eq!(app, sentinel());
}

#[test]
fn invalid_json_arguments_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let app = new_app(dir.path());
    let start = |args: &str| {
        let args = c(args);
        // SAFETY: valid arguments.
        call(|err| unsafe { mc_app_start(app, args.as_ptr(), ptr::null(), err) })
    };
    expect(
        start("{\"version\": "),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "Argument args_json is not valid: EOF while parsing",
    );
    expect(
        start("{}"),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "missing field `version`",
    );
    expect(
        start(r#"{"version": "1.0", "heartbeat": 5}"#),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "unknown field `heartbeat`",
    );
    expect(
        start(r#"{"version": "1.0", "schema_updates": "CREATE TABLE t (id INTEGER PRIMARY KEY)"}"#),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "expected a sequence",
    );
    let servers = r#"[{"name": "ext.example.com", "core_api": true, "resources": [{"path_prefix":
        "1.0", "endpoints": [{"name": "hello", "path": "hello", "methods": {"GET": {}}}]}]}]"#;
    expect(
        start(&format!(
            r#"{{"version": "1.0", "extension_servers": {servers}}}"#
        )),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "Extension servers need an endpoint handler (mc_hooks.endpoint)",
    );
    let with_handler = |args: &str| {
        unsafe extern "C" fn handler(
            _: *mut std::ffi::c_void,
            _: *const mc_state,
            _: *const c_char,
            _: *const c_char,
            _: *const c_char,
            _: *mut *mut c_char,
            _: *mut *mut mc_error,
        ) -> i32 {
            0
        }
        let hooks = mc_hooks {
            endpoint: Some(handler),
            ..common::no_hooks()
        };
        let args = c(args);
        // SAFETY: valid arguments.
        call(|err| unsafe { mc_app_start(app, args.as_ptr(), &hooks, err) })
    };
    expect(
        with_handler(&format!(
            r#"{{"version": "1.0", "extension_servers": {}}}"#,
            servers.replace("GET", "BREW")
        )),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "Endpoint \"hello\" has an unknown method \"BREW\"",
    );
    expect(
        with_handler(r#"{"version": "1.0", "extension_servers": [{"name": "x", "colour": 1}]}"#),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "unknown field `colour`",
    );
    let (name, address, config) = (c("c1"), c("127.0.0.1:1"), c(r#"{"answer": 42}"#));
    // SAFETY: valid arguments.
    expect(
        call(|err| unsafe {
            mc_app_new_cluster(app, name.as_ptr(), address.as_ptr(), config.as_ptr(), err)
        }),
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "Argument config_json is not valid: invalid type: integer `42`, expected a string",
    );
    // SAFETY: the app is live and freed once.
    unsafe { mc_app_free(app) };
}

#[test]
fn a_daemon_that_fails_to_start_reports_through_ready_and_wait() {
    let dir = tempfile::tempdir().unwrap();
    let app = new_app(dir.path());
    // SAFETY: valid arguments throughout; the app is freed once.
    unsafe {
        expect(
            call(|err| mc_app_wait(app, err)),
            mc_result::MC_ERR_INVALID_ARGUMENT,
            "not started",
        );
        let args = c(r#"{"version": ""}"#);
        common::ok("mc_app_start", |err| {
            mc_app_start(app, args.as_ptr(), ptr::null(), err)
        });
        expect(
            call(|err| mc_app_wait(app, err)),
            mc_result::MC_ERR_INVALID_ARGUMENT,
            "Version was missing",
        );
        expect(
            call(|err| mc_app_ready(app, common::READY_MS, err)),
            mc_result::MC_ERR_UNAVAILABLE,
            "The daemon has stopped: Version was missing",
        );
        mc_app_free(app);
    }
}

#[test]
fn ready_times_out_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let app = new_app(dir.path());
    // SAFETY: valid arguments; the app is freed once.
    unsafe {
        expect(
            call(|err| mc_app_ready(app, 0, err)),
            mc_result::MC_ERR_TIMEOUT,
            "Timed out",
        );
        let mut json = sentinel::<c_char>();
        let failed = call(|err| mc_app_status(app, &mut json, err)).unwrap_err();
        assert_ne!(failed.code, mc_result::MC_OK);
        assert_eq!(json, sentinel());
        mc_app_free(app);
    }
}

#[test]
fn error_set_maps_codes_and_replaces_an_earlier_error() {
    let mut err: *mut mc_error = ptr::null_mut();
    let text = |err: *mut mc_error| {
        // SAFETY: a live error.
        unsafe { CStr::from_ptr(mc_error_message(err)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    // SAFETY: `err` points to NULL or to the error set before; freed once at the end.
    unsafe {
        mc_error_set(
            &mut err,
            mc_result::MC_ERR_NOT_FOUND as i32,
            c("no such thing").as_ptr(),
        );
        assert_eq!(mc_error_code(err), mc_result::MC_ERR_NOT_FOUND);
        assert_eq!(text(err), "no such thing");
        mc_error_set(&mut err, 9999, c("odd code").as_ptr());
        assert_eq!(mc_error_code(err), mc_result::MC_ERR_INTERNAL);
        assert_eq!(text(err), "odd code");
        mc_error_set(&mut err, 0, ptr::null());
        assert_eq!(mc_error_code(err), mc_result::MC_ERR_INTERNAL);
        assert_eq!(text(err), "");
        mc_error_set(ptr::null_mut(), 1, c("ignored").as_ptr());
        mc_error_free(err);
    }
}

/// The library cannot detect a use after free, so the documented pattern is to free and forget:
/// set the pointer to NULL, which every function then refuses (or, for the free functions,
/// ignores).
#[test]
fn a_freed_handle_is_set_to_null_and_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = new_app(dir.path());
    // SAFETY: the app is live until freed; afterwards only NULL is passed.
    unsafe {
        mc_app_free(app);
        app = ptr::null_mut();
        expect(
            call(|err| mc_app_stop(app, err)),
            mc_result::MC_ERR_NULL_ARGUMENT,
            "app",
        );
        mc_app_free(app);
    }
}

#[test]
fn log_levels_out_of_range_are_refused_and_events_reach_the_callback() {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());
    unsafe extern "C" fn collect(
        _: *mut std::ffi::c_void,
        level: i32,
        target: *const c_char,
        message: *const c_char,
    ) {
        // SAFETY: the library passes NUL-terminated strings valid during the call.
        let (target, message) = unsafe { (CStr::from_ptr(target), CStr::from_ptr(message)) };
        if target.to_string_lossy() == "bad_input" {
            SEEN.lock()
                .unwrap()
                .push((level, message.to_string_lossy().into_owned()));
        }
    }
    for level in [0, 6, -1] {
        expect(
            // SAFETY: valid arguments but the level.
            call(|err| unsafe { mc_log_set(Some(collect), ptr::null_mut(), level, err) }),
            mc_result::MC_ERR_INVALID_ARGUMENT,
            "Invalid log level",
        );
    }
    // SAFETY: valid arguments.
    call(|err| unsafe { mc_log_set(Some(collect), ptr::null_mut(), 2, err) }).unwrap();
    tracing::warn!(target: "bad_input", "kept");
    tracing::info!(target: "bad_input", "below the level");
    // SAFETY: valid arguments; NULL removes the callback.
    call(|err| unsafe { mc_log_set(None, ptr::null_mut(), 5, err) }).unwrap();
    tracing::error!(target: "bad_input", "after removal");
    assert_eq!(*SEEN.lock().unwrap(), vec![(2, "kept".to_string())]);
}

#[test]
fn recovery_input_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let app = new_app(dir.path());
    // A member that never joined a cluster has an empty local view.
    // SAFETY: a live app and valid out-parameters.
    let view = common::json_out("mc_app_local_members", |out, err| unsafe {
        mc_app_local_members(app, out, err)
    });
    assert_eq!(view, serde_json::json!([]));
    let mut out: *mut c_char = ptr::null_mut();
    for (members, code, words) in [
        (
            "not json",
            mc_result::MC_ERR_INVALID_ARGUMENT,
            "members_json",
        ),
        (
            "[{\"id\": \"x\"}]",
            mc_result::MC_ERR_INVALID_ARGUMENT,
            "members_json",
        ),
        (
            "[]",
            mc_result::MC_ERR_INVALID_ARGUMENT,
            "At least one voter is required",
        ),
    ] {
        let members = c(members);
        expect(
            // SAFETY: valid arguments.
            call(|err| unsafe { mc_app_recover(app, members.as_ptr(), &mut out, err) }),
            code,
            words,
        );
    }
    expect(
        // SAFETY: NULL members, otherwise valid.
        call(|err| unsafe { mc_app_recover(app, ptr::null(), &mut out, err) }),
        mc_result::MC_ERR_NULL_ARGUMENT,
        "members_json",
    );
    assert!(out.is_null(), "nothing is written on failure");
    // SAFETY: a live app, freed once.
    unsafe { mc_app_free(app) };
}
