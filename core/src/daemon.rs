//! The running daemon: what handlers share, start-up in the order of SPEC §7.5, and shutdown
//! (SPEC §15).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::DaemonArgs;
use crate::certs;
use crate::member_config::MemberConfig;
use crate::rest::{endpoints, router::Router, server, tls};
use crate::state_dir::StateDir;
use crate::trust::Truststore;
use crate::types::Server;
use crate::{Error, Result, api_extensions, control_socket};

/// How often the truststore directory is checked for changes made by others.
const TRUSTSTORE_POLL: Duration = Duration::from_secs(1);

/// How long the control socket waits for the shutdown answer to go out before closing.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of the replicated database, as reported by endpoints that need it (SPEC §5.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseState {
    /// The member has not bootstrapped or joined a cluster.
    NotInitialized,
    /// The database is opening or catching up.
    Starting,
    /// The member waits for `behind` other members to be upgraded.
    Waiting {
        /// How many other members run older versions.
        behind: usize,
    },
    /// The database serves reads and writes.
    Online,
    /// The database is stopped or failed.
    Offline,
}

impl DatabaseState {
    /// The state text of SPEC §5.8.
    pub fn text(&self) -> &'static str {
        match self {
            DatabaseState::NotInitialized => "Database is not yet initialized",
            DatabaseState::Starting => "Database is still starting",
            DatabaseState::Waiting { .. } => "Database is waiting for an upgrade",
            DatabaseState::Online => "Database is online",
            DatabaseState::Offline => "Database is offline",
        }
    }

    /// `Ok` when the database is online, else the 503 a database-backed endpoint answers.
    pub(crate) fn require_open(&self) -> Result<()> {
        match self {
            DatabaseState::Online => Ok(()),
            DatabaseState::Waiting { behind } => Err(Error::unavailable(format!(
                "{}: {behind} cluster members have not yet received the update",
                self.text()
            ))),
            other => Err(Error::unavailable(other.text())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    ShuttingDown,
}

/// Everything the handlers of one running daemon share.
pub(crate) struct Daemon {
    pub state_dir: StateDir,
    pub version: String,
    pub extensions: Vec<String>,
    pub truststore: Truststore,
    pub router: Router,
    member: RwLock<Option<MemberConfig>>,
    database: RwLock<DatabaseState>,
    phase: watch::Sender<Phase>,
    shutdown_started: AtomicBool,
    /// Cancelled to stop the network listeners and background tasks (not the control socket).
    services: CancellationToken,
    service_tasks: Mutex<Vec<JoinHandle<()>>>,
    finish: Mutex<Option<oneshot::Sender<oneshot::Receiver<()>>>>,
}

/// A daemon's handle for whoever started it: to stop it and to know when it has stopped.
pub(crate) struct Running {
    pub daemon: Arc<Daemon>,
    pub stopped: watch::Receiver<bool>,
}

impl Daemon {
    /// Whether start-up has finished and no shutdown has begun.
    pub fn is_ready(&self) -> bool {
        *self.phase.borrow() == Phase::Ready
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.phase.borrow() == Phase::ShuttingDown
    }

    /// The state of the database.
    pub fn database_state(&self) -> DatabaseState {
        *self
            .database
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn member(&self) -> Option<MemberConfig> {
        self.member
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// This member's address, once initialised.
    pub fn member_address(&self) -> Option<String> {
        self.member().map(|member| member.address)
    }

    /// The `Server` document of `GET /core/1.0`.
    pub fn server_info(&self) -> Server {
        let member = self.member();
        Server {
            name: member
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_else(certs::hostname),
            address: member.map(|m| m.address).unwrap_or_default(),
            version: self.version.clone(),
            ready: self.is_ready(),
            extensions: self.extensions.clone(),
        }
    }

    /// Starts the core HTTPS listener on the member address, presenting the cluster
    /// certificate.
    async fn start_core_listener(self: &Arc<Self>, address: &str) -> Result<()> {
        let cluster = certs::load_pair(
            &self.state_dir.cluster_cert(),
            &self.state_dir.cluster_key(),
        )?;
        let tls = tls::server_config(&cluster)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|err| Error::internal(format!("Failed to listen on {address:?}: {err}")))?;
        tracing::info!("Core listener started on {address}");
        let task = tokio::spawn(server::serve_network(
            self.clone(),
            listener,
            tls,
            self.services.child_token(),
        ));
        self.track(task);
        Ok(())
    }

    fn track(&self, task: JoinHandle<()>) {
        self.service_tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(task);
    }

    fn spawn_truststore_watcher(self: &Arc<Self>) {
        let daemon = self.clone();
        let stop = self.services.child_token();
        self.track(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(TRUSTSTORE_POLL) => {}
                }
                match daemon.truststore.reload_if_changed() {
                    Ok(true) => tracing::info!("Truststore reloaded after a change on disk"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!("Failed to reload the truststore: {err}"),
                }
            }
        }));
    }

    /// Marks the start of a shutdown (SPEC §15 steps 1–3): fails if one is already under way,
    /// waits for start-up to finish, then makes endpoints answer 503.
    pub async fn begin_shutdown(&self) -> Result<()> {
        if self.shutdown_started.swap(true, Ordering::SeqCst) {
            return Err(Error::unavailable("Shutdown already in progress"));
        }
        let mut phase = self.phase.subscribe();
        let _ = phase.wait_for(|phase| *phase != Phase::Starting).await;
        self.phase.send_replace(Phase::ShuttingDown);
        tracing::info!("Shutting down");
        Ok(())
    }

    /// Stops everything but the control socket (SPEC §15 step 5).
    pub async fn stop_services(&self) -> Result<()> {
        self.services.cancel();
        let tasks = std::mem::take(
            &mut *self
                .service_tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for task in tasks {
            if let Err(err) = task.await {
                tracing::warn!("A service task failed while stopping: {err}");
            }
        }
        let mut database = self
            .database
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *database != DatabaseState::NotInitialized {
            *database = DatabaseState::Offline;
        }
        Ok(())
    }

    /// Tells the daemon to close the control socket and return once `when_sent` fires (or is
    /// dropped), at most a few seconds later.
    pub fn finish_after(&self, when_sent: oneshot::Receiver<()>) {
        if let Some(finish) = self
            .finish
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = finish.send(when_sent);
        }
    }

    /// Stops the daemon from inside the process (what `App::stop` does): the shutdown
    /// sequence of SPEC §15 without an HTTP caller to answer.
    pub async fn stop(&self) -> Result<()> {
        self.begin_shutdown().await?;
        let stopped = self.stop_services().await;
        let (_, when_sent) = oneshot::channel();
        self.finish_after(when_sent);
        stopped
    }
}

/// Starts a daemon in the order of SPEC §7.5, hands its handle to `on_started`, and runs it
/// until it is shut down.
pub(crate) async fn run(
    state_dir: StateDir,
    socket_group: Option<String>,
    args: DaemonArgs,
    on_started: impl FnOnce(Running),
) -> Result<()> {
    if args.version.is_empty() {
        return Err(Error::invalid(
            "Version was missing at MicroCluster daemon start",
        ));
    }
    let extensions = api_extensions::registry(&args.api_extensions)?;
    let socket_path = state_dir.control_socket();
    let control_listener = control_socket::bind(&socket_path, socket_group.as_deref()).await?;
    let result = serve(state_dir, args, extensions, control_listener, on_started).await;
    if let Err(err) = std::fs::remove_file(&socket_path) {
        tracing::warn!("Failed to remove {socket_path:?}: {err}");
    }
    result
}

async fn serve(
    state_dir: StateDir,
    args: DaemonArgs,
    extensions: Vec<String>,
    control_listener: tokio::net::UnixListener,
    on_started: impl FnOnce(Running),
) -> Result<()> {
    let member = match state_dir.is_initialised() {
        true => Some(MemberConfig::load(&state_dir.daemon_yaml())?),
        false => None,
    };
    if !state_dir.server_cert().exists() {
        let name = member
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_else(certs::hostname);
        certs::ensure_server_cert(&state_dir, &name)?;
    }
    // Fail early on an unreadable or mismatched identity.
    certs::load_pair(&state_dir.server_cert(), &state_dir.server_key())?;
    let truststore = Truststore::open(state_dir.truststore_dir())?;
    let (finish, finish_requested) = oneshot::channel();
    let (stopped_tx, stopped) = watch::channel(false);
    let database = match member {
        Some(_) => DatabaseState::Starting,
        None => DatabaseState::NotInitialized,
    };
    let daemon = Arc::new(Daemon {
        state_dir,
        version: args.version,
        extensions,
        truststore,
        router: Router::new(endpoints::all()),
        member: RwLock::new(member.clone()),
        database: RwLock::new(database),
        phase: watch::Sender::new(Phase::Starting),
        shutdown_started: AtomicBool::new(false),
        services: CancellationToken::new(),
        service_tasks: Mutex::new(Vec::new()),
        finish: Mutex::new(Some(finish)),
    });
    let control_stop = CancellationToken::new();
    let control_task = tokio::spawn(server::serve_control_socket(
        daemon.clone(),
        control_listener,
        control_stop.clone(),
    ));
    on_started(Running {
        daemon: daemon.clone(),
        stopped,
    });

    let started = start_services(&daemon, member.as_ref()).await;
    match &started {
        Ok(()) => {
            daemon.phase.send_replace(Phase::Ready);
            tracing::info!("Daemon is ready");
            // Wait for a shutdown request, then for its answer to be written out.
            if let Ok(when_sent) = finish_requested.await {
                let _ = tokio::time::timeout(FINISH_TIMEOUT, when_sent).await;
            }
        }
        Err(err) => {
            tracing::error!("Start-up failed: {err}");
            daemon.shutdown_started.store(true, Ordering::SeqCst);
            daemon.phase.send_replace(Phase::ShuttingDown);
            let _ = daemon.stop_services().await;
        }
    }
    control_stop.cancel();
    let _ = control_task.await;
    stopped_tx.send_replace(true);
    started
}

async fn start_services(daemon: &Arc<Daemon>, member: Option<&MemberConfig>) -> Result<()> {
    if let Some(member) = member {
        daemon.start_core_listener(&member.address).await?;
    }
    daemon.spawn_truststore_watcher();
    Ok(())
}
