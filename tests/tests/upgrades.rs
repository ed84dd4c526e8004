//! Rolling upgrades (SPEC §11.5), member status while waiting (§8.5) and `patch.global.sql`
//! (§11.6), against real `microd` processes. An "upgraded" member runs `microd` with one more
//! external schema update than the example's two.

use std::time::Instant;

use microcluster_it::{Cluster, Microd, free_address, texts, wait_until};
use serde_json::Value;

/// The upgraded members' third external schema update.
const EXTRA_UPDATE: &str = "CREATE TABLE upgrade_table (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, note TEXT NOT NULL);";

const HEARTBEAT: &[&str] = &["--heartbeat", "1s"];

/// `microd` arguments of a member without the extra update.
const OLD: &[&str] = &["-v", "--heartbeat", "1s"];

/// `microd` arguments of a member with the extra update.
fn upgraded() -> Vec<&'static str> {
    vec![
        "-v",
        "--heartbeat",
        "1s",
        "--extra-schema-update",
        EXTRA_UPDATE,
    ]
}

/// Starts member `i` with `args`, without waiting for it to be ready (a member waiting for
/// an upgrade is not ready for 30 s). Returns the length of its log before this run.
fn start(cluster: &mut Cluster, i: usize, args: &[&str]) -> u64 {
    assert!(cluster.members[i].is_none(), "c{} is running", i + 1);
    let before = std::fs::metadata(cluster.state_dirs[i].with_extension("log"))
        .map(|m| m.len())
        .unwrap_or(0);
    cluster.members[i] = Some(Microd::spawn(&cluster.state_dirs[i], args));
    before
}

/// What member `i` logged since its log was `from` bytes long.
fn log_since(cluster: &Cluster, i: usize, from: u64) -> String {
    cluster
        .log(i)
        .get(from as usize..)
        .unwrap_or_default()
        .to_string()
}

/// `cluster list -f json` on member `i`, or `None` while it fails (e.g. before its control
/// socket is up).
fn members(cluster: &Cluster, i: usize) -> Option<Vec<Value>> {
    let out = cluster.ctl(i, &["cluster", "list", "-f", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()?
        .as_array()
        .cloned()
}

/// Member `i`'s view as (name, status), sorted by name.
fn statuses(cluster: &Cluster, i: usize) -> Option<Vec<(String, String)>> {
    Some(
        members(cluster, i)?
            .iter()
            .map(|m| {
                let field = |key: &str| m[key].as_str().unwrap_or_default().to_string();
                (field("name"), field("status"))
            })
            .collect(),
    )
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(name, status)| (name.to_string(), status.to_string()))
        .collect()
}

/// Waits until member `i` lists exactly `expected` (name, status) pairs.
fn wait_statuses(cluster: &Cluster, i: usize, expected: &[(&str, &str)]) {
    let expected = pairs(expected);
    wait_until(&format!("c{} lists {expected:?}", i + 1), || {
        statuses(cluster, i).as_ref() == Some(&expected)
    });
}

/// Asserts that the SQL API of member `i` answers 503 with the waiting text for `behind`
/// members.
fn assert_waiting(cluster: &Cluster, i: usize, behind: usize) {
    let err = cluster.sql(i, "SELECT 1").unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "Database is waiting for an upgrade: {behind} cluster members have not yet received the update"
        )
    );
}

/// The dump of member `i` without the member rows (their heartbeats change every second).
fn stable_dump(cluster: &Cluster, i: usize) -> String {
    cluster
        .dump(i)
        .lines()
        .filter(|line| !line.starts_with("INSERT INTO core_cluster_members "))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn rolling_upgrade_of_the_application_schema() {
    let mut cluster = Cluster::start(3, HEARTBEAT);
    cluster
        .sql(
            0,
            "INSERT INTO extended_table (key, value) VALUES ('written', 'before the upgrade')",
        )
        .unwrap();

    // c1 first: the other two are behind it, so it waits.
    cluster.stop(0);
    let upgraded = upgraded();
    let spawned = Instant::now();
    let from = start(&mut cluster, 0, &upgraded);
    wait_statuses(
        &cluster,
        0,
        &[
            ("c1", "UPGRADING"),
            ("c2", "NEEDS UPGRADE"),
            ("c3", "NEEDS UPGRADE"),
        ],
    );
    assert_waiting(&cluster, 0, 2);
    let view = members(&cluster, 0).unwrap();
    assert_eq!(view[0]["schema_external_version"], 3);
    assert_eq!(view[1]["schema_external_version"], 2);
    assert!(
        log_since(&cluster, 0, from)
            .contains("Waiting for other cluster members to upgrade their versions")
    );
    // The members not upgraded yet keep working.
    let view = statuses(&cluster, 1).unwrap();
    assert_eq!(
        view[1],
        ("c2".to_string(), "ONLINE".to_string()),
        "{view:?}"
    );
    assert_eq!(
        view[2],
        ("c3".to_string(), "ONLINE".to_string()),
        "{view:?}"
    );
    cluster
        .sql(
            1,
            "INSERT INTO extended_table (key, value) VALUES ('during', 'the upgrade')",
        )
        .unwrap();

    // A waiting member shuts down without waiting for its start-up to finish (SPEC §15).
    cluster.stop(0);
    if spawned.elapsed().as_secs() < 25 {
        assert!(
            !log_since(&cluster, 0, from).contains("Daemon is ready"),
            "the shutdown waited for start-up:\n{}",
            cluster.log(0)
        );
    }
    start(&mut cluster, 0, &upgraded);
    wait_statuses(
        &cluster,
        0,
        &[
            ("c1", "UPGRADING"),
            ("c2", "NEEDS UPGRADE"),
            ("c3", "NEEDS UPGRADE"),
        ],
    );

    // c2 next: only c3 is behind now.
    cluster.stop(1);
    start(&mut cluster, 1, &upgraded);
    let waiting = [
        ("c1", "UPGRADING"),
        ("c2", "UPGRADING"),
        ("c3", "NEEDS UPGRADE"),
    ];
    wait_statuses(&cluster, 1, &waiting);
    wait_statuses(&cluster, 0, &waiting);
    assert_waiting(&cluster, 1, 1);

    // c3 last: nobody is behind; it applies the update and wakes the others.
    cluster.stop(2);
    start(&mut cluster, 2, &upgraded);
    let online = [("c1", "ONLINE"), ("c2", "ONLINE"), ("c3", "ONLINE")];
    for i in 0..3 {
        wait_statuses(&cluster, i, &online);
    }
    for i in 0..3 {
        let view = members(&cluster, i).unwrap();
        assert!(
            view.iter()
                .all(|m| m["schema_external_version"] == 3 && m["schema_internal_version"] == 1),
            "{view:?}"
        );
    }
    cluster
        .sql(
            0,
            "INSERT INTO upgrade_table (note) VALUES ('after the upgrade')",
        )
        .unwrap();
    let dumps: Vec<String> = (0..3).map(|i| stable_dump(&cluster, i)).collect();
    assert_eq!(dumps[0], dumps[1]);
    assert_eq!(dumps[0], dumps[2]);
    for expected in [
        "CREATE TABLE upgrade_table",
        "'before the upgrade'",
        "'after the upgrade'",
        "'the upgrade'",
    ] {
        assert!(
            dumps[0].contains(expected),
            "{expected} missing:\n{}",
            dumps[0]
        );
    }
    let applied = cluster.select(
        2,
        "SELECT count(*) FROM schemas WHERE type = 1 AND version = 3",
    );
    assert_eq!(applied, vec![serde_json::json!([1])]);

    // A member started again without the update is behind: it refuses to start.
    cluster.stop(2);
    let from = start(&mut cluster, 2, OLD);
    let mut old = cluster.members[2].take().unwrap();
    assert_eq!(old.wait_exit(), 1, "log:\n{}", old.log_text());
    assert!(
        log_since(&cluster, 2, from)
            .contains("Error: This node's version is behind, please upgrade"),
        "log:\n{}",
        old.log_text()
    );
    drop(old);
    // Its row still holds the upgraded versions, and it starts with the update again.
    let view = members(&cluster, 0).unwrap();
    assert_eq!(view[2]["schema_external_version"], 3);
    cluster.members[2] = Some(Microd::spawn(&cluster.state_dirs[2], &upgraded));
    let out = cluster.ctl(2, &["waitready", "--timeout", "120"]);
    assert!(out.status.success(), "{:?}", texts(&out));
    wait_statuses(&cluster, 2, &online);

    // A member that joins without the update is behind too (J6): the join fails and rolls
    // back.
    let dir = tempfile::tempdir().unwrap();
    let c4 = Microd::spawn(&dir.path().join("c4"), OLD);
    let out = c4.ctl(&["waitready", "--timeout", "120"]);
    assert!(out.status.success(), "{:?}", texts(&out));
    let token = cluster.ctl_ok(0, &["tokens", "add", "c4"]);
    let out = c4.ctl(&["init", "c4", &free_address(), "--token", token.trim()]);
    let (_, stderr) = texts(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("This node's version is behind, please upgrade"),
        "{stderr}\nlog:\n{}",
        c4.log_text()
    );
    let out = c4.ctl(&["cluster", "list"]);
    assert_eq!(
        texts(&out).1.trim(),
        "Error: Database is not yet initialized"
    );
    wait_statuses(&cluster, 0, &online);

    for i in 0..3 {
        cluster.stop(i);
    }
}

#[test]
fn patch_global_sql_runs_once_and_a_failing_one_stops_the_start() {
    let mut cluster = Cluster::start(2, HEARTBEAT);
    let patch = cluster.state_dirs[0].join("patch.global.sql");

    cluster.stop(0);
    std::fs::write(
        &patch,
        "-- an operator's fix; with a ; in a comment\n\
         INSERT INTO extended_table (key, value) VALUES ('patched', 'one; two');\n\
         CREATE TABLE patch_table (id INTEGER PRIMARY KEY, note TEXT NOT NULL);\n\
         INSERT INTO patch_table (note) VALUES ('from the patch');\n",
    )
    .unwrap();
    cluster.restart(0);
    assert!(!patch.exists(), "patch.global.sql was not deleted");
    for i in 0..2 {
        assert_eq!(
            cluster.select(i, "SELECT value FROM extended_table WHERE key = 'patched'"),
            vec![serde_json::json!(["one; two"])]
        );
        assert_eq!(
            cluster.select(i, "SELECT note FROM patch_table"),
            vec![serde_json::json!(["from the patch"])]
        );
    }

    // Applied once: a second start does not run it again.
    cluster.stop(0);
    cluster.restart(0);
    assert_eq!(
        cluster.select(1, "SELECT count(*) FROM patch_table"),
        vec![serde_json::json!([1])]
    );

    // A failing statement: nothing of the file is applied, the database does not open, and
    // microd exits 1 with the error; the file stays for the operator to fix.
    cluster.stop(0);
    std::fs::write(
        &patch,
        "INSERT INTO patch_table (note) VALUES ('not applied');\nUPDATE no_such_table SET x = 1;\n",
    )
    .unwrap();
    let from = start(&mut cluster, 0, OLD);
    let mut failed = cluster.members[0].take().unwrap();
    assert_eq!(failed.wait_exit(), 1, "log:\n{}", failed.log_text());
    let expected = format!(
        "Error: Failed to execute queries from {}: no such table: no_such_table",
        patch.display()
    );
    assert!(
        log_since(&cluster, 0, from).contains(&expected),
        "{expected} missing from:\n{}",
        failed.log_text()
    );
    drop(failed);
    assert!(patch.exists());

    // Without the file, the member starts again; nothing of the failed patch was applied.
    std::fs::remove_file(&patch).unwrap();
    cluster.restart(0);
    assert_eq!(
        cluster.select(1, "SELECT count(*) FROM patch_table"),
        vec![serde_json::json!([1])]
    );
    for i in 0..2 {
        cluster.stop(i);
    }
}
