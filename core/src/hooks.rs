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

use serde::{Deserialize, Serialize};

use crate::daemon::Daemon;
use crate::db::{ReadMode, Tx, tx};
use crate::member_config::MemberConfig;
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
        let database = self.daemon.database().map_err(|err| {
            Error::unavailable(format!("Database is not ready yet: {}", err.message()))
        })?;
        database.transaction(mode, timeout, f).await
    }

    /// The cluster members as the database has them (without status).
    pub async fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        self.transaction(crate::membership::members::list).await
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
