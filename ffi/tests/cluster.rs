//! Members run through the C ABI in this process: a 3-member cluster with transactions from
//! every member, hooks as C callbacks (their order, their errors reaching the caller), and
//! blocking calls from callbacks refused with `MC_ERR_WOULD_BLOCK`.

mod common;

use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Failed, Member, Recorder, c, call, execute, json_out, query, transaction};
use microcluster::*;
use serde_json::json;

/// One read-modify-write increment of the counter `name`.
fn increment(app: *const mc_app, name: &str) -> Result<(), Failed> {
    let params = json!([name]).to_string();
    transaction(app, |tx, err| {
        let Some(rows) = query(
            tx,
            "SELECT value FROM counters WHERE name = ?1",
            &params,
            err,
        ) else {
            return 1;
        };
        let value = rows["rows"][0][0].as_i64().unwrap_or(0);
        let sql = "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                   ON CONFLICT (name) DO UPDATE SET value = excluded.value";
        match execute(tx, sql, &json!([name, value + 1]).to_string(), err) {
            Some(1) => 0,
            _ => 1,
        }
    })
}

/// The rows of `sql` read in a transaction on `app`.
fn read(app: *const mc_app, sql: &str) -> serde_json::Value {
    let mut result = serde_json::Value::Null;
    transaction(app, |tx, err| match query(tx, sql, "null", err) {
        Some(rows) => {
            result = rows["rows"].clone();
            0
        }
        None => 1,
    })
    .unwrap_or_else(|failed| panic!("{sql}: {failed:?}"));
    result
}

#[test]
fn three_members_bootstrap_join_and_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let recorders: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let refusing = Recorder::failing("PreJoin");
    let members: Vec<Member> = (0..3)
        .map(|i| {
            let name = format!("c{}", i + 1);
            Member::start(&dir.path().join(&name), &name, Some(&recorders[i].hooks()))
        })
        .collect();

    members[0].bootstrap(r#"{"role": "first"}"#).unwrap();
    for member in &members[1..] {
        let token = members[0].token(&member.name);
        member.join(&token).unwrap();
    }

    // Members, as every member sees them.
    // SAFETY (all calls below): live apps and valid out-parameters.
    let listed = json_out("mc_app_cluster_members", |out, err| unsafe {
        mc_app_cluster_members(members[2].app, out, err)
    });
    let mut names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c1", "c2", "c3"]);

    // Read-modify-write transactions from every member at once are serializable.
    std::thread::scope(|scope| {
        for member in &members {
            scope.spawn(|| {
                for _ in 0..3 {
                    increment(member.app, "hits").unwrap();
                }
            });
        }
    });
    assert_eq!(
        read(
            members[1].app,
            "SELECT value FROM counters WHERE name = 'hits'"
        ),
        json!([[9]])
    );

    // Values of every type written on one member are read back on another.
    let runs = AtomicUsize::new(0);
    let values = json!([1, 2.5, "text", {"blob_base64": "AAEC/w=="}, null]);
    transaction(members[1].app, |tx, err| {
        runs.fetch_add(1, Ordering::SeqCst);
        let sql = "INSERT INTO items (id, i, r, t, b, n) VALUES (1, ?1, ?2, ?3, ?4, ?5)";
        match execute(tx, sql, &values.to_string(), err) {
            Some(1) => 0,
            _ => 1,
        }
    })
    .unwrap();
    assert!(runs.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        read(
            members[2].app,
            "SELECT i, r, t, b, n FROM items WHERE id = 1"
        ),
        json!([values])
    );
    let sql = c("SELECT value FROM counters WHERE name = 'hits'");
    let result = json_out("mc_app_sql", |out, err| unsafe {
        mc_app_sql(members[0].app, sql.as_ptr(), out, err)
    });
    assert_eq!(result["Results"][0]["rows"], json!([[9]]));

    // Tokens: issue, list, revoke.
    members[0].token("c9");
    let tokens = json_out("mc_app_join_tokens", |out, err| unsafe {
        mc_app_join_tokens(members[0].app, out, err)
    });
    assert_eq!(tokens[0]["name"], "c9", "{tokens}");
    let c9 = c("c9");
    common::ok("mc_app_revoke_join_token", |err| unsafe {
        mc_app_revoke_join_token(members[0].app, c9.as_ptr(), err)
    });
    let failed = call(|err| unsafe { mc_app_revoke_join_token(members[0].app, c9.as_ptr(), err) })
        .unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_NOT_FOUND, "{failed:?}");

    // Hooks ran where and in the order SPEC §10 says, with their arguments.
    assert_eq!(
        recorders[0].of("PreInit"),
        [json!({"bootstrap": true, "config": {"role": "first"}})]
    );
    assert_eq!(
        recorders[0].of("PostBootstrap"),
        [json!({"config": {"role": "first"}})]
    );
    let new_members: Vec<_> = recorders[0]
        .of("OnNewMember")
        .iter()
        .map(|args| args["new_member"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new_members, ["c2", "c3"]);
    for recorder in &recorders[1..] {
        assert_eq!(
            recorder.of("PreInit"),
            [json!({"bootstrap": false, "config": {}})]
        );
        let order: Vec<_> = ["OnStart", "PreInit", "PreJoin", "PostJoin"]
            .iter()
            .map(|hook| {
                recorder
                    .position(hook)
                    .unwrap_or_else(|| panic!("{hook} did not run"))
            })
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    // A failing PreJoin makes the join fail with the hook's message.
    let refused = Member::start(&dir.path().join("c4"), "c4", Some(&refusing.hooks()));
    let token = members[0].token("c4");
    let failed = refused.join(&token).unwrap_err();
    assert!(
        failed.message.contains("PreJoin refused by the test"),
        "{failed:?}"
    );
    assert_eq!(
        failed.code,
        mc_result::MC_ERR_INVALID_ARGUMENT,
        "{failed:?}"
    );

    // Quorum-loss recovery from C, with every member stopped: the local view, then the same
    // members with c3 made a spare.
    for member in &members {
        // SAFETY: live apps.
        common::ok("mc_app_stop", |err| unsafe {
            mc_app_stop(member.app(), err)
        });
    }
    // SAFETY: a live app and valid out-parameters.
    let view = json_out("mc_app_local_members", |out, err| unsafe {
        mc_app_local_members(members[0].app(), out, err)
    });
    let mut view = view.as_array().unwrap().clone();
    let names: Vec<_> = view.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["c1", "c2", "c3"]);
    assert!(view.iter().all(|m| m["id"].is_u64()), "{view:?}");
    view[2]["role"] = json!("spare");
    let edited = c(&serde_json::Value::Array(view.clone()).to_string());
    // SAFETY: a live app and valid arguments.
    let tarball = common::string_out("mc_app_recover", |out, err| unsafe {
        mc_app_recover(members[0].app(), edited.as_ptr(), out, err)
    });
    assert!(tarball.ends_with("recovery_db.tar.gz"), "{tarball}");
    assert!(std::path::Path::new(&tarball).exists());
    // SAFETY: as above.
    let after = json_out("mc_app_local_members", |out, err| unsafe {
        mc_app_local_members(members[0].app(), out, err)
    });
    assert_eq!(after[2]["role"], "spare");
    // A list that changes the members is refused, and changes nothing.
    let fewer = c(&serde_json::Value::Array(view[..2].to_vec()).to_string());
    let mut out = ptr::null_mut();
    // SAFETY: as above.
    let refused =
        call(|err| unsafe { mc_app_recover(members[0].app(), fewer.as_ptr(), &mut out, err) })
            .unwrap_err();
    assert_eq!(refused.code, mc_result::MC_ERR_INVALID_ARGUMENT);
    assert!(
        refused
            .message
            .contains("members cannot be added or removed")
    );
}

#[test]
fn callbacks_cannot_block_and_their_errors_reach_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let app = common::new_app(&dir.path().join("c1"));
    recorder.probe.store(app, Ordering::SeqCst);
    let args = c(common::START_ARGS);
    let hooks = recorder.hooks();
    // SAFETY: valid arguments; the recorder outlives the member.
    common::ok("mc_app_start", |err| unsafe {
        mc_app_start(app, args.as_ptr(), &hooks, err)
    });
    let member = Member {
        app,
        name: "c1".into(),
    };
    // SAFETY: valid arguments.
    common::ok("mc_app_ready", |err| unsafe {
        mc_app_ready(app, common::READY_MS, err)
    });
    // A blocking call made from a hook.
    assert_eq!(
        *recorder.probed.lock().unwrap(),
        [mc_result::MC_ERR_WOULD_BLOCK]
    );
    // Starting the running daemon again.
    // SAFETY: valid arguments.
    let failed =
        call(|err| unsafe { mc_app_start(app, args.as_ptr(), ptr::null(), err) }).unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_CONFLICT, "{failed:?}");
    member.bootstrap("{}").unwrap();

    // A blocking call made from a transaction function, its error passed on.
    let sql = c("SELECT 1");
    let failed = transaction(app, |_tx, err| {
        let mut json = ptr::null_mut();
        // SAFETY: valid arguments; `err` is the transaction function's.
        unsafe { mc_app_sql(member.app(), sql.as_ptr(), &mut json, err) as i32 }
    })
    .unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_WOULD_BLOCK, "{failed:?}");
    assert!(failed.message.contains("Blocking call"), "{failed:?}");

    // An error set by the function, with its code.
    let message = c("nothing to see");
    let failed = transaction(app, |_tx, err| {
        // SAFETY: `err` is the transaction function's.
        unsafe { mc_error_set(err, mc_result::MC_ERR_NOT_FOUND as i32, message.as_ptr()) };
        1
    })
    .unwrap_err();
    assert_eq!(
        (failed.code, failed.message.as_str()),
        (mc_result::MC_ERR_NOT_FOUND, "nothing to see")
    );

    // A failure without an error.
    let failed = transaction(app, |_tx, _err| 7).unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_INTERNAL);
    assert_eq!(
        failed.message,
        "The transaction function failed (returned 7) without setting an error"
    );

    // Bad parameters and refused statements.
    let failed = transaction(app, |tx, err| {
        query(tx, "SELECT ?1", r#"[{"x": 1}]"#, err).map_or(1, |_| 0)
    })
    .unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_INVALID_ARGUMENT);
    assert!(
        failed
            .message
            .contains("params_json: parameter 1 is an object other than"),
        "{failed:?}"
    );
    let failed = transaction(app, |tx, err| {
        query(tx, "SELECT ?1", "[18446744073709551615]", err).map_or(1, |_| 0)
    })
    .unwrap_err();
    assert!(failed.message.contains("out of the range"), "{failed:?}");
    let failed = transaction(app, |tx, err| {
        execute(tx, "CREATE TABLE t (id INTEGER PRIMARY KEY)", "[]", err).map_or(1, |_| 0)
    })
    .unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_INVALID_ARGUMENT);
    assert!(failed.message.contains("Schema changes"), "{failed:?}");

    // Nothing of the failed transactions was kept; booleans are integers.
    transaction(app, |tx, err| {
        execute(
            tx,
            "INSERT INTO items (id, i) VALUES (?1, ?2)",
            "[7, true]",
            err,
        )
        .map_or(1, |_| 0)
    })
    .unwrap();
    assert_eq!(read(app, "SELECT id, i FROM items"), json!([[7, 1]]));

    // Another app on the same state directory reaches the daemon through its control socket,
    // but transactions need the daemon in-process.
    let other = common::new_app(&dir.path().join("c1"));
    // SAFETY: valid arguments.
    let status = json_out("mc_app_status", |out, err| unsafe {
        mc_app_status(other, out, err)
    });
    assert_eq!(status["name"], "c1");
    let failed = transaction(other, |_tx, _err| 0).unwrap_err();
    assert_eq!(failed.code, mc_result::MC_ERR_UNAVAILABLE, "{failed:?}");
    // SAFETY: freed once.
    unsafe { mc_app_free(other) };
}

#[test]
fn a_failing_on_start_hook_stops_the_daemon_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::failing("OnStart");
    let app = common::new_app(dir.path());
    let args = c(common::START_ARGS);
    let hooks = recorder.hooks();
    // SAFETY: valid arguments; the recorder outlives the daemon; the app is freed once.
    unsafe {
        common::ok("mc_app_start", |err| {
            mc_app_start(app, args.as_ptr(), &hooks, err)
        });
        let failed = call(|err| mc_app_wait(app, err)).unwrap_err();
        assert!(
            failed.message.contains("OnStart refused by the test"),
            "{failed:?}"
        );
        let failed = call(|err| mc_app_ready(app, common::READY_MS, err)).unwrap_err();
        assert_eq!(failed.code, mc_result::MC_ERR_UNAVAILABLE, "{failed:?}");
        // Stopping a daemon that already ended succeeds; it can start again.
        common::ok("mc_app_stop", |err| mc_app_stop(app, err));
        mc_app_free(app);
    }
}

#[test]
fn stop_right_after_start_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let app = common::new_app(dir.path());
    let args = c(common::START_ARGS);
    // SAFETY: valid arguments; the app is freed once.
    unsafe {
        common::ok("mc_app_start", |err| {
            mc_app_start(app, args.as_ptr(), ptr::null(), err)
        });
        common::ok("mc_app_stop", |err| mc_app_stop(app, err));
        common::ok("mc_app_wait", |err| mc_app_wait(app, err));
        // And it starts again.
        common::ok("mc_app_start", |err| {
            mc_app_start(app, args.as_ptr(), ptr::null(), err)
        });
        common::ok("mc_app_ready", |err| {
            mc_app_ready(app, common::READY_MS, err)
        });
        mc_app_free(app);
    }
}

/// A PreInit hook that holds the bootstrap until the test releases it.
#[derive(Default)]
struct Hold {
    /// (entered, released)
    state: std::sync::Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

impl Hold {
    fn wait_until(&self, what: &str, condition: impl Fn(&(bool, bool)) -> bool) {
        let state = self.state.lock().unwrap();
        let (_state, timeout) = self
            .changed
            .wait_timeout_while(state, std::time::Duration::from_secs(120), |s| {
                !condition(s)
            })
            .unwrap();
        assert!(!timeout.timed_out(), "timed out waiting until {what}");
    }

    fn set(&self, f: impl FnOnce(&mut (bool, bool))) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }
}

unsafe extern "C" fn held_pre_init(
    userdata: *mut std::ffi::c_void,
    _state: *const mc_state,
    _args: *const std::ffi::c_char,
    _err: *mut *mut mc_error,
) -> std::ffi::c_int {
    // SAFETY: the userdata is the test's `Hold`, alive until the member is stopped.
    let hold = unsafe { &*userdata.cast::<Hold>() };
    hold.set(|s| s.0 = true);
    hold.wait_until("the test releases the hook", |s| s.1);
    0
}

#[test]
fn a_slow_hook_does_not_stall_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let hold = Hold::default();
    let hooks = mc_hooks {
        userdata: (&hold as *const Hold).cast_mut().cast(),
        pre_init: Some(held_pre_init),
        ..common::no_hooks()
    };
    let member = Member::start(dir.path(), "c1", Some(&hooks));
    std::thread::scope(|scope| {
        let bootstrap = scope.spawn(|| member.bootstrap("{}"));
        hold.wait_until("PreInit runs", |s| s.0);
        // The daemon answers while the hook blocks its thread.
        // SAFETY: a live app and valid out-parameters.
        let status = json_out("mc_app_status", |out, err| unsafe {
            mc_app_status(member.app(), out, err)
        });
        // Not initialised yet, so not ready (SPEC §2.3), but answering.
        assert_eq!(status["ready"], false);
        assert_eq!(status["name"], "c1");
        hold.set(|s| s.1 = true);
        bootstrap.join().unwrap().unwrap();
    });
}
