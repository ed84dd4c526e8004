//! Cluster membership (SPEC §7–§9): initialising a member (bootstrap or join), admitting
//! joiners, join tokens, and the members table derived from Raft.

mod admission;
mod bootstrap;
pub(crate) mod handover;
pub(crate) mod heartbeat;
mod join;
pub mod local;
pub(crate) mod members;
pub mod recovery;
mod remove;
pub(crate) mod tokens;

use std::sync::Arc;

use crate::daemon::{Daemon, DatabaseState};
use crate::member_config::MemberConfig;
use crate::types::Control;
use crate::{Error, Result, certs, validate};

pub(crate) use admission::{admit, raft_join};
pub(crate) use remove::{Removal, Removed, removal_path, remove};

/// `POST /core/control` (SPEC §7.1): bootstraps or joins this member; a failure after the
/// inputs were accepted is rolled back and leaves the member un-initialised.
pub(crate) async fn init(daemon: Arc<Daemon>, control: Control) -> Result<()> {
    // Run to completion even if the caller disconnects.
    tokio::spawn(async move {
        let _serialised = daemon.init_lock.lock().await;
        init_locked(&daemon, control).await
    })
    .await
    .map_err(|err| Error::internal(format!("Initialisation task failed: {err}")))?
}

async fn init_locked(daemon: &Arc<Daemon>, control: Control) -> Result<()> {
    let state = daemon.database_state();
    if state != DatabaseState::NotInitialized {
        return Err(Error::invalid(format!(
            "Unable to initialize cluster: {}",
            state.text()
        )));
    }
    match (control.bootstrap, !control.join_token.is_empty()) {
        (true, true) => {
            return Err(Error::invalid(
                "Invalid options - received join token and bootstrap flag",
            ));
        }
        (false, false) => {
            return Err(Error::invalid(
                "Either bootstrap or join_token must be given",
            ));
        }
        _ => {}
    }
    validate::fqdn(&control.name).map_err(|reason| {
        Error::invalid(format!(
            "Cluster member name {:?} is not a valid FQDN: {reason}",
            control.name
        ))
    })?;
    validate::member_address(&control.address).map_err(|reason| {
        Error::invalid(format!("Invalid address {:?}: {reason}", control.address))
    })?;

    // SPEC §13.2: the servers again, now that the core address is known.
    crate::extensions::validate(
        &daemon.extension_servers,
        Some(&control.address),
        &crate::rest::endpoints::all(),
    )?;
    let mut config = MemberConfig {
        name: control.name.clone(),
        address: control.address.clone(),
        ..MemberConfig::default()
    };
    config.servers = daemon
        .extension_addresses(&config)
        .into_iter()
        .map(|(name, address)| (name, crate::member_config::ServerConfig { address }))
        .collect();
    config.save(&daemon.state_dir.daemon_yaml())?;
    // Hooks from PreInit on see the new name and address.
    daemon.set_member(Some(config.clone()));
    let pre_init = daemon
        .hooks
        .0
        .pre_init(daemon.state(), control.bootstrap, control.config.clone())
        .await;
    if let Err(err) = pre_init {
        daemon.set_member(None);
        remove_file(daemon.state_dir.daemon_yaml());
        return Err(err.context("Failed to run pre-init hook before starting the API: "));
    }
    let prepared = certs::ensure_server_cert(&daemon.state_dir, &control.name).map(|_| ());
    let result = match prepared {
        Err(err) => Err(err),
        Ok(()) if control.bootstrap => bootstrap::run(daemon, &config, &control.config).await,
        Ok(()) => join::run(daemon, &config, &control.join_token, &control.config).await,
    };
    if let Err(err) = &result {
        tracing::error!("Failed to initialise the member, rolling back: {err}");
        if let Err(hook_err) = daemon.hooks.0.pre_remove(daemon.state(), true).await {
            tracing::warn!("PreRemove failed during the rollback: {hook_err}");
        }
        reset(daemon, RESET_INIT_FAILED).await;
    }
    result
}

/// Why a member was reset (the `reset` event, SPEC §9.4).
pub(crate) const RESET_REMOVED: &str = "removed";
/// A failed bootstrap or join was rolled back.
pub(crate) const RESET_INIT_FAILED: &str = "init_failed";

/// Resets this member (SPEC §9.4): stops its listener and database, deletes every entry of
/// the state directory except `control.socket`, re-creates the layout with a new server
/// certificate for the default name, runs OnStart and delivers the `reset` event.
pub(crate) async fn reset(daemon: &Arc<Daemon>, reason: &str) {
    daemon.stop_member_services().await;
    daemon.set_database_state(DatabaseState::Offline);
    let dir = &daemon.state_dir;
    let socket = dir.control_socket();
    match std::fs::read_dir(dir.root()) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                if path == socket {
                    continue;
                }
                let removed = match path.is_dir() && !path.is_symlink() {
                    true => std::fs::remove_dir_all(&path),
                    false => std::fs::remove_file(&path),
                };
                if let Err(err) = removed {
                    tracing::warn!("Reset: failed to remove {path:?}: {err}");
                }
            }
        }
        Err(err) => tracing::warn!("Reset: failed to read {:?}: {err}", dir.root()),
    }
    if let Err(err) = crate::state_dir::StateDir::open(dir.root()) {
        tracing::warn!("Reset: failed to re-create the state directory: {err}");
    }
    if let Err(err) = daemon.truststore.replace_all(Vec::new()) {
        tracing::warn!("Reset: failed to empty the truststore: {err}");
    }
    if let Err(err) = certs::ensure_server_cert(dir, &certs::hostname()) {
        tracing::warn!("Reset: failed to create a new server certificate: {err}");
    }
    // Only now, with the layout back, is the member un-initialised.
    daemon.set_member(None);
    daemon.set_database_state(DatabaseState::NotInitialized);
    if let Err(err) = daemon.hooks.0.on_start(daemon.state()).await {
        tracing::warn!("Reset: OnStart failed: {err}");
    }
    tracing::info!("Reset finished (reason: {reason})");
    daemon
        .hooks
        .0
        .on_reset(daemon.state(), reason.to_string())
        .await;
}

/// Removes a file if it exists; a failure is logged.
fn remove_file(path: std::path::PathBuf) {
    if let Err(err) = std::fs::remove_file(&path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("Failed to remove {path:?}: {err}");
    }
}
