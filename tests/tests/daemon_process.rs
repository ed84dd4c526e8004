//! `microd` and `microctl` as real processes: start, readiness, status, the single-instance
//! rule, shutdown by command and by signal, and the CLI's error convention.

use microcluster_it::{Microd, binary, microctl, texts, wait_until};

#[test]
fn waitready_status_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("c1");
    let mut microd = Microd::spawn(&state, &["--heartbeat", "2s"]);
    let out = microd.ctl(&["waitready", "--timeout", "60"]);
    assert!(
        out.status.success(),
        "waitready failed: {:?}\nlog:\n{}",
        texts(&out),
        microd.log_text()
    );

    let out = microd.ctl(&["status"]);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "{stderr}");
    let status: serde_json::Value = serde_yaml_ng::from_str(&stdout).unwrap();
    // SPEC §2.3: an un-initialised member is not ready.
    assert_eq!(status["ready"], false);
    assert_eq!(status["address"], "");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        status["extensions"],
        serde_json::json!([
            "internal:runtime_extension_v1",
            "internal:rename_core_endpoints",
            "custom_extension_a_0",
            "custom_extension_a_1"
        ])
    );

    // No network listener before init (SPEC §17 l).
    let own_sockets = own_socket_inodes(microd.pid());
    let listens = ["tcp", "tcp6"].iter().any(|table| {
        let text = std::fs::read_to_string(format!("/proc/{}/net/{table}", microd.pid()))
            .unwrap_or_default();
        text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A = LISTEN), field 9 the socket inode.
            fields.get(3) == Some(&"0A")
                && fields
                    .get(9)
                    .is_some_and(|inode| own_sockets.iter().any(|own| own == inode))
        })
    });
    assert!(
        !listens,
        "an un-initialised daemon must hold no listening TCP socket"
    );

    let out = microd.ctl(&["shutdown"]);
    assert!(out.status.success(), "{:?}", texts(&out));
    assert_eq!(microd.wait_exit(), 0, "log:\n{}", microd.log_text());
    assert!(!state.join("control.socket").exists());
}

/// The TCP ports process `pid` listens on, read from /proc.
fn listening_ports(pid: u32) -> Vec<u16> {
    let own_sockets = own_socket_inodes(pid);
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 1 is the local address (hex IP:port), 3 the state (0A = LISTEN), 9 the inode.
            let listening = fields.get(3) == Some(&"0A");
            let ours = fields
                .get(9)
                .is_some_and(|inode| own_sockets.iter().any(|own| own == inode));
            if let (true, true, Some(local)) = (listening, ours, fields.get(1)) {
                let port = local
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

#[test]
fn an_initialised_member_serves_its_address_over_mtls_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("c1");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    // What bootstrap leaves behind: daemon.yaml, a Raft identity and the cluster certificate.
    let layout = microcluster::state_dir::StateDir::open(&state).unwrap();
    let config = microcluster::member_config::MemberConfig {
        name: "c1".into(),
        address: address.clone(),
        ..Default::default()
    };
    config.save(&layout.daemon_yaml()).unwrap();
    std::fs::write(layout.raft_identity(), "id: 1\n").unwrap();
    let cluster = microcluster::certs::generate("c1").unwrap();
    microcluster::certs::write_pair(&layout.cluster_cert(), &layout.cluster_key(), &cluster)
        .unwrap();

    let mut microd = Microd::spawn(&state, &[]);
    assert!(
        microd.ctl(&["waitready", "-t", "60"]).status.success(),
        "{}",
        microd.log_text()
    );
    assert_eq!(listening_ports(microd.pid()), vec![port]);
    let out = microd.ctl(&["status"]);
    let status: serde_json::Value = serde_yaml_ng::from_str(&texts(&out).0).unwrap();
    assert_eq!(
        (status["name"].as_str(), status["address"].as_str()),
        (Some("c1"), Some(address.as_str()))
    );

    // Plain HTTP on the TLS port gets no answer.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(&address).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /core/1.0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));

    assert!(microd.ctl(&["shutdown"]).status.success());
    assert_eq!(microd.wait_exit(), 0);
}

fn own_socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn second_microd_on_the_same_state_dir_fails_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("c1");
    let mut first = Microd::spawn(&state, &[]);
    assert!(
        first.ctl(&["waitready", "-t", "60"]).status.success(),
        "{}",
        first.log_text()
    );

    let mut second = Microd::spawn(&state, &[]);
    assert_eq!(second.wait_exit(), 1);
    let socket = state.join("control.socket");
    assert!(
        second.log_text().contains(&format!(
            "Error: Unix socket at {socket:?} is already running"
        )),
        "second log:\n{}",
        second.log_text()
    );
    assert!(first.is_running());
    assert!(first.ctl(&["status"]).status.success());
    assert!(first.ctl(&["shutdown"]).status.success());
    assert_eq!(first.wait_exit(), 0);
}

#[test]
fn stop_signals_shut_down_cleanly_and_sighup_is_ignored() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("c1");
        let mut microd = Microd::spawn(&state, &[]);
        assert!(
            microd.ctl(&["waitready", "-t", "60"]).status.success(),
            "{}",
            microd.log_text()
        );
        let pid = nix::unistd::Pid::from_raw(microd.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        assert!(
            microd.ctl(&["status"]).status.success(),
            "SIGHUP must not stop microd"
        );
        assert!(microd.is_running());
        nix::sys::signal::kill(pid, signal).unwrap();
        assert_eq!(
            microd.wait_exit(),
            0,
            "{signal}: log:\n{}",
            microd.log_text()
        );
        assert!(!state.join("control.socket").exists());
    }
}

#[test]
fn microctl_reports_errors_on_stderr_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("absent");

    let out = microctl(&state, &["status"]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with("Error: Failed to connect to the daemon at "),
        "{stderr}"
    );

    let out = microctl(&state, &["waitready", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        texts(&out).1,
        "Error: Timed out waiting for the daemon to be ready\n"
    );

    let out = microctl(&state, &["status", "extra-argument"]);
    assert_eq!(out.status.code(), Some(1), "a wrong argument count exits 1");
    let out = microctl(&state, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(1));

    let out = std::process::Command::new(binary("microctl"))
        .env_remove("STATE_DIR")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(texts(&out).1, "Error: Missing state directory\n");
}

#[test]
fn version_flags_print_the_version() {
    for name in ["microd", "microctl"] {
        let out = std::process::Command::new(binary(name))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(texts(&out).0, format!("{}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn waitready_waits_for_a_daemon_started_later() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("c1");
    std::fs::create_dir_all(&state).unwrap();
    let waiter = {
        let state = state.clone();
        std::thread::spawn(move || microctl(&state, &["waitready", "--timeout", "60"]))
    };
    // Start the daemon only once the waiter has begun polling.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let mut microd = Microd::spawn(&state, &[]);
    let out = waiter.join().unwrap();
    assert!(out.status.success(), "{:?}", texts(&out));
    wait_until("the status answers", || {
        microd.ctl(&["status"]).status.success()
    });
    assert!(microd.ctl(&["shutdown"]).status.success());
    assert_eq!(microd.wait_exit(), 0);
}
