//! [`App`]: the handle an embedding program (and every binding) holds for one member.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;

use crate::client::Client;
use crate::daemon::{self, Running};
use crate::state_dir::StateDir;
use crate::types::Server;
use crate::{Error, ErrorKind, Result, certs, runtime};

/// The default interval between heartbeat rounds.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How often `ready` polls the daemon.
const READY_POLL: Duration = Duration::from_millis(500);

/// Where a member keeps its state and how its control socket is set up.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// The state directory; `None` takes the `STATE_DIR` environment variable.
    pub state_dir: Option<PathBuf>,
    /// The group owning `control.socket`; `None` takes `SOCKET_GROUP`, else the process group.
    pub socket_group: Option<String>,
}

/// What the daemon runs with (SPEC §1.2).
#[derive(Clone, Debug, Default)]
pub struct DaemonArgs {
    /// The application version, reported by `GET /core/1.0`. Required.
    pub version: String,
    /// Interval between heartbeat rounds; zero means [`DEFAULT_HEARTBEAT_INTERVAL`].
    pub heartbeat_interval: Duration,
    /// The application's API extensions, in order (SPEC §11.4).
    pub api_extensions: Vec<String>,
    /// The application's schema updates, SQL scripts in order (SPEC §11.3).
    pub schema_updates: Vec<String>,
    /// Raft timings and log compaction; the defaults suit most clusters.
    pub raft: crate::db::RaftSettings,
}

/// One cluster member: its state directory and, while [`App::start`] runs, its daemon.
///
/// ```no_run
/// # async fn demo() -> microcluster::Result<()> {
/// use microcluster::{App, Args, DaemonArgs};
/// let app = App::new(Args { state_dir: Some("/tmp/c1".into()), ..Default::default() })?;
/// app.start(DaemonArgs { version: "1.0".into(), ..Default::default() }).await?;
/// # Ok(()) }
/// ```
pub struct App {
    state_dir: StateDir,
    socket_group: Option<String>,
    running: Arc<Mutex<Option<Running>>>,
}

impl App {
    /// Creates the state directory layout (SPEC §2) and contacts nothing.
    pub fn new(args: Args) -> Result<App> {
        let state_dir = args
            .state_dir
            .or_else(|| {
                std::env::var_os("STATE_DIR")
                    .filter(|dir| !dir.is_empty())
                    .map(PathBuf::from)
            })
            .ok_or_else(|| Error::invalid("Missing state directory"))?;
        let socket_group = args.socket_group.or_else(|| {
            std::env::var("SOCKET_GROUP")
                .ok()
                .filter(|group| !group.is_empty())
        });
        Ok(App {
            state_dir: StateDir::open(state_dir)?,
            socket_group,
            running: Arc::new(Mutex::new(None)),
        })
    }

    /// The member's state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state_dir
    }

    /// Runs the daemon until it is shut down (by [`App::stop`] or `POST
    /// /core/control/shutdown`). Installs no signal handlers. Returns `Ok` after a clean stop.
    pub async fn start(&self, args: DaemonArgs) -> Result<()> {
        let state_dir = self.state_dir.clone();
        let socket_group = self.socket_group.clone();
        let running = self.running.clone();
        let result = runtime::run(async move {
            daemon::run(state_dir, socket_group, args, |handle| {
                *running
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
            })
            .await
        })
        .await;
        *self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        result
    }

    /// Shuts the daemon down (SPEC §15) and waits until [`App::start`] has returned. A daemon
    /// started by another process on this state directory is asked through its control socket.
    pub async fn stop(&self) -> Result<()> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|running| (running.daemon.clone(), running.stopped.clone()));
        match running {
            Some((daemon, mut stopped)) => {
                runtime::run(async move {
                    daemon.stop().await?;
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                    Ok(())
                })
                .await
            }
            None => {
                let client = self.local_client();
                runtime::run(async move {
                    client
                        .query::<Value>(Method::POST, "/core/control/shutdown", None)
                        .await
                        .map(|_| ())
                })
                .await
            }
        }
    }

    /// Waits until the daemon answers `GET /core/1.0/ready`, polling every 500 ms; `None`
    /// waits forever.
    pub async fn ready(&self, timeout: Option<Duration>) -> Result<()> {
        let client = self
            .local_client()
            .with_timeout(READY_POLL.max(Duration::from_secs(2)));
        runtime::run(async move {
            let deadline = timeout.map(|timeout| Instant::now() + timeout);
            loop {
                if client
                    .query::<Value>(Method::GET, "/core/1.0/ready", None)
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                if deadline.is_some_and(|deadline| Instant::now() + READY_POLL > deadline) {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "Timed out waiting for the daemon to be ready",
                    ));
                }
                tokio::time::sleep(READY_POLL).await;
            }
        })
        .await
    }

    /// `GET /core/1.0` over the control socket.
    pub async fn status(&self) -> Result<Server> {
        let client = self.local_client();
        runtime::run(async move { client.query(Method::GET, "/core/1.0", None).await }).await
    }

    /// A client of the member at `address` over mTLS, presenting this member's `server.crt`
    /// and pinning `server_cert_pem`, or this member's `cluster.crt` when `None`.
    pub fn remote_client(&self, address: &str, server_cert_pem: Option<&str>) -> Result<Client> {
        let identity =
            certs::load_pair(&self.state_dir.server_cert(), &self.state_dir.server_key())?;
        let pinned = match server_cert_pem {
            Some(pem) => pem.to_string(),
            None => std::fs::read_to_string(self.state_dir.cluster_cert()).map_err(|err| {
                Error::from(err).context("Failed to read the cluster certificate: ")
            })?,
        };
        Client::remote(address, &pinned, Some(&identity))
    }

    /// A client of this member's daemon over its control socket.
    pub fn local_client(&self) -> Client {
        Client::unix(self.state_dir.control_socket())
    }
}
