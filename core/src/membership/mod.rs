//! Cluster membership (SPEC §7–§9): initialising a member (bootstrap or join), admitting
//! joiners, join tokens, and the members table derived from Raft.

mod admission;
mod bootstrap;
mod join;
pub(crate) mod members;
pub(crate) mod tokens;

use std::sync::Arc;

use crate::daemon::{Daemon, DatabaseState};
use crate::member_config::MemberConfig;
use crate::types::Control;
use crate::{Error, Result, certs, validate};

pub(crate) use admission::{admit, raft_join};

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

    let config = MemberConfig {
        name: control.name.clone(),
        address: control.address.clone(),
        ..MemberConfig::default()
    };
    config.save(&daemon.state_dir.daemon_yaml())?;
    let pre_init = daemon
        .hooks
        .0
        .pre_init(daemon.state(), control.bootstrap, control.config.clone())
        .await;
    if let Err(err) = pre_init {
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
        reset_local(daemon).await;
    }
    result
}

/// Returns this member to un-initialised: stops its listener and database and deletes
/// `daemon.yaml`, the database, the truststore and the cluster certificate (SPEC §9.4).
pub(crate) async fn reset_local(daemon: &Arc<Daemon>) {
    daemon.stop_member_services().await;
    daemon.set_member(None);
    daemon.set_database_state(DatabaseState::NotInitialized);
    let dir = &daemon.state_dir;
    remove_file(dir.daemon_yaml());
    remove_file(dir.cluster_cert());
    remove_file(dir.cluster_key());
    remove_file(dir.cluster_ca());
    for remote in daemon.truststore.list() {
        if let Err(err) = daemon.truststore.remove(&remote.name) {
            tracing::warn!(
                "Reset: failed to remove truststore entry {:?}: {err}",
                remote.name
            );
        }
    }
    let database = dir.database_dir();
    match std::fs::read_dir(&database) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(err) = removed {
                    tracing::warn!("Reset: failed to remove {path:?}: {err}");
                }
            }
        }
        Err(err) => tracing::warn!("Reset: failed to read {database:?}: {err}"),
    }
}

/// Removes a file if it exists; a failure is logged.
fn remove_file(path: std::path::PathBuf) {
    if let Err(err) = std::fs::remove_file(&path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("Failed to remove {path:?}: {err}");
    }
}
