//! Cluster membership across `microd` processes (issue 4): tokens and their bad input, hooks
//! where SPEC §10 says, removal of a follower and of the leader, and the rollback of a join
//! whose PreJoin fails.

use microcluster_it::{Cluster, Microd, free_address, texts, wait_until};

/// Heartbeats every second, to keep the tests short.
const HEARTBEAT_1S: &[&str] = &["--heartbeat", "1s"];

/// The hook lines a member logged, in order, without timestamps.
fn hook_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            line.split_once("microd: ")
                .map(|(_, rest)| rest.to_string())
        })
        .filter(|line| line.contains(" hook: "))
        .collect()
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|line| line.starts_with(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
}

#[test]
fn hooks_run_where_and_when_the_spec_says() {
    let cluster = Cluster::start(3, &[]);
    let c1 = hook_lines(&cluster.log(0));
    let c2 = hook_lines(&cluster.log(1));
    let c3 = hook_lines(&cluster.log(2));

    // The bootstrapping member.
    assert!(position(&c1, "OnStart hook") < position(&c1, "PreInit hook: c1 bootstrap=true"));
    assert!(position(&c1, "PreInit hook") < position(&c1, "PostBootstrap hook: c1"));
    assert!(position(&c1, "PostBootstrap hook") < position(&c1, "OnNewMember hook: c1 sees c2"));
    assert!(
        position(&c1, "OnNewMember hook: c1 sees c2")
            < position(&c1, "OnNewMember hook: c1 sees c3")
    );
    // Joiners: PreInit, then PreJoin, then PostJoin; never PostBootstrap.
    for (lines, name) in [(&c2, "c2"), (&c3, "c3")] {
        let pre_init = position(lines, &format!("PreInit hook: {name} bootstrap=false"));
        let pre_join = position(lines, &format!("PreJoin hook: {name}"));
        let post_join = position(lines, &format!("PostJoin hook: {name}"));
        assert!(pre_init < pre_join && pre_join < post_join, "{lines:#?}");
        assert!(
            !lines.iter().any(|l| l.starts_with("PostBootstrap")),
            "{lines:#?}"
        );
    }
    // c2 saw c3 join; nobody sees itself join.
    position(&c2, "OnNewMember hook: c2 sees c3");
    assert!(!c3.iter().any(|l| l.starts_with("OnNewMember")), "{c3:#?}");
    // OnNewMember ran on c1 before c3's PostJoin returned: c3's init only returns after it.
    let members = cluster.ctl_ok(2, &["cluster", "list", "-f", "json"]);
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 3);
    for member in members.as_array().unwrap() {
        assert_eq!(member["role"], "voter", "{member}");
        assert_eq!(member["status"], "ONLINE", "{member}");
    }
}

#[test]
fn tokens_refuse_bad_input_clearly() {
    let cluster = Cluster::start(1, &[]);
    for bad in [
        "",
        "invalid_name",
        "invalid_",
        "_invalid",
        "invalid.",
        ".invalid",
        "c/1",
    ] {
        let out = cluster.ctl(0, &["tokens", "add", bad]);
        let (_, stderr) = texts(&out);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            stderr.starts_with(&format!("Error: Token name {bad:?} is not a valid FQDN: ")),
            "{bad:?}: {stderr}"
        );
    }
    cluster.ctl_ok(0, &["tokens", "add", "c2"]);
    let out = cluster.ctl(0, &["tokens", "add", "c2"]);
    assert_eq!(
        texts(&out).1.trim(),
        "Error: A join token with name \"c2\" already exists"
    );
    let out = cluster.ctl(0, &["tokens", "add", "c1"]);
    assert_eq!(
        texts(&out).1.trim(),
        "Error: A cluster member with name \"c1\" already exists"
    );
    let listed = cluster.ctl_ok(0, &["tokens", "list", "-f", "csv"]);
    assert!(listed.starts_with("c2,,"), "{listed}");
    cluster.ctl_ok(0, &["tokens", "revoke", "c2"]);
    let out = cluster.ctl(0, &["tokens", "revoke", "c2"]);
    assert_eq!(texts(&out).1.trim(), "Error: CoreTokenRecord not found");
    assert_eq!(cluster.ctl_ok(0, &["tokens", "list", "-f", "csv"]), "");
}

#[test]
fn joins_with_bad_tokens_fail_clearly_and_leave_the_joiner_able_to_join() {
    let cluster = Cluster::start(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let joiner = Microd::spawn(&dir.path().join("c2"), &["-v"]);
    assert!(
        joiner
            .ctl(&["waitready", "--timeout", "60"])
            .status
            .success()
    );
    let address = free_address();
    let init = |token: &str| {
        let out = joiner.ctl(&["init", "c2", &address, "--token", token]);
        (out.status.success(), texts(&out).1.trim().to_string())
    };

    let (ok, err) = init("not-base64!");
    assert!(!ok);
    assert!(err.starts_with("Error: Invalid join token: "), "{err}");

    // A token issued for another name is refused by the leader (403), and stays valid.
    let other = cluster.ctl_ok(0, &["tokens", "add", "c9"]);
    let (ok, err) = init(other.trim());
    assert!(!ok);
    assert_eq!(
        err,
        "Error: Joining member name \"c2\" does not match join token name \"c9\""
    );
    assert!(
        cluster
            .ctl_ok(0, &["tokens", "list", "-f", "csv"])
            .contains("c9,")
    );

    // A token whose secret is unknown.
    let revoked = cluster.ctl_ok(0, &["tokens", "add", "c2"]);
    cluster.ctl_ok(0, &["tokens", "revoke", "c2"]);
    let (ok, err) = init(revoked.trim());
    assert!(!ok);
    assert_eq!(err, "Error: CoreTokenRecord not found");

    // An unreachable address is named in the error.
    let token = cluster.ctl_ok(0, &["tokens", "add", "c2"]);
    let decoded = String::from_utf8(base64_decode(token.trim())).unwrap();
    let mut fields: serde_json::Value = serde_json::from_str(&decoded).unwrap();
    let dead = free_address();
    fields["join_addresses"] = serde_json::json!([dead]);
    let dead_token = base64_encode(fields.to_string().as_bytes());
    let (ok, err) = init(&dead_token);
    assert!(!ok);
    assert!(
        err.starts_with(&format!(
            "Error: Failed to join cluster with any of the 1 join addresses: {dead}: "
        )),
        "{err}"
    );

    // After all that, the real token still works, once.
    let (ok, err) = init(token.trim());
    assert!(ok, "{err}\n{}", joiner.log_text());
    let members = cluster.ctl_ok(0, &["cluster", "list", "-f", "csv"]);
    assert_eq!(members.lines().count(), 2, "{members}");
}

#[test]
fn prejoin_failure() {
    let cluster = Cluster::start(2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("c3");
    let mut failing = Microd::spawn_with_env(&state, &["-v"], &[("FAIL_PREJOIN", "1")]);
    assert!(
        failing
            .ctl(&["waitready", "--timeout", "60"])
            .status
            .success()
    );
    let address = free_address();
    let token = cluster.ctl_ok(0, &["tokens", "add", "c3"]);
    let out = failing.ctl(&["init", "c3", &address, "--token", token.trim()]);
    assert!(!out.status.success());
    assert_eq!(
        texts(&out).1.trim(),
        "Error: PreJoin failure requested via FAIL_PREJOIN"
    );
    // Every trace is gone: the joiner is un-initialised, the cluster has two members, no
    // truststore entry for c3 remains.
    let status = failing.ctl(&["status"]);
    assert!(
        texts(&status).0.contains("address: ''"),
        "{:?}",
        texts(&status)
    );
    assert!(
        failing
            .log_text()
            .contains("Member was reset (reason: init_failed)")
    );
    for i in 0..2 {
        let members = cluster.ctl_ok(i, &["cluster", "list", "-f", "csv"]);
        assert_eq!(members.lines().count(), 2, "{members}");
        assert!(!cluster.state_dirs[i].join("truststore/c3.yaml").exists());
    }
    failing.ctl(&["shutdown"]);
    assert_eq!(failing.wait_exit(), 0);

    // Without the failure, the same member joins with a new token.
    let joiner = Microd::spawn(&state, &["-v"]);
    assert!(
        joiner
            .ctl(&["waitready", "--timeout", "60"])
            .status
            .success()
    );
    let token = cluster.ctl_ok(0, &["tokens", "add", "c3"]);
    let out = joiner.ctl(&["init", "c3", &address, "--token", token.trim()]);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        texts(&out),
        joiner.log_text()
    );
    let members = cluster.ctl_ok(1, &["cluster", "list", "-f", "csv"]);
    assert_eq!(members.lines().count(), 3, "{members}");
}

#[test]
fn removing_a_follower_then_the_leader_leaves_a_working_cluster() {
    let mut cluster = Cluster::start(3, &[]);
    cluster
        .sql(0, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    let leader = cluster.leader().expect("a leader");
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let name = |i: usize| format!("c{}", i + 1);

    cluster.ctl_ok(leader, &["cluster", "remove", &name(follower)]);
    wait_until("the removed member is reset", || {
        texts(&cluster.ctl(follower, &["status"]))
            .0
            .contains("address: ''")
    });
    let out = cluster.ctl(follower, &["cluster", "list"]);
    assert_eq!(
        texts(&out).1.trim(),
        "Error: Database is not yet initialized"
    );
    for i in [leader, other] {
        assert!(
            !cluster.state_dirs[i]
                .join(format!("truststore/{}.yaml", name(follower)))
                .exists()
        );
    }

    // The leader removes itself, asked through the other member.
    cluster.ctl_ok(other, &["cluster", "remove", &name(leader)]);
    wait_until("the old leader is reset", || {
        texts(&cluster.ctl(leader, &["status"]))
            .0
            .contains("address: ''")
    });
    let members = cluster.ctl_ok(other, &["cluster", "list", "-f", "csv"]);
    assert_eq!(members.lines().count(), 1, "{members}");
    assert!(
        members.starts_with(&format!("{},", name(other))),
        "{members}"
    );
    wait_until("the last member writes alone", || {
        cluster
            .sql(other, "INSERT INTO t (id) VALUES (NULL)")
            .is_ok()
    });

    let out = cluster.ctl(other, &["cluster", "remove", &name(other)]);
    assert_eq!(
        texts(&out).1.trim(),
        "Error: Cannot leave a cluster with 1 members"
    );
    let out = cluster.ctl(other, &["cluster", "remove", "nobody"]);
    assert_eq!(
        texts(&out).1.trim(),
        "Error: No remote exists with the given name \"nobody\""
    );
    cluster.kill(follower);
    cluster.kill(leader);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The pid of member `i`, for signals.
fn pid(cluster: &Cluster, i: usize) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(cluster.members[i].as_ref().expect("running").pid() as i32)
}

#[test]
fn five_members_have_three_voters_and_a_lost_voter_is_replaced() {
    let mut cluster = Cluster::start(5, HEARTBEAT_1S);
    let listed = cluster.members_status(0);
    let count = |role: &str, listed: &[(String, String, String)]| {
        listed.iter().filter(|(_, r, _)| r == role).count()
    };
    assert_eq!(count("voter", &listed), 3, "{listed:?}");
    assert_eq!(count("stand-by", &listed), 2, "{listed:?}");

    // Kill a voter that is not the leader: a stand-by is promoted, the dead voter demoted.
    let leader = cluster.leader().expect("a leader");
    let victim = listed
        .iter()
        .position(|(name, role, _)| role == "voter" && *name != format!("c{}", leader + 1))
        .unwrap();
    cluster.kill(victim);
    let observer = (0..5).find(|&i| i != victim && i != leader).unwrap();
    wait_until("a stand-by replaces the lost voter", || {
        let listed = cluster.members_status(observer);
        let online_voters = listed
            .iter()
            .filter(|(_, role, status)| role == "voter" && status == "ONLINE")
            .count();
        let victim_role = &listed[victim].1;
        online_voters == 3 && victim_role == "spare"
    });
}

#[test]
fn a_paused_member_is_listed_unreachable_without_stalling_the_list() {
    let cluster = Cluster::start(3, HEARTBEAT_1S);
    let leader = cluster.leader().expect("a leader");
    let paused = (0..3).find(|&i| i != leader).unwrap();
    let asker = (0..3).find(|&i| i != leader && i != paused).unwrap();
    nix::sys::signal::kill(pid(&cluster, paused), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = std::time::Instant::now();
    let listed = cluster.members_status(asker);
    let took = started.elapsed();
    nix::sys::signal::kill(pid(&cluster, paused), nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(listed[paused].2, "UNREACHABLE", "{listed:?}");
    assert_eq!(listed[asker].2, "ONLINE", "{listed:?}");
    // Probes run in parallel with a 1.5 s timeout; this only guards against serial probes or
    // a probe without a timeout, with room for a loaded machine.
    assert!(
        took < std::time::Duration::from_secs(10),
        "cluster list took {took:?}"
    );
    eprintln!("cluster list with a paused member took {took:?}");
}

#[test]
fn heartbeats_repair_a_truststore_changed_behind_the_daemons_back() {
    let cluster = Cluster::start(3, HEARTBEAT_1S);
    let leader = cluster.leader().expect("a leader");
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let entry = cluster.state_dirs[follower].join(format!("truststore/c{}.yaml", leader + 1));
    std::fs::remove_file(&entry).unwrap();
    std::fs::write(
        cluster.state_dirs[follower].join("truststore/stranger.yaml"),
        "name: stranger\naddress: 127.0.0.1:1\ncertificate: nope\n",
    )
    .unwrap();
    wait_until("the heartbeat restores the truststore", || {
        entry.exists()
            && !cluster.state_dirs[follower]
                .join("truststore/stranger.yaml")
                .exists()
    });
}

#[test]
fn a_leader_that_shuts_down_hands_leadership_over_first() {
    let mut cluster = Cluster::start(3, HEARTBEAT_1S);
    cluster
        .sql(0, "CREATE TABLE h (id INTEGER PRIMARY KEY)")
        .unwrap();
    let leader = cluster.leader().expect("a leader");
    cluster.stop(leader);
    let log = cluster.log(leader);
    assert!(log.contains("Handing leadership over to"), "{log}");
    assert!(log.contains("is the leader now"), "{log}");
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    wait_until("a survivor leads", || {
        cluster.leader().is_some_and(|new| new != leader)
    });
    cluster
        .sql(survivor, "INSERT INTO h (id) VALUES (NULL)")
        .expect("the cluster keeps working");
}
