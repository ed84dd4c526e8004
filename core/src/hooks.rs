//! Lifecycle hooks (SPEC §10): the application's callbacks at ten points of a member's life,
//! and the [`State`] they get.
//!
//! Hooks return boxed futures so that one trait object serves Rust, C, Python and Node
//! applications alike; every method has a default that succeeds and does nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::certs::{self, CertKeyPair};
use crate::client::Client;
use crate::daemon::{Daemon, DatabaseState};
use crate::db::{ReadMode, Tx, tx};
use crate::member_config::MemberConfig;
use crate::sync;
use crate::types::{ClusterMember, ClusterMemberLocal};
use crate::{Error, Result};

/// The future a hook returns.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Configuration handed to the init hooks (`--config k=v`).
pub type InitConfig = BTreeMap<String, String>;

/// A member's role before and after a heartbeat round (OnHeartbeat).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    /// The role before the round.
    pub old: String,
    /// The role after the round.
    pub new: String,
}

fn done() -> HookFuture {
    Box::pin(async { Ok(()) })
}

/// The application's lifecycle hooks. Implement the ones you need.
///
/// Hooks run on the library's runtime threads: they must not block for long, and blocking
/// library calls made from inside them fail with `WouldBlock` (use the async API).
pub trait Hooks: Send + Sync + 'static {
    /// Before a bootstrap or join, after validation and the `daemon.yaml` write. An error
    /// aborts the init and leaves the member un-initialised.
    fn pre_init(&self, _state: State, _bootstrap: bool, _config: InitConfig) -> HookFuture {
        done()
    }

    /// After a bootstrap created the database and this member's row. An error rolls the
    /// bootstrap back.
    fn post_bootstrap(&self, _state: State, _config: InitConfig) -> HookFuture {
        done()
    }

    /// On a joiner, once it is in Raft with its final role and its database is open, before
    /// the other members run OnNewMember. An error rolls the join back.
    fn pre_join(&self, _state: State, _config: InitConfig) -> HookFuture {
        done()
    }

    /// On a joiner, last, after every OnNewMember. An error rolls the join back.
    fn post_join(&self, _state: State, _config: InitConfig) -> HookFuture {
        done()
    }

    /// On every existing member when `new_member` joins. An error rolls the join back.
    fn on_new_member(&self, _state: State, _new_member: ClusterMemberLocal) -> HookFuture {
        done()
    }

    /// At every start and after every reset, before the daemon is ready. An error stops the
    /// daemon.
    fn on_start(&self, _state: State) -> HookFuture {
        done()
    }

    /// On the member being removed, before it leaves. An error aborts the removal unless
    /// `force`.
    fn pre_remove(&self, _state: State, _force: bool) -> HookFuture {
        done()
    }

    /// On the remaining members after a removal.
    fn post_remove(&self, _state: State, _force: bool) -> HookFuture {
        done()
    }

    /// On the leader at the end of every heartbeat round.
    fn on_heartbeat(&self, _state: State, _roles: BTreeMap<String, RoleChange>) -> HookFuture {
        done()
    }

    /// On the other members after a member's daemon configuration changed.
    fn on_daemon_config_update(&self, _state: State, _config: MemberConfig) -> HookFuture {
        done()
    }

    /// The `reset` event (not a hook; SPEC §9.4): this member was reset in process, with
    /// `reason` `removed` or `init_failed`. It is un-initialised now.
    fn on_reset(&self, _state: State, _reason: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
}

/// Hooks that do nothing.
struct NoHooks;

impl Hooks for NoHooks {}

/// The hooks a daemon runs with; by default none.
#[derive(Clone)]
pub struct HookSet(pub Arc<dyn Hooks>);

impl Default for HookSet {
    fn default() -> Self {
        HookSet(Arc::new(NoHooks))
    }
}

impl fmt::Debug for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookSet")
    }
}

impl<H: Hooks> From<H> for HookSet {
    fn from(hooks: H) -> Self {
        HookSet(Arc::new(hooks))
    }
}

/// What hooks (and extension handlers) can see and do on their member (SPEC §13.4).
#[derive(Clone)]
pub struct State {
    daemon: Arc<Daemon>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("name", &self.name())
            .field("address", &self.address())
            .finish()
    }
}

impl State {
    pub(crate) fn new(daemon: Arc<Daemon>) -> State {
        State { daemon }
    }

    /// This member's name (the host name before init).
    pub fn name(&self) -> String {
        self.daemon.server_info().name
    }

    /// This member's address (empty before init).
    pub fn address(&self) -> String {
        self.daemon.member_address().unwrap_or_default()
    }

    /// The application version given to `start`.
    pub fn version(&self) -> String {
        self.daemon.version.clone()
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.daemon.state_dir.root().to_path_buf()
    }

    /// Whether the API extension `name` is in this member's registry (SPEC §11.4).
    pub fn has_extension(&self, name: &str) -> bool {
        self.daemon.extensions.iter().any(|e| e == name)
    }

    /// Runs `f` as a serializable transaction on the replicated database (see
    /// `App::transaction`).
    pub async fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.transaction_with(ReadMode::Linearizable, tx::DEFAULT_TIMEOUT, f)
            .await
    }

    /// [`State::transaction`] with an explicit read mode and timeout.
    pub async fn transaction_with<T, F>(&self, mode: ReadMode, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        // SPEC §11.1: only on a database that is online or waiting for an upgrade.
        let state = self.daemon.database_state();
        if !matches!(state, DatabaseState::Online | DatabaseState::Waiting { .. }) {
            return Err(Error::unavailable(format!(
                "Database is not ready yet: {}",
                state.text()
            )));
        }
        let database = self.daemon.database().map_err(|err| {
            Error::unavailable(format!("Database is not ready yet: {}", err.message()))
        })?;
        database.transaction(mode, timeout, f).await
    }

    /// The cluster members as the database has them (without status).
    pub async fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        self.transaction(crate::membership::members::list).await
    }

    /// Every member this member trusts (the truststore), itself included.
    pub fn remotes(&self) -> Vec<crate::trust::Remote> {
        self.daemon.truststore.list()
    }

    /// A client for every other member, from the truststore (which follows the Raft
    /// membership), without contacting them. With `notify` the requests are cluster
    /// notifications (SPEC §5.7).
    pub fn cluster(&self, notify: bool) -> Result<Vec<(crate::trust::Remote, Client)>> {
        let own = self.name();
        self.remotes()
            .into_iter()
            .filter(|remote| remote.name != own)
            .map(|remote| {
                let client = self.daemon.peer_client(&remote.address)?;
                let client = match notify {
                    true => client.as_notifier(),
                    false => client,
                };
                Ok((remote, client))
            })
            .collect()
    }

    /// Sends `method path` with `body` to every other member as a notification, in parallel,
    /// and returns each member's name with its answer (`metadata`) or error, sorted by name.
    pub async fn query_cluster(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<(String, Result<Value>)>> {
        let queries = self.cluster(true)?.into_iter().map(|(remote, client)| {
            let method = method.clone();
            async move {
                let answer = client.query::<Value>(method, path, body).await;
                (remote.name, answer)
            }
        });
        let mut answers = futures::future::join_all(queries).await;
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(answers)
    }

    /// A client for the current Raft leader.
    pub fn leader(&self) -> Result<Client> {
        let (_, leader) = self
            .daemon
            .database()?
            .leader()
            .ok_or_else(|| Error::unavailable("No leader is known yet"))?;
        self.daemon.peer_client(&leader.address)
    }

    /// The names of the extension servers with their own listeners (not core-API ones).
    pub fn extension_servers(&self) -> Vec<String> {
        self.daemon
            .extension_servers
            .iter()
            .filter(|server| !server.core_api)
            .map(|server| server.name.clone())
            .collect()
    }

    /// This member's server certificate and key.
    pub fn server_cert(&self) -> Result<CertKeyPair> {
        let dir = &self.daemon.state_dir;
        certs::load_pair(&dir.server_cert(), &dir.server_key())
    }

    /// The cluster certificate and key.
    pub fn cluster_cert(&self) -> Result<CertKeyPair> {
        let dir = &self.daemon.state_dir;
        certs::load_pair(&dir.cluster_cert(), &dir.cluster_key())
    }

    /// [`State::query_cluster`] for synchronous callers (see
    /// [`State::transaction_blocking`]).
    pub fn query_cluster_blocking(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Vec<(String, Result<Value>)>> {
        let state = self.clone();
        let path = path.to_string();
        wait(async move { state.query_cluster(method, &path, body.as_ref()).await })
    }

    /// [`State::transaction_with`] for synchronous callers (foreign hooks): allowed inside
    /// a [`BlockingHooks`] callback; on a runtime thread it fails with `WouldBlock`.
    pub fn transaction_blocking<T, F>(&self, mode: ReadMode, timeout: Duration, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let state = self.clone();
        wait(async move { state.transaction_with(mode, timeout, f).await })
    }

    /// [`State::cluster_members`] for synchronous callers (see
    /// [`State::transaction_blocking`]).
    pub fn cluster_members_blocking(&self) -> Result<Vec<ClusterMember>> {
        let state = self.clone();
        wait(async move { state.cluster_members().await })
    }
}

/// The wire names of the hooks (SPEC §10).
pub(crate) mod names {
    /// OnNewMember.
    pub const ON_NEW_MEMBER: &str = "on-new-member";
    /// PreRemove.
    pub const PRE_REMOVE: &str = "pre-remove";
    /// PostRemove.
    pub const POST_REMOVE: &str = "post-remove";
    /// OnDaemonConfigUpdate.
    pub const ON_DAEMON_CONFIG_UPDATE: &str = "on-daemon-config-update";
}

/// One lifecycle event, with its arguments: what [`BlockingHooks`] receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "hook", rename_all = "kebab-case")]
pub enum HookEvent {
    /// PreInit.
    PreInit {
        /// Bootstrap (true) or join.
        bootstrap: bool,
        /// The init configuration.
        config: InitConfig,
    },
    /// PostBootstrap.
    PostBootstrap {
        /// The init configuration.
        config: InitConfig,
    },
    /// PreJoin.
    PreJoin {
        /// The init configuration.
        config: InitConfig,
    },
    /// PostJoin.
    PostJoin {
        /// The init configuration.
        config: InitConfig,
    },
    /// OnNewMember.
    OnNewMember {
        /// The member that joined.
        new_member: ClusterMemberLocal,
    },
    /// OnStart.
    OnStart,
    /// PreRemove.
    PreRemove {
        /// Whether the removal is forced.
        force: bool,
    },
    /// PostRemove.
    PostRemove {
        /// Whether the removal was forced.
        force: bool,
    },
    /// OnHeartbeat.
    OnHeartbeat {
        /// Each member's role before and after the round.
        roles: BTreeMap<String, RoleChange>,
    },
    /// OnDaemonConfigUpdate.
    OnDaemonConfigUpdate {
        /// The updated member's configuration.
        config: MemberConfig,
    },
    /// The `reset` event (SPEC §9.4); its result is ignored.
    Reset {
        /// `removed` or `init_failed`.
        reason: String,
    },
}

impl HookEvent {
    /// The hook's name: the wire names of SPEC §10 (`pre-init`, `post-bootstrap`, …, and
    /// `reset`).
    pub fn name(&self) -> &'static str {
        match self {
            HookEvent::PreInit { .. } => "pre-init",
            HookEvent::PostBootstrap { .. } => "post-bootstrap",
            HookEvent::PreJoin { .. } => "pre-join",
            HookEvent::PostJoin { .. } => "post-join",
            HookEvent::OnNewMember { .. } => names::ON_NEW_MEMBER,
            HookEvent::OnStart => "on-start",
            HookEvent::PreRemove { .. } => names::PRE_REMOVE,
            HookEvent::PostRemove { .. } => names::POST_REMOVE,
            HookEvent::OnHeartbeat { .. } => "on-heartbeat",
            HookEvent::OnDaemonConfigUpdate { .. } => names::ON_DAEMON_CONFIG_UPDATE,
            HookEvent::Reset { .. } => "reset",
        }
    }

    /// The event's arguments as a JSON object (without the `hook` name), for bindings that
    /// hand them over as JSON.
    pub fn args_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.shift_remove("hook");
        }
        value
    }
}

/// Hooks written as plain blocking functions, which is what C, Python and other foreign
/// callbacks are. Each event is delivered to [`BlockingHooks::call`] on a blocking thread of
/// the library's runtime, so a slow callback never stalls the daemon. Wrap with
/// [`HookSet::blocking`].
pub trait BlockingHooks: Send + Sync + 'static {
    /// Handles one event; an error fails the lifecycle step as SPEC §10 says (ignored for
    /// [`HookEvent::Reset`]).
    fn call(&self, state: &State, event: HookEvent) -> Result<()>;
}

thread_local! {
    /// Set while a [`BlockingHooks`] callback runs on this (blocking) thread, where waiting
    /// for the library's futures is safe.
    static IN_BLOCKING_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as running a blocking callback until dropped (also when the callback
/// panics, so the pooled thread does not keep the mark).
struct BlockingCallback;

impl BlockingCallback {
    fn enter() -> BlockingCallback {
        IN_BLOCKING_HOOK.with(|flag| flag.set(true));
        BlockingCallback
    }
}

impl Drop for BlockingCallback {
    fn drop(&mut self) {
        IN_BLOCKING_HOOK.with(|flag| flag.set(false));
    }
}

/// Waits for `future` from synchronous code: inside a [`BlockingHooks`] callback on its
/// blocking thread, elsewhere through [`crate::runtime::block_on`] (which refuses on runtime
/// threads with `WouldBlock`).
fn wait<T: Send + 'static>(future: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    match IN_BLOCKING_HOOK.with(|flag| flag.get()) {
        true => tokio::runtime::Handle::current().block_on(future),
        false => crate::runtime::block_on(future),
    }
}

/// Lets [`BlockingHooks`] run until it is closed; closing waits for the hooks that are
/// running. An embedder closes it when its stop or wait returns, so that no hook runs
/// afterwards and the callbacks' data may be freed.
#[derive(Debug, Default)]
pub struct HookGate(std::sync::RwLock<bool>);

impl HookGate {
    /// Closes the gate, waiting for running hooks to return.
    pub fn close(&self) {
        *sync::write(&self.0) = true;
    }

    /// Holds the gate open while `what` (a hook, an endpoint) runs; `Unavailable` once
    /// closed.
    fn enter(&self, what: &str) -> Result<std::sync::RwLockReadGuard<'_, bool>> {
        let closed = sync::read(&self.0);
        match *closed {
            true => Err(Error::unavailable(format!(
                "{what} was not run: the app was stopped"
            ))),
            false => Ok(closed),
        }
    }
}

/// Runs the foreign callback `call` on a blocking thread while `gate` is open, where blocking
/// library calls are allowed (see [`State::transaction_blocking`]). `what` names it in
/// errors.
pub(crate) fn run_blocking<T: Send + 'static>(
    gate: Arc<HookGate>,
    what: String,
    call: impl FnOnce() -> Result<T> + Send + 'static,
) -> Pin<Box<dyn Future<Output = Result<T>> + Send>> {
    Box::pin(async move {
        let panicked = format!("{what} panicked");
        tokio::task::spawn_blocking(move || {
            let _open = gate.enter(&what)?;
            let _marked = BlockingCallback::enter();
            call()
        })
        .await
        .map_err(|err| Error::internal(format!("{panicked}: {err}")))?
    })
}

/// The adapter from [`BlockingHooks`] to [`Hooks`].
struct Blocking<H> {
    hooks: Arc<H>,
    gate: Arc<HookGate>,
}

impl<H: BlockingHooks> Blocking<H> {
    fn run(&self, state: State, event: HookEvent) -> HookFuture {
        let hooks = self.hooks.clone();
        let what = format!("The {} hook", event.name());
        run_blocking(self.gate.clone(), what, move || hooks.call(&state, event))
    }
}

impl<H: BlockingHooks> Hooks for Blocking<H> {
    fn pre_init(&self, state: State, bootstrap: bool, config: InitConfig) -> HookFuture {
        self.run(state, HookEvent::PreInit { bootstrap, config })
    }

    fn post_bootstrap(&self, state: State, config: InitConfig) -> HookFuture {
        self.run(state, HookEvent::PostBootstrap { config })
    }

    fn pre_join(&self, state: State, config: InitConfig) -> HookFuture {
        self.run(state, HookEvent::PreJoin { config })
    }

    fn post_join(&self, state: State, config: InitConfig) -> HookFuture {
        self.run(state, HookEvent::PostJoin { config })
    }

    fn on_new_member(&self, state: State, new_member: ClusterMemberLocal) -> HookFuture {
        self.run(state, HookEvent::OnNewMember { new_member })
    }

    fn on_start(&self, state: State) -> HookFuture {
        self.run(state, HookEvent::OnStart)
    }

    fn pre_remove(&self, state: State, force: bool) -> HookFuture {
        self.run(state, HookEvent::PreRemove { force })
    }

    fn post_remove(&self, state: State, force: bool) -> HookFuture {
        self.run(state, HookEvent::PostRemove { force })
    }

    fn on_heartbeat(&self, state: State, roles: BTreeMap<String, RoleChange>) -> HookFuture {
        self.run(state, HookEvent::OnHeartbeat { roles })
    }

    fn on_daemon_config_update(&self, state: State, config: MemberConfig) -> HookFuture {
        self.run(state, HookEvent::OnDaemonConfigUpdate { config })
    }

    fn on_reset(&self, state: State, reason: String) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let run = self.run(state, HookEvent::Reset { reason });
        Box::pin(async move {
            if let Err(err) = run.await {
                tracing::warn!("The reset callback failed: {err}");
            }
        })
    }
}

impl HookSet {
    /// Hooks given as one blocking dispatch function (see [`BlockingHooks`]), run until
    /// `gate` is closed.
    pub fn blocking(hooks: impl BlockingHooks, gate: Arc<HookGate>) -> HookSet {
        HookSet(Arc::new(Blocking {
            hooks: Arc::new(hooks),
            gate,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_waits_are_refused_outside_blocking_hooks() {
        let refused = crate::runtime::block_on(async { Ok(wait(async { Ok(1) })) }).unwrap();
        assert_eq!(refused.unwrap_err().kind(), crate::ErrorKind::WouldBlock);
        let allowed = crate::runtime::block_on(async {
            tokio::task::spawn_blocking(|| {
                let _marked = BlockingCallback::enter();
                wait(async { Ok(2) })
            })
            .await
            .map_err(|err| Error::internal(err.to_string()))?
        })
        .unwrap();
        assert_eq!(allowed, 2);
    }

    #[test]
    fn events_have_wire_names_and_json_arguments() {
        let event = HookEvent::PreInit {
            bootstrap: true,
            config: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        assert_eq!(event.name(), "pre-init");
        // The arguments keep their declared order (C callers see the JSON text).
        assert_eq!(
            event.args_json().to_string(),
            r#"{"bootstrap":true,"config":{"k":"v"}}"#
        );
        assert_eq!(HookEvent::OnStart.name(), "on-start");
        assert_eq!(HookEvent::OnStart.args_json(), serde_json::json!({}));
        assert_eq!(
            HookEvent::PreRemove { force: true }.args_json(),
            serde_json::json!({"force": true})
        );
    }
}
