//! Helpers of the acceptance tests: running `microd` and `microctl` as real processes on
//! temporary state directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for a condition before failing (generous: CI machines are loaded).
pub const WAIT: Duration = Duration::from_secs(60);

/// The path of a binary of the workspace (`microd`, `microctl`), built next to the test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{path:?} is missing: build the workspace (cargo build --workspace) before the tests"
    );
    path
}

/// Waits until `condition` holds, polling; panics with `what` after [`WAIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `microd` process; killed when dropped if still running.
pub struct Microd {
    /// The process.
    pub child: Child,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Microd {
    /// Starts `microd --state-dir <state_dir> <extra…>` with stderr to a log file.
    pub fn spawn(state_dir: &Path, extra: &[&str]) -> Microd {
        Microd::spawn_with_env(state_dir, extra, &[])
    }

    /// [`Microd::spawn`] with extra environment variables.
    pub fn spawn_with_env(state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Microd {
        std::fs::create_dir_all(state_dir).expect("create the state dir");
        let log = state_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let child = Command::new(binary("microd"))
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start microd");
        Microd {
            child,
            state_dir: state_dir.to_path_buf(),
            log,
        }
    }

    /// Runs `microctl --state-dir <its dir> <args…>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        microctl(&self.state_dir, args)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll microd") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "microd did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Microd {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `microctl --state-dir <state_dir> <args…>`.
pub fn microctl(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(binary("microctl"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run microctl")
}

/// The stdout and stderr of an output, as text.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub use microcluster::test_support::free_address;

/// A cluster of `microd` processes on one temporary directory, named `c1`, `c2`, ….
pub struct Cluster {
    /// The members, in name order; `None` while a member is stopped.
    pub members: Vec<Option<Microd>>,
    /// Each member's state directory.
    pub state_dirs: Vec<PathBuf>,
    /// Each member's address.
    pub addresses: Vec<String>,
    /// Extra `microd` arguments.
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` members with `-v` and `extra` arguments, bootstraps `c1` and joins the
    /// others.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        let extra = [&["-v"], extra].concat();
        let dir = tempfile::tempdir().expect("temp dir");
        let state_dirs: Vec<PathBuf> = (1..=size)
            .map(|i| dir.path().join(format!("c{i}")))
            .collect();
        let addresses = (0..size).map(|_| free_address()).collect();
        let mut cluster = Cluster {
            members: Vec::new(),
            state_dirs,
            addresses,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        for i in 0..size {
            let member = cluster.spawn(i);
            cluster.members.push(Some(member));
        }
        let address = cluster.addresses[0].clone();
        cluster.ctl_ok(0, &["init", "c1", &address, "--bootstrap"]);
        for i in 1..size {
            let name = format!("c{}", i + 1);
            let token = cluster.ctl_ok(0, &["tokens", "add", &name]);
            let address = cluster.addresses[i].clone();
            cluster.ctl_ok(i, &["init", &name, &address, "--token", token.trim()]);
        }
        cluster
    }

    /// Starts member `i` (index from 0) and waits until it is ready.
    fn spawn(&self, i: usize) -> Microd {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let member = Microd::spawn(&self.state_dirs[i], &extra);
        let out = member.ctl(&["waitready", "--timeout", "120"]);
        assert!(
            out.status.success(),
            "c{} did not become ready: {:?}\nlog:\n{}",
            i + 1,
            texts(&out),
            member.log_text()
        );
        member
    }

    /// Starts member `i` again after it was stopped or killed.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "c{} is running", i + 1);
        let member = self.spawn(i);
        self.members[i] = Some(member);
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut member) = self.members[i].take() {
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }

    /// Stops member `i` cleanly (`microctl shutdown`).
    pub fn stop(&mut self, i: usize) {
        let out = self.ctl(i, &["shutdown"]);
        assert!(out.status.success(), "{:?}", texts(&out));
        if let Some(mut member) = self.members[i].take() {
            assert_eq!(member.wait_exit(), 0, "log:\n{}", member.log_text());
        }
    }

    /// Runs `microctl` against member `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        microctl(&self.state_dirs[i], args)
    }

    /// Runs `microctl` against member `i`, asserts success and returns stdout.
    pub fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.ctl(i, args);
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "microctl {args:?} on c{} failed: {stderr}\nlog:\n{}",
            i + 1,
            self.log(i)
        );
        stdout
    }

    /// Member `i`'s log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.state_dirs[i].with_extension("log")).unwrap_or_default()
    }

    /// `POST /core/internal/sql` on member `i` over its control socket.
    pub fn sql(&self, i: usize, query: &str) -> microcluster::Result<serde_json::Value> {
        let client = microcluster::Client::unix(self.state_dirs[i].join("control.socket"));
        let body = serde_json::json!({ "query": query });
        microcluster::runtime::block_on(async move {
            client
                .query(
                    microcluster::client::Method::POST,
                    "/core/internal/sql",
                    Some(&body),
                )
                .await
        })
    }

    /// The rows of a query on member `i`.
    pub fn select(&self, i: usize, query: &str) -> Vec<serde_json::Value> {
        let result = self
            .sql(i, query)
            .unwrap_or_else(|err| panic!("{query} on c{}: {err}", i + 1));
        result["Results"][0]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `cluster list -f json` on member `i`, as (name, role, status) rows.
    pub fn members_status(&self, i: usize) -> Vec<(String, String, String)> {
        let json = self.ctl_ok(i, &["cluster", "list", "-f", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&json).expect("JSON from cluster list");
        rows.as_array()
            .expect("a JSON array")
            .iter()
            .map(|m| {
                let field = |key: &str| m[key].as_str().unwrap_or_default().to_string();
                (field("name"), field("role"), field("status"))
            })
            .collect()
    }

    /// The SQL dump of member `i`.
    pub fn dump(&self, i: usize) -> String {
        self.ctl_ok(i, &["sql", ".dump"])
    }

    /// The member that currently logs itself as Raft leader, among the running ones.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.members[i].is_some()
                && self
                    .log(i)
                    .lines()
                    .rev()
                    .find(|line| line.contains("Raft: this member is now"))
                    .is_some_and(|line| line.contains("now Leader"))
        })
    }
}
