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
    child: Child,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Microd {
    /// Starts `microd --state-dir <state_dir> <extra…>` with stderr to a log file.
    pub fn spawn(state_dir: &Path, extra: &[&str]) -> Microd {
        std::fs::create_dir_all(state_dir).expect("create the state dir");
        let log = state_dir.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(binary("microd"))
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
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
