//! Helpers shared by the project's tests: core's unit tests and, through the `test-support`
//! feature, the acceptance tests and the C ABI's tests. Not part of the library's API.

use crate::sync;

/// A free TCP address on 127.0.0.1 (the port is released before it is returned), never one
/// this test process was given before: the kernel may hand a just-released port out again,
/// and two members of one test must not share an address.
pub fn free_address() -> String {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = sync::lock(&GIVEN);
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if !given.contains(&port) {
            given.push(port);
            return format!("127.0.0.1:{port}");
        }
    }
}

/// A member started in this process on a temporary state directory (core's unit tests).
#[cfg(test)]
pub(crate) struct Member {
    /// The member's app.
    pub app: std::sync::Arc<crate::App>,
    /// The task running the daemon; it ends when the daemon stops.
    pub task: tokio::task::JoinHandle<crate::Result<()>>,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl Member {
    /// Starts a member on `dir` (not initialised unless `dir` is) and waits until it is ready.
    pub async fn start(dir: tempfile::TempDir) -> Member {
        let app = std::sync::Arc::new(
            crate::App::new(crate::Args {
                state_dir: Some(dir.path().into()),
                ..Default::default()
            })
            .unwrap(),
        );
        let runner = app.clone();
        let task = tokio::spawn(async move {
            runner
                .start(crate::DaemonArgs {
                    version: "1.0".into(),
                    ..Default::default()
                })
                .await
        });
        app.ready(Some(std::time::Duration::from_secs(60)))
            .await
            .unwrap();
        Member {
            app,
            task,
            _dir: dir,
        }
    }

    /// Stops the member and checks that its daemon ended without an error.
    pub async fn stop(self) {
        self.app.stop().await.unwrap();
        self.task.await.unwrap().unwrap();
    }
}
