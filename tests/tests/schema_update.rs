//! `$SCHEMA_UPDATE` (SPEC §8.3): a member told by a heartbeat that the cluster has newer
//! schema versions runs that executable once, after a random delay of up to 30 s. Its own
//! test binary, because it sets the variable for every `microd` it starts.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use microcluster_it::{Cluster, Microd};

#[test]
fn a_member_behind_the_cluster_runs_schema_update() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = dir.path().join("schema-update.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho ran >> '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: this test binary has no other test, and no thread reads the environment yet.
    unsafe { std::env::set_var("SCHEMA_UPDATE", &script) };

    let mut cluster = Cluster::start(3, &["--heartbeat", "1s"]);

    // c1 comes back with one more schema update and waits for the others, whose rows are
    // now behind the highest versions the leader's heartbeats carry.
    cluster.stop(0);
    let extra = "CREATE TABLE upgrade_table (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL);";
    let args = ["-v", "--heartbeat", "1s", "--extra-schema-update", extra];
    cluster.members[0] = Some(Microd::spawn(&cluster.state_dirs[0], &args));

    // The follower among c2 and c3 gets heartbeats and runs the script once (the leader runs
    // the rounds and gets none).
    // The shell creates the file before it writes to it: wait for what it wrote.
    let deadline = Instant::now() + Duration::from_secs(90);
    let ran = loop {
        let ran = std::fs::read_to_string(&marker).unwrap_or_default();
        if !ran.is_empty() {
            break ran;
        }
        assert!(Instant::now() < deadline, "$SCHEMA_UPDATE did not run");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Once, by one member, which logged why.
    assert_eq!(ran, "ran\n");
    let why = "Schema versions (1, 2) differ from the cluster's (1, 3)";
    let logged: Vec<usize> = (1..3).filter(|&i| cluster.log(i).contains(why)).collect();
    assert_eq!(logged.len(), 1, "{:?}", (cluster.log(1), cluster.log(2)));
}
