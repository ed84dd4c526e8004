//! Bootstrap (SPEC §7.2): this member becomes the first voter of a new cluster.

use std::sync::Arc;

use crate::daemon::{Daemon, DatabaseState};
use crate::db::ReadMode;
use crate::db::raft::MemberNode;
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::hooks::InitConfig;
use crate::member_config::MemberConfig;
use crate::trust::Remote;
use crate::types::ClusterMember;
use crate::{Error, Result, certs};

use super::members;

/// Runs §7.2 steps 1–7.
pub(super) async fn run(
    daemon: &Arc<Daemon>,
    config: &MemberConfig,
    init_config: &InitConfig,
) -> Result<()> {
    let dir = &daemon.state_dir;
    let certificate = std::fs::read_to_string(dir.server_cert())
        .map_err(|err| Error::from(err).context("Failed to read the server certificate: "))?;
    daemon.truststore.add(Remote {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate: certificate.clone(),
    })?;
    if !dir.cluster_cert().exists() {
        let cluster = certs::generate(&config.name)?;
        certs::write_pair(&dir.cluster_cert(), &dir.cluster_key(), &cluster)?;
    }
    daemon.set_member(Some(config.clone()));
    daemon.set_database_state(DatabaseState::Starting);
    daemon.start_core_listener(config).await?;

    let db = daemon.open_database(true).await?;
    db.initialize(MemberNode {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate: certificate.clone(),
        failure_domain: config.failure_domain,
    })
    .await?;
    // SPEC §7.2 step 5: no version checks at bootstrap.
    let opening = daemon.opening(false);
    db.bring_online(&opening, DEFAULT_TIMEOUT, |_| {}).await?;
    let (internal, external) = (opening.own.internal, opening.own.external);
    let own = ClusterMember {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate,
        role: members::VOTER.to_string(),
        schema_internal_version: internal,
        schema_external_version: external,
        last_heartbeat: members::now(),
        extensions: daemon.extensions.clone(),
        ..ClusterMember::default()
    };
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        members::insert(tx, &own)
    })
    .await?;
    daemon.set_database_state(DatabaseState::Online);
    daemon
        .hooks
        .0
        .post_bootstrap(daemon.state(), init_config.clone())
        .await?;
    tracing::info!(
        "Bootstrapped a new cluster as {} ({})",
        config.name,
        config.address
    );
    Ok(())
}
