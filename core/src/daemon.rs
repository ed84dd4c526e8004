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
use crate::client::Client;
use crate::db::raft::network::PeerCredentials;
use crate::db::upgrade::{self, CodeVersions, Opening};
use crate::db::{self, Database, RaftSettings};
use crate::extensions::{self, ExtensionServer};
use crate::hooks::{HookSet, State};
use crate::member_config::MemberConfig;
use crate::rest::tls::CertificateSlot;
use crate::rest::{endpoints, router::Router, server, tls};
use crate::state_dir::StateDir;
use crate::sync;
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

/// How long stopping waits for each member task (listener, heartbeat, …) before aborting it.
const MEMBER_TASK_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long start-up waits for the database to come online before it continues anyway
/// (SPEC §7.5).
const DATABASE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long publishing a new failure domain may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before trying again to bring the database online.
const DATABASE_RETRY: Duration = Duration::from_secs(1);

/// How often a shutdown that waits for start-up checks whether the database waits for an
/// upgrade.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Everything the handlers of one running daemon share.
pub(crate) struct Daemon {
    pub state_dir: StateDir,
    pub version: String,
    pub extensions: Vec<String>,
    /// The application's schema updates (SQL text), in order.
    pub schema_updates: Vec<String>,
    /// Raft timings and compaction.
    pub raft_settings: RaftSettings,
    /// The application's lifecycle hooks.
    pub hooks: HookSet,
    /// The interval between heartbeat rounds.
    pub heartbeat_interval: Duration,
    /// When each member last answered this member's heartbeat (while it leads).
    last_seen: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    db: RwLock<Option<Arc<Database>>>,
    pub truststore: Truststore,
    /// The application's extension servers (SPEC §13).
    pub extension_servers: Vec<ExtensionServer>,
    /// What the control socket and the core listener serve: the core endpoints and the
    /// core-API extension servers.
    pub router: Arc<Router>,
    /// What each dedicated extension listener serves, by server name.
    dedicated_routers: std::collections::BTreeMap<String, Arc<Router>>,
    /// The cluster certificate as the listeners present it (replaced by a rotation).
    cluster_certificate: Mutex<Option<Arc<CertificateSlot>>>,
    /// The running dedicated extension listeners, by server name.
    extension_listeners: Mutex<std::collections::BTreeMap<String, ExtensionListener>>,
    member: RwLock<Option<MemberConfig>>,
    database: RwLock<DatabaseState>,
    phase: watch::Sender<Phase>,
    shutdown_started: AtomicBool,
    /// Whether `$SCHEMA_UPDATE` was scheduled already (SPEC §8.3; once per daemon).
    pub schema_update_scheduled: AtomicBool,
    /// Cancelled to stop the network listeners and background tasks (not the control socket).
    services: CancellationToken,
    service_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The services that exist while the member is initialised (core listener, database
    /// tasks), stopped and replaced by a reset.
    member_services: Mutex<(CancellationToken, Vec<JoinHandle<()>>)>,
    /// Serialises bootstrap, join and reset on this member.
    pub init_lock: tokio::sync::Mutex<()>,
    /// Serialises Raft membership changes on this member while it leads.
    pub membership_lock: tokio::sync::Mutex<()>,
    finish: Mutex<Option<oneshot::Sender<oneshot::Receiver<()>>>>,
}

/// A running dedicated listener of an extension server.
struct ExtensionListener {
    address: String,
    certificate: Arc<CertificateSlot>,
    stop: CancellationToken,
    task: JoinHandle<()>,
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
        *sync::read(&self.database)
    }

    /// Whether the member at `address` answers `GET /core/1.0/ready` within `timeout` (this
    /// member answers for itself without a request).
    pub async fn probe_ready(&self, address: &str, timeout: Duration) -> bool {
        if Some(address) == self.member_address().as_deref() {
            return self.is_ready();
        }
        match self.peer_client(address) {
            Ok(client) => client
                .with_timeout(timeout)
                .query::<serde_json::Value>(hyper::Method::GET, "/core/1.0/ready", None)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Records that `names` answered a heartbeat at `at`.
    pub fn record_seen(&self, names: &std::collections::BTreeSet<String>, at: std::time::Instant) {
        let mut seen = sync::lock(&self.last_seen);
        for name in names {
            seen.insert(name.clone(), at);
        }
    }

    /// The members that answered a heartbeat within `window` (SPEC §8.2 "online").
    pub fn online_members(&self, window: Duration) -> std::collections::BTreeSet<String> {
        let seen = sync::lock(&self.last_seen);
        seen.iter()
            .filter(|(_, at)| at.elapsed() <= window)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The State handed to hooks.
    pub fn state(self: &Arc<Self>) -> State {
        State::new(self.clone())
    }

    /// Sets the state of the database.
    pub fn set_database_state(&self, state: DatabaseState) {
        *sync::write(&self.database) = state;
    }

    /// The database, in whatever state it is (the Raft transport serves it while it starts);
    /// 503 with the state text when there is none.
    pub fn database(&self) -> Result<Arc<Database>> {
        sync::read(&self.db)
            .clone()
            .ok_or_else(|| Error::unavailable(self.database_state().text()))
    }

    /// The database once it is online; else 503 with the state text (SPEC §5.8).
    pub fn online_database(&self) -> Result<Arc<Database>> {
        self.database_state().require_open()?;
        self.database()
    }

    /// Starts Raft on this member's database directory: with a new Raft identity when `create`
    /// (bootstrap, join), else the persisted one.
    pub async fn open_database(self: &Arc<Self>, create: bool) -> Result<Arc<Database>> {
        let identity_path = self.state_dir.raft_identity();
        let id = match create {
            true => db::identity::create(&identity_path)?,
            false => db::identity::load(&identity_path)?,
        };
        let identity =
            certs::load_pair(&self.state_dir.server_cert(), &self.state_dir.server_key())?;
        let cluster_cert_pem = std::fs::read_to_string(self.state_dir.cluster_cert())
            .map_err(|err| Error::from(err).context("Failed to read the cluster certificate: "))?;
        let credentials = PeerCredentials {
            identity,
            cluster_cert_pem,
        };
        let database = Arc::new(
            Database::open(
                &self.state_dir.database_dir(),
                id,
                credentials,
                self.raft_settings.clone(),
            )
            .await?,
        );
        *sync::write(&self.db) = Some(database.clone());
        self.spawn_leadership_log(&database);
        self.track_member(tokio::spawn(crate::membership::heartbeat::run(
            self.clone(),
            self.member_token(),
        )));
        Ok(database)
    }

    /// Logs each change of this member's Raft role, so operators (and tests) can see who
    /// leads.
    fn spawn_leadership_log(&self, database: &Database) {
        // The server metrics change only with the vote, the role, the leader or the
        // membership; the full metrics change with every write.
        let mut metrics = database.raft().server_metrics();
        let stop = self.member_token();
        self.track_member(tokio::spawn(async move {
            let mut last = None;
            loop {
                let (state, term) = {
                    let current = metrics.borrow_and_update();
                    (current.state, current.vote.leader_id.term)
                };
                if last != Some(state) {
                    tracing::info!("Raft: this member is now {state:?} (term {term})");
                    last = Some(state);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
            }
        }));
    }

    /// What opening this member's database involves (SPEC §11.3); `check_versions` is false
    /// only at bootstrap.
    pub(crate) fn opening(&self, check_versions: bool) -> Opening {
        Opening {
            name: self
                .member_config()
                .map(|member| member.name)
                .unwrap_or_default(),
            own: CodeVersions::of(&self.schema_updates, &self.extensions),
            schema_updates: self.schema_updates.clone(),
            patch_file: self.state_dir.patch_global_sql(),
            check_versions,
        }
    }

    /// Tells every other member that this member's database came online (`PATCH
    /// /core/internal/database`), waking those waiting for an upgrade (SPEC §11.5).
    pub(crate) async fn announce_database_online(&self) {
        self.notify(
            &self.truststore.list(),
            hyper::Method::PATCH,
            "/core/internal/database",
            None::<&serde_json::Value>,
        )
        .await;
    }

    /// Brings the database online (SPEC §11.3, §11.5): waits for a leader, runs
    /// `patch.global.sql` and the upgrade check (waiting while others are behind), applies
    /// missing schema updates, sets the state to online and tells the other members. Tries
    /// again until it succeeds, fails for good (the outcome is `Some(Err)`), or the daemon
    /// stops.
    fn spawn_database_start(
        self: &Arc<Self>,
        database: Arc<Database>,
    ) -> watch::Receiver<Option<Result<()>>> {
        let (outcome_tx, outcome) = watch::channel(None);
        let daemon = self.clone();
        let stop = self.member_token();
        self.track_member(tokio::spawn(async move {
            let opening = daemon.opening(true);
            loop {
                let attempt = database.bring_online(&opening, DATABASE_START_TIMEOUT, |behind| {
                    daemon.set_database_state(DatabaseState::Waiting { behind })
                });
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    result = attempt => result,
                };
                match result {
                    Ok(()) => {
                        daemon.set_database_state(DatabaseState::Online);
                        tracing::info!("Database is online");
                        outcome_tx.send_replace(Some(Ok(())));
                        // SPEC §13.6: a changed failure domain takes effect at the next start.
                        let publish = async {
                            if let Some(member) = daemon.member_config()
                                && let Err(err) =
                                    daemon.publish_failure_domain(member.failure_domain).await
                            {
                                tracing::warn!("Failed to publish the failure domain: {err}");
                            }
                        };
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = async { tokio::join!(daemon.announce_database_online(), publish) } => {}
                        }
                        return;
                    }
                    Err(err) if upgrade::is_final(&err) => {
                        tracing::error!("The database cannot open: {err}");
                        daemon.set_database_state(DatabaseState::Offline);
                        outcome_tx.send_replace(Some(Err(err)));
                        return;
                    }
                    Err(err) => tracing::warn!("Database is not online yet: {err}"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DATABASE_RETRY) => {}
                }
            }
        }));
        outcome
    }

    /// Puts `failure_domain` into this member's Raft metadata through the leader, unless it
    /// is there already, and returns once this member's view has it (SPEC §13.6).
    pub async fn publish_failure_domain(&self, failure_domain: u64) -> Result<()> {
        let db = self.online_database()?;
        let id = db.id();
        let current = db
            .members()
            .into_iter()
            .find(|(member, _, _)| *member == id);
        let Some((_, mut node, _)) = current else {
            return Err(Error::unavailable(
                "This member is not in the Raft membership",
            ));
        };
        if node.failure_domain == failure_domain {
            return Ok(());
        }
        node.failure_domain = failure_domain;
        let deadline = std::time::Instant::now() + PUBLISH_TIMEOUT;
        // On the leader the change runs here, serialised with the heartbeat's membership
        // changes; from a follower the leader's set-node handler serialises it, and this
        // member holds no lock while the request travels.
        let serialised = match db.is_leader() {
            true => Some(self.membership_lock.lock().await),
            false => None,
        };
        db.set_own_node(node, deadline).await?;
        drop(serialised);
        let published = |db: &Database| {
            db.members()
                .iter()
                .any(|(member, node, _)| *member == id && node.failure_domain == failure_domain)
        };
        while !published(&db) {
            if std::time::Instant::now() >= deadline {
                return Err(Error::new(
                    crate::ErrorKind::Timeout,
                    "Timed out waiting for the failure domain to reach the Raft membership",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("Failure domain {failure_domain} published");
        Ok(())
    }

    /// This member's configuration (`daemon.yaml`), once initialised.
    pub fn member_config(&self) -> Option<MemberConfig> {
        sync::read(&self.member).clone()
    }

    /// This member's address, once initialised.
    pub fn member_address(&self) -> Option<String> {
        self.member_config().map(|member| member.address)
    }

    /// The `Server` document of `GET /core/1.0`.
    pub fn server_info(&self) -> Server {
        let member = self.member_config();
        Server {
            name: member
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_else(certs::hostname),
            address: member.map(|m| m.address).unwrap_or_default(),
            version: self.version.clone(),
            // SPEC §2.3: ready once start-up has finished and the database is open (so never
            // while un-initialised), as upstream reports whether its database is open.
            ready: self.is_ready() && self.database_state() == DatabaseState::Online,
            extensions: self.extensions.clone(),
        }
    }

    /// A client of the member at `address` over mTLS, presenting this member's server
    /// certificate and pinning the cluster certificate.
    pub fn peer_client(&self, address: &str) -> Result<Client> {
        let identity =
            certs::load_pair(&self.state_dir.server_cert(), &self.state_dir.server_key())?;
        let cluster_cert_pem = std::fs::read_to_string(self.state_dir.cluster_cert())
            .map_err(|err| Error::from(err).context("Failed to read the cluster certificate: "))?;
        Client::remote(address, &cluster_cert_pem, Some(&identity))
    }

    /// Sends a notification (SPEC §5.7) to each of `members` except this member, in parallel;
    /// failures are logged, not returned.
    pub async fn notify<T: serde::Serialize>(
        &self,
        members: &[crate::trust::Remote],
        method: hyper::Method,
        path: &str,
        body: Option<&T>,
    ) {
        let body = match body.map(serde_json::to_value).transpose() {
            Ok(body) => body,
            Err(err) => {
                tracing::warn!("Failed to encode a notification for {path}: {err}");
                return;
            }
        };
        let own = self.member_address();
        let sends = members
            .iter()
            .filter(|member| Some(&member.address) != own.as_ref())
            .map(|member| {
                let (method, body) = (method.clone(), body.clone());
                async move {
                    let sent = match self.peer_client(&member.address) {
                        Ok(client) => client
                            .as_notifier()
                            .query::<serde_json::Value>(method, path, body.as_ref())
                            .await
                            .map(|_| ()),
                        Err(err) => Err(err),
                    };
                    if let Err(err) = sent {
                        tracing::warn!("Failed to notify {} of {path}: {err}", member.name);
                    }
                }
            });
        futures::future::join_all(sends).await;
    }

    /// Sets this member's configuration (at bootstrap and join).
    pub fn set_member(&self, member: Option<MemberConfig>) {
        *sync::write(&self.member) = member;
    }

    /// Starts the core HTTPS listener on the member address, presenting the cluster
    /// certificate, and the dedicated listeners of the extension servers (SPEC §13.3) at the
    /// addresses `daemon.yaml` gives them.
    pub async fn start_core_listener(self: &Arc<Self>, member: &MemberConfig) -> Result<()> {
        let address = &member.address;
        let cluster = certs::load_pair(
            &self.state_dir.cluster_cert(),
            &self.state_dir.cluster_key(),
        )?;
        let slot = CertificateSlot::new(&cluster)?;
        *sync::lock(&self.cluster_certificate) = Some(slot.clone());
        let tls = tls::server_config(slot)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|err| Error::internal(format!("Failed to listen on {address:?}: {err}")))?;
        tracing::info!("Core listener started on {address}");
        let task = tokio::spawn(server::serve_network(
            self.clone(),
            self.router.clone(),
            None,
            listener,
            tls,
            self.member_token(),
        ));
        self.track_member(task);
        self.apply_extension_listeners(member).await
    }

    /// The listener address of each extension server with a dedicated listener: the one
    /// `member` (daemon.yaml) gives it, else the server's default.
    pub fn extension_addresses(
        &self,
        member: &MemberConfig,
    ) -> std::collections::BTreeMap<String, String> {
        self.extension_servers
            .iter()
            .filter(|server| !server.core_api)
            .map(|server| {
                let address = member
                    .servers
                    .get(&server.name)
                    .map(|config| config.address.clone())
                    .unwrap_or_else(|| server.address.clone());
                (server.name.clone(), address)
            })
            .filter(|(_, address)| !address.is_empty() && *address != member.address)
            .collect()
    }

    /// Makes the running dedicated listeners match `member`: stops removed ones, restarts
    /// moved ones, starts new ones; unchanged ones keep running.
    pub async fn apply_extension_listeners(self: &Arc<Self>, member: &MemberConfig) -> Result<()> {
        let wanted = self.extension_addresses(member);
        let stale: Vec<ExtensionListener> = {
            let mut running = sync::lock(&self.extension_listeners);
            let names: Vec<String> = running
                .iter()
                .filter(|(name, listener)| wanted.get(*name) != Some(&listener.address))
                .map(|(name, _)| name.clone())
                .collect();
            names
                .iter()
                .filter_map(|name| running.remove(name))
                .collect()
        };
        for listener in stale {
            stop_listener(listener).await;
        }
        for (name, address) in wanted {
            let running = sync::lock(&self.extension_listeners).contains_key(&name);
            if !running {
                self.start_extension_listener(&name, &address).await?;
            }
        }
        Ok(())
    }

    async fn start_extension_listener(self: &Arc<Self>, name: &str, address: &str) -> Result<()> {
        let (Some(server), Some(router)) = (
            self.extension_servers.iter().find(|s| s.name == name),
            self.dedicated_routers.get(name),
        ) else {
            return Err(Error::invalid(format!(
                "No matching additional listener found for {name:?}"
            )));
        };
        let certificate = self.extension_certificate(server)?;
        let tls = tls::server_config(certificate.clone())?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|err| {
                Error::internal(format!(
                    "Failed to listen on {address:?} for server {name:?}: {err}"
                ))
            })?;
        tracing::info!("Listener of extension server {name:?} started on {address}");
        let stop = self.member_token();
        let task = tokio::spawn(server::serve_network(
            self.clone(),
            router.clone(),
            Some(address.to_string()),
            listener,
            tls,
            stop.clone(),
        ));
        sync::lock(&self.extension_listeners).insert(
            name.to_string(),
            ExtensionListener {
                address: address.to_string(),
                certificate,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// The certificate a dedicated listener presents (SPEC §13.3): `certificates/<name>.crt`,
    /// generated first when the server asks for a dedicated one; else the cluster
    /// certificate, following its rotations.
    fn extension_certificate(&self, server: &ExtensionServer) -> Result<Arc<CertificateSlot>> {
        let (cert, key) = self.state_dir.extension_certificate(&server.name);
        if server.dedicated_certificate && !(cert.exists() && key.exists()) {
            certs::write_pair(&cert, &key, &certs::generate(&server.name)?)?;
        }
        if cert.exists() {
            return CertificateSlot::new(&certs::load_pair(&cert, &key)?);
        }
        sync::lock(&self.cluster_certificate)
            .clone()
            .ok_or_else(|| Error::internal("The cluster certificate is not loaded"))
    }

    /// Presents `identity` on the listeners using the certificate `name` (`cluster`, or an
    /// extension server's, already written to `certificates/`) from the next handshake on. A
    /// dedicated listener that shared the cluster certificate is restarted on its own one.
    pub async fn reload_certificate(
        self: &Arc<Self>,
        name: &str,
        identity: &certs::CertKeyPair,
    ) -> Result<()> {
        let cluster = sync::lock(&self.cluster_certificate).clone();
        if name == "cluster" {
            return match cluster {
                Some(slot) => slot.replace(identity),
                None => Ok(()),
            };
        }
        let shared = {
            let mut listeners = sync::lock(&self.extension_listeners);
            let shares_cluster = |listener: &ExtensionListener| {
                cluster
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, &listener.certificate))
            };
            match listeners.get(name) {
                Some(listener) if shares_cluster(listener) => listeners.remove(name),
                Some(listener) => return listener.certificate.replace(identity),
                None => return Ok(()),
            }
        };
        // Replacing the shared slot would change the cluster certificate: restart instead.
        if let Some(listener) = shared {
            let address = listener.address.clone();
            stop_listener(listener).await;
            self.start_extension_listener(name, &address).await?;
        }
        Ok(())
    }

    /// The token that stops the member-scoped services.
    pub(crate) fn member_token(&self) -> CancellationToken {
        sync::lock(&self.member_services).0.child_token()
    }

    fn track_member(&self, task: JoinHandle<()>) {
        sync::lock(&self.member_services).1.push(task);
    }

    /// Stops the core listener and the database and forgets the database; the member can be
    /// initialised again afterwards (reset, rollback of a failed init).
    pub async fn stop_member_services(&self) {
        let (token, tasks) = {
            let mut services = sync::lock(&self.member_services);
            let fresh = (self.services.child_token(), Vec::new());
            std::mem::replace(&mut *services, fresh)
        };
        token.cancel();
        for mut task in tasks {
            match tokio::time::timeout(MEMBER_TASK_STOP_TIMEOUT, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!("A member task failed while stopping: {err}"),
                Err(_) => {
                    tracing::warn!(
                        "A member task did not stop within {MEMBER_TASK_STOP_TIMEOUT:?}; aborting it"
                    );
                    task.abort();
                }
            }
        }
        let listeners = std::mem::take(&mut *sync::lock(&self.extension_listeners));
        for listener in listeners.into_values() {
            stop_listener(listener).await;
        }
        let database = sync::write(&self.db).take();
        if let Some(database) = database {
            database.shutdown().await;
        }
    }

    fn track(&self, task: JoinHandle<()>) {
        sync::lock(&self.service_tasks).push(task);
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
                    Ok(true) => {
                        tracing::info!("Truststore reloaded after a change on disk");
                        // SPEC §8.4: the truststore is derived from Raft; repair it.
                        if let Ok(db) = daemon.database()
                            && let Err(err) =
                                crate::membership::heartbeat::repair_truststore(&daemon, &db).await
                        {
                            tracing::warn!("Failed to repair the truststore: {err}");
                        }
                    }
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
        let started = phase.wait_for(|phase| *phase != Phase::Starting);
        tokio::pin!(started);
        // SPEC §15 step 2: a start-up that waits for an upgrade is not waited for.
        loop {
            tokio::select! {
                _ = &mut started => break,
                _ = tokio::time::sleep(SHUTDOWN_POLL) => {
                    if matches!(self.database_state(), DatabaseState::Waiting { .. }) {
                        break;
                    }
                }
            }
        }
        self.phase.send_replace(Phase::ShuttingDown);
        tracing::info!("Shutting down");
        Ok(())
    }

    /// Stops everything but the control socket (SPEC §15 step 5).
    pub async fn stop_services(&self) -> Result<()> {
        crate::membership::handover::hand_over_leadership(self).await;
        self.services.cancel();
        let tasks = std::mem::take(&mut *sync::lock(&self.service_tasks));
        for task in tasks {
            if let Err(err) = task.await {
                tracing::warn!("A service task failed while stopping: {err}");
            }
        }
        self.stop_member_services().await;
        let mut database = sync::write(&self.database);
        if *database != DatabaseState::NotInitialized {
            *database = DatabaseState::Offline;
        }
        Ok(())
    }

    /// Tells the daemon to close the control socket and return once `when_sent` fires (or is
    /// dropped), at most a few seconds later.
    pub fn finish_after(&self, when_sent: oneshot::Receiver<()>) {
        if let Some(finish) = sync::lock(&self.finish).take() {
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

/// Stops a dedicated listener and waits until its address is free.
async fn stop_listener(listener: ExtensionListener) {
    listener.stop.cancel();
    let mut task = listener.task;
    if tokio::time::timeout(MEMBER_TASK_STOP_TIMEOUT, &mut task)
        .await
        .is_err()
    {
        tracing::warn!(
            "The listener on {} did not stop within {MEMBER_TASK_STOP_TIMEOUT:?}; aborting it",
            listener.address
        );
        task.abort();
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
    let core_address = match state_dir.is_initialised() {
        true => Some(MemberConfig::load(&state_dir.daemon_yaml())?.address),
        false => None,
    };
    extensions::validate(
        &args.extension_servers,
        core_address.as_deref(),
        &endpoints::all(),
    )?;
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
    crate::membership::recovery::unpack_at_start(&state_dir)?;
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
    let services = CancellationToken::new();
    let daemon = Arc::new(Daemon {
        state_dir,
        version: args.version,
        extensions,
        schema_updates: args.schema_updates,
        raft_settings: args.raft,
        hooks: args.hooks,
        heartbeat_interval: match args.heartbeat_interval.is_zero() {
            true => crate::app::DEFAULT_HEARTBEAT_INTERVAL,
            false => args.heartbeat_interval,
        },
        last_seen: Mutex::new(std::collections::HashMap::new()),
        db: RwLock::new(None),
        truststore,
        router: Arc::new(extensions::core_router(
            endpoints::all(),
            &args.extension_servers,
        )),
        dedicated_routers: extensions::dedicated_routers(&args.extension_servers),
        extension_servers: args.extension_servers,
        cluster_certificate: Mutex::new(None),
        extension_listeners: Mutex::new(std::collections::BTreeMap::new()),
        member: RwLock::new(member.clone()),
        database: RwLock::new(database),
        phase: watch::Sender::new(Phase::Starting),
        shutdown_started: AtomicBool::new(false),
        schema_update_scheduled: AtomicBool::new(false),
        services: services.clone(),
        service_tasks: Mutex::new(Vec::new()),
        member_services: Mutex::new((services.child_token(), Vec::new())),
        init_lock: tokio::sync::Mutex::new(()),
        membership_lock: tokio::sync::Mutex::new(()),
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
            // A shutdown may have begun during a start-up waiting for an upgrade.
            let ready = daemon.phase.send_if_modified(|phase| {
                let starting = *phase == Phase::Starting;
                if starting {
                    *phase = Phase::Ready;
                }
                starting
            });
            if ready {
                tracing::info!("Daemon is ready");
            }
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
    daemon.spawn_truststore_watcher();
    start_member_services(daemon, member).await?;
    if daemon.is_shutting_down() {
        return Ok(());
    }
    daemon
        .hooks
        .0
        .on_start(daemon.state())
        .await
        .map_err(|err| err.context("Failed to run post-start hook: "))
}

async fn start_member_services(daemon: &Arc<Daemon>, member: Option<&MemberConfig>) -> Result<()> {
    if let Some(member) = member {
        daemon.start_core_listener(member).await?;
        let database = daemon.open_database(false).await?;
        let mut outcome = daemon.spawn_database_start(database);
        let opened =
            tokio::time::timeout(DATABASE_START_TIMEOUT, outcome.wait_for(Option::is_some));
        match opened.await {
            // A member behind the others, or a failing patch or update: the start fails.
            Ok(Ok(outcome)) => {
                if let Some(Err(err)) = &*outcome {
                    return Err(err.clone());
                }
            }
            // Stopped by a shutdown.
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!(
                "The database is not online after {DATABASE_START_TIMEOUT:?}; start-up continues and it keeps trying"
            ),
        }
    }
    Ok(())
}
