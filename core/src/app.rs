//! [`App`]: the handle an embedding program (and every binding) holds for one member.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::Client;
use crate::daemon::{self, Running};
use crate::db::{ReadMode, Tx, tx};
use crate::state_dir::StateDir;
use crate::sync;
use crate::types::{ClusterMember, Control, Server, TokenRecord, TokenRequest};
use crate::{Error, ErrorKind, Result, certs, runtime};

/// The default interval between heartbeat rounds.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How long bootstrap and join may take (SPEC §16.2 gives the CLI 30 s; a join may wait for
/// a leader and a catch-up, so the library allows more).
const INIT_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// The application's lifecycle hooks (SPEC §10); none by default.
    pub hooks: crate::hooks::HookSet,
    /// The application's REST servers (SPEC §13); none by default.
    pub extension_servers: Vec<crate::extensions::ExtensionServer>,
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
                *sync::lock(&running) = Some(handle);
            })
            .await
        })
        .await;
        *sync::lock(&self.running) = None;
        result
    }

    /// Shuts the daemon down (SPEC §15) and waits until [`App::start`] has returned. A daemon
    /// started by another process on this state directory is asked through its control socket.
    pub async fn stop(&self) -> Result<()> {
        let running = sync::lock(&self.running)
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

    /// Bootstraps a new cluster with this member as its first voter (SPEC §7.2). `config` is
    /// handed to the init hooks.
    pub async fn new_cluster(
        &self,
        name: &str,
        address: &str,
        config: BTreeMap<String, String>,
    ) -> Result<()> {
        self.init(Control {
            bootstrap: true,
            config,
            address: address.to_string(),
            name: name.to_string(),
            ..Control::default()
        })
        .await
    }

    /// Joins the cluster that issued `token` (SPEC §7.3). When it returns, the member is
    /// online with its final role.
    pub async fn join_cluster(
        &self,
        name: &str,
        address: &str,
        token: &str,
        config: BTreeMap<String, String>,
    ) -> Result<()> {
        self.init(Control {
            join_token: token.to_string(),
            config,
            address: address.to_string(),
            name: name.to_string(),
            ..Control::default()
        })
        .await
    }

    async fn init(&self, control: Control) -> Result<()> {
        let body = to_json(&control)?;
        let client = self.local_client().with_timeout(INIT_TIMEOUT);
        runtime::run(async move {
            client
                .query::<Value>(Method::POST, "/core/control", Some(&body))
                .await
                .map(|_| ())
        })
        .await
    }

    /// Issues a join token for the member `name`, valid for `expire_after` (zero: forever).
    pub async fn new_join_token(&self, name: &str, expire_after: Duration) -> Result<String> {
        let request = TokenRequest {
            name: name.to_string(),
            expire_after: i64::try_from(expire_after.as_nanos()).unwrap_or(i64::MAX),
        };
        self.control(
            Method::POST,
            "/core/control/tokens",
            Some(to_json(&request)?),
        )
        .await
    }

    /// The join tokens that have not expired.
    pub async fn join_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.control(Method::GET, "/core/control/tokens", None)
            .await
    }

    /// Revokes the join token issued for `name`.
    pub async fn revoke_join_token(&self, name: &str) -> Result<()> {
        let path = format!("/core/1.0/tokens/{}", path_segment(name));
        self.control::<Value>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    /// The cluster members with their roles and status (SPEC §8.5).
    pub async fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        self.control(Method::GET, "/core/1.0/cluster", None).await
    }

    /// Removes the member `name` from the cluster (SPEC §9). `force` ignores the victim's
    /// failures; with `address`, it also removes orphans with that address.
    pub async fn remove_cluster_member(
        &self,
        name: &str,
        force: bool,
        address: Option<&str>,
    ) -> Result<()> {
        let path = crate::membership::removal_path(name, force, address);
        let client = self.local_client().with_timeout(INIT_TIMEOUT);
        runtime::run(async move {
            client
                .query::<Value>(Method::DELETE, &path, None)
                .await
                .map(|_| ())
        })
        .await
    }

    /// The members as this member's own `database/` has them (SPEC §14.1); works whether or
    /// not the daemon runs.
    pub fn local_members(&self) -> Result<Vec<crate::membership::local::LocalMember>> {
        crate::membership::local::local_members(&self.state_dir)
    }

    /// Quorum-loss recovery (SPEC §14.2), with every member's daemon stopped: rewrites this
    /// member's Raft membership to exactly `members` (the [`App::local_members`] list with
    /// edited roles and addresses; members cannot be added or removed) and returns the path of
    /// `recovery_db.tar.gz`. This member can start right away; every other surviving member
    /// needs a copy of the tarball in its state directory before it starts (SPEC §14.3).
    pub async fn recover_from_quorum_loss(
        &self,
        members: Vec<crate::membership::local::LocalMember>,
    ) -> Result<PathBuf> {
        let state_dir = self.state_dir.clone();
        runtime::run(async move { crate::membership::recovery::recover(&state_dir, members).await })
            .await
    }

    /// Runs `query` through the SQL API (SPEC §12) and returns `{"Results":[…]}`.
    pub async fn sql(&self, query: &str) -> Result<Value> {
        let body = serde_json::json!({ "query": query });
        self.control(Method::POST, "/core/internal/sql", Some(body))
            .await
    }

    /// Runs `f` as a serializable transaction on the replicated database, with linearizable
    /// reads and the default timeout (SPEC §11.1). The daemon must run in this process.
    ///
    /// `f` may run more than once (after conflicts with concurrent writers); only the run
    /// that returns `Ok` and commits counts.
    pub async fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.transaction_with(ReadMode::Linearizable, tx::DEFAULT_TIMEOUT, f)
            .await
    }

    /// [`App::transaction`] with an explicit read mode and timeout.
    pub async fn transaction_with<T, F>(&self, mode: ReadMode, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let state = self.daemon()?.state();
        runtime::run(async move { state.transaction_with(mode, timeout, f).await }).await
    }

    /// Sends `method path` (e.g. `GET`, `/1.0/hello?target=c2`) with an optional JSON body to
    /// this member's control socket and returns the answer's `metadata` (SPEC §1.3): the generic
    /// query of the bindings, for extension endpoints served on the control socket and the
    /// REST API alike. `method` is an HTTP method name in any case; an error answer becomes an
    /// [`Error`] with its status and message.
    pub async fn query(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::invalid(format!("Invalid HTTP method {method:?}")))?;
        self.control(method, path, body).await
    }

    /// The daemon running in this process, if any.
    pub(crate) fn daemon(&self) -> Result<Arc<crate::daemon::Daemon>> {
        sync::lock(&self.running)
            .as_ref()
            .map(|running| running.daemon.clone())
            .ok_or_else(|| Error::unavailable("The daemon is not running in this process"))
    }

    async fn control<T: DeserializeOwned + Send + 'static>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let client = self.local_client();
        let path = path.to_string();
        runtime::run(async move { client.query(method, &path, body.as_ref()).await }).await
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

fn to_json(value: &impl Serialize) -> Result<Value> {
    serde_json::to_value(value)
        .map_err(|err| Error::internal(format!("Failed to encode the request: {err}")))
}

/// Percent-encodes one path segment.
fn path_segment(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
