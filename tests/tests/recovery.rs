//! Quorum-loss recovery (SPEC §14, `microctl cluster edit`): scenario 3 of SPEC §18 against
//! real `microd` processes, and the refusals while a member runs. Heartbeats run every second
//! instead of 2 s; ports are free ports instead of 900N and 800N.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use microcluster_it::{Cluster, Microd, binary, free_address, texts, wait_until};
use serde::{Deserialize, Serialize};

const HEARTBEAT: &[&str] = &["--heartbeat", "1s"];

/// One entry of `cluster list --local -f yaml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LocalMember {
    id: u64,
    name: String,
    address: String,
    role: String,
}

/// `microctl --state-dir <dir> cluster edit` with `input` on stdin (not a terminal).
fn cluster_edit(state_dir: &Path, input: &str) -> Output {
    let mut child = Command::new(binary("microctl"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(["cluster", "edit"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run microctl");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait for microctl")
}

/// The local view of member `i`, sorted by name.
fn local_view(cluster: &Cluster, i: usize) -> Vec<LocalMember> {
    let yaml = cluster.ctl_ok(i, &["cluster", "list", "--local", "-f", "yaml"]);
    let mut members: Vec<LocalMember> = serde_yaml_ng::from_str(&yaml).unwrap();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
}

/// `members cN` as (name, address, role, status).
fn members(cluster: &Cluster, i: usize) -> Vec<(String, String, String, String)> {
    let out = cluster.ctl(i, &["cluster", "list", "-f", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let field = |key: &str| m[key].as_str().unwrap_or_default().to_string();
            (
                field("name"),
                field("address"),
                field("role"),
                field("status"),
            )
        })
        .collect()
}

fn backups(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("db_backup.") && name.ends_with(".tar.gz"))
        .collect()
}

/// Starts the stopped members `indexes` all at once, then waits until each is ready.
fn start_together(cluster: &mut Cluster, indexes: &[usize]) {
    let extra = [&["-v"], HEARTBEAT].concat();
    for &i in indexes {
        assert!(cluster.members[i].is_none(), "c{} is running", i + 1);
        cluster.members[i] = Some(Microd::spawn(&cluster.state_dirs[i], &extra));
    }
    for &i in indexes {
        let out = cluster.ctl(i, &["waitready", "--timeout", "120"]);
        assert!(
            out.status.success(),
            "c{} did not become ready: {:?}\nlog:\n{}",
            i + 1,
            texts(&out),
            cluster.log(i)
        );
    }
}

#[test]
fn recover() {
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start(5, HEARTBEAT);
    for i in 0..5 {
        cluster.stop(i);
    }

    // 1. Roles voter, voter, spare, spare, spare and new addresses, through `cluster edit`.
    let mut edited = local_view(&cluster, 0);
    assert_eq!(edited.len(), 5);
    let roles = ["voter", "voter", "spare", "spare", "spare"];
    for (member, role) in edited.iter_mut().zip(roles) {
        member.role = role.to_string();
        member.address = free_address();
    }
    let out = cluster_edit(
        &cluster.state_dirs[0],
        &serde_yaml_ng::to_string(&edited).unwrap(),
    );
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "cluster edit failed: {stderr}");
    let tarball = cluster.state_dirs[0].join("recovery_db.tar.gz");
    let path = tarball.display();
    assert_eq!(
        stdout,
        format!(
            "Cluster changes applied; new database state saved to {path}\n\n\
             *Before* starting any cluster member, copy {path} to {path} on all remaining cluster members.\n\n\
             microd will load this file during startup.\n"
        )
    );
    assert!(tarball.exists());
    assert_eq!(backups(&cluster.state_dirs[0]).len(), 1);

    // 2. The tarball goes to c2; c1 and c2 start together.
    std::fs::rename(&tarball, cluster.state_dirs[1].join("recovery_db.tar.gz")).unwrap();
    start_together(&mut cluster, &[0, 1]);
    for (i, member) in edited.iter().enumerate() {
        cluster.addresses[i] = member.address.clone();
    }

    // 3. c1 and c2 are ONLINE voters, c3..c5 spares, all at their new addresses.
    let expected = |status: &str, i: usize| {
        let m = &edited[i];
        (
            m.name.clone(),
            m.address.clone(),
            m.role.clone(),
            status.to_string(),
        )
    };
    wait_until("c1 and c2 are online voters at their new addresses", || {
        let rows = members(&cluster, 0);
        rows.len() == 5
            && rows[0] == expected("ONLINE", 0)
            && rows[1] == expected("ONLINE", 1)
            && (2..5).all(|i| {
                rows[i].0 == edited[i].name
                    && rows[i].1 == edited[i].address
                    && rows[i].2 == "spare"
            })
    });
    let rows = members(&cluster, 0);
    for (i, row) in rows.iter().enumerate().skip(2) {
        assert_eq!(*row, expected("UNREACHABLE", i));
    }
    assert_eq!(
        local_view(&cluster, 1)
            .iter()
            .map(|m| &m.role)
            .collect::<Vec<_>>(),
        roles
    );

    // 4. daemon.yaml has the new address; c2 consumed the tarball and backed its database up.
    let daemon_yaml = std::fs::read_to_string(cluster.state_dirs[0].join("daemon.yaml")).unwrap();
    assert!(
        daemon_yaml.contains(&format!("address: {}\n", edited[0].address)),
        "{daemon_yaml}"
    );
    assert!(!cluster.state_dirs[1].join("recovery_db.tar.gz").exists());
    assert!(!cluster.state_dirs[1].join("recovery_db").exists());
    assert_eq!(backups(&cluster.state_dirs[1]).len(), 1);

    // A write after recovery replicates between c1 and c2, both ways.
    cluster.ctl_ok(
        0,
        &[
            "sql",
            "INSERT INTO extended_table (key, value) VALUES ('after', 'recovery')",
        ],
    );
    wait_until("c2 has the write of c1", || {
        cluster
            .sql(1, "SELECT value FROM extended_table WHERE key = 'after'")
            .is_ok_and(|r| {
                r["Results"][0]["rows"]
                    .as_array()
                    .is_some_and(|rows| rows.len() == 1)
            })
    });
    cluster.ctl_ok(
        1,
        &[
            "sql",
            "INSERT INTO extended_table (key, value) VALUES ('from', 'c2')",
        ],
    );
    wait_until("c1 has the write of c2", || {
        cluster
            .sql(0, "SELECT value FROM extended_table WHERE key = 'from'")
            .is_ok_and(|r| {
                r["Results"][0]["rows"]
                    .as_array()
                    .is_some_and(|rows| rows.len() == 1)
            })
    });

    cluster.stop(0);
    cluster.stop(1);
    eprintln!("recover scenario took {:?}", started.elapsed());
}

#[test]
fn recovery_is_refused_while_a_member_runs() {
    let mut cluster = Cluster::start(2, HEARTBEAT);
    let view = local_view(&cluster, 0);
    let yaml = serde_yaml_ng::to_string(&view).unwrap();

    // The member's own daemon runs.
    let out = cluster_edit(&cluster.state_dirs[0], &yaml);
    assert!(!out.status.success());
    let socket = cluster.state_dirs[0].join("control.socket");
    assert_eq!(
        texts(&out).1,
        format!("Error: Daemon is running (socket path exists: {socket:?})\n")
    );

    // Another member runs.
    cluster.stop(0);
    let out = cluster_edit(&cluster.state_dirs[0], &yaml);
    assert!(!out.status.success());
    assert_eq!(
        texts(&out).1,
        format!(
            "Error: Contacted cluster member at {:?}; please shut down all cluster members\n",
            cluster.addresses[1]
        )
    );
    // Nothing was changed.
    assert!(!cluster.state_dirs[0].join("recovery_db.tar.gz").exists());
    assert!(backups(&cluster.state_dirs[0]).is_empty());
    assert_eq!(local_view(&cluster, 0).len(), 2);

    cluster.stop(1);
}

/// `microctl --state-dir <dir> cluster edit` on a terminal (through util-linux `script`),
/// answering `answer` and editing with `editor`.
fn cluster_edit_on_terminal(state_dir: &Path, answer: &str, editor: &Path) -> Output {
    let command = format!(
        "{} --state-dir {} cluster edit",
        binary("microctl").display(),
        state_dir.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("EDITOR", editor)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    stdin.write_all(answer.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait for script")
}

#[test]
fn cluster_edit_on_a_terminal() {
    let mut cluster = Cluster::start(1, HEARTBEAT);
    cluster.stop(0);
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.yaml");
    let address = free_address();
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\ncp \"$1\" {seen:?}\nsed -i 's/address: .*/address: {address}/' \"$1\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let prompt = "You should only run this command if:\r\n \
                  - A quorum of cluster members is permanently lost\r\n \
                  - You are *absolutely* sure all microd instances are stopped\r\n \
                  - This instance has the most up to date database\r\n\r\n\
                  Do you want to proceed? (yes/no): ";

    // Any answer but `yes` aborts.
    let out = cluster_edit_on_terminal(&cluster.state_dirs[0], "no\n", &editor);
    let (stdout, _) = texts(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "{prompt}Cluster edit aborted; no changes made\r\n"
        )),
        "{stdout:?}"
    );
    assert!(!seen.exists());
    assert!(!cluster.state_dirs[0].join("recovery_db.tar.gz").exists());

    // `yes` opens the editor on the local view under the comment block.
    let out = cluster_edit_on_terminal(&cluster.state_dirs[0], "yes\n", &editor);
    let (stdout, _) = texts(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Cluster changes applied; new database state saved to "),
        "{stdout:?}"
    );
    let shown = std::fs::read_to_string(&seen).unwrap();
    assert!(shown.starts_with("# "), "{shown}");
    for role in ["voter", "stand-by", "spare"] {
        assert!(shown.contains(&format!("#  {role} ")), "{shown}");
    }
    assert!(shown.contains("name: c1\n"), "{shown}");
    let view = local_view(&cluster, 0);
    assert_eq!(view[0].address, address);
    assert_eq!(view[0].role, "voter");

    // The member starts at its new address.
    cluster.addresses[0] = address.clone();
    cluster.restart(0);
    let rows = members(&cluster, 0);
    assert_eq!(
        rows,
        vec![("c1".into(), address, "voter".into(), "ONLINE".into())]
    );
    cluster.stop(0);
}
