//! Join, the joiner's side (SPEC §7.3 J1–J6, J10).

use std::sync::Arc;

use hyper::Method;
use serde_json::Value;

use crate::client::Client;
use crate::daemon::{Daemon, DatabaseState};
use crate::db::schema::INTERNAL_VERSION;
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::hooks::{InitConfig, names};
use crate::member_config::MemberConfig;
use crate::rest::tls;
use crate::token::JoinToken;
use crate::trust::Remote;
use crate::types::{ClusterMember, TokenResponse};
use crate::{Error, Result, certs};

use super::admission::RaftJoinRequest;

/// Path of the joiner's request to be added to Raft (SPEC §7.3 J5).
pub(crate) const RAFT_JOIN_PATH: &str = "/core/internal/raft/join";

/// Runs J1–J6: admission by one of the token's addresses, then Raft membership.
pub(super) async fn run(
    daemon: &Arc<Daemon>,
    config: &MemberConfig,
    token: &str,
    init_config: &InitConfig,
) -> Result<()> {
    let token = JoinToken::decode(token)?;
    let dir = &daemon.state_dir;
    let identity = certs::load_pair(&dir.server_cert(), &dir.server_key())?;
    let request = ClusterMember {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate: identity.cert_pem.clone(),
        schema_internal_version: INTERNAL_VERSION,
        schema_external_version: daemon.schema_updates.len() as u64,
        extensions: daemon.extensions.clone(),
        secret: token.secret.clone(),
        ..ClusterMember::default()
    };
    let body = serde_json::to_value(&request)
        .map_err(|err| Error::internal(format!("Failed to encode the join request: {err}")))?;

    // J2: the first address that admits us; a 4xx answer is final.
    let mut failures = Vec::new();
    let mut admitted = None;
    for address in &token.join_addresses {
        match ask_admission(address, &token.fingerprint, &identity, &body).await {
            Ok(response) => {
                admitted = Some(response);
                break;
            }
            Err(err) if (400..500).contains(&err.http_status()) => return Err(err),
            Err(err) => failures.push(format!("{address}: {}", err.message())),
        }
    }
    let response = admitted.ok_or_else(|| {
        Error::unavailable(format!(
            "Failed to join cluster with any of the {} join addresses: {}",
            token.join_addresses.len(),
            failures.join("; ")
        ))
    })?;

    let admitted = complete(daemon, config, init_config, &identity, &response).await;
    if let Err(err) = admitted {
        return Err(match leave(daemon, config, &response).await {
            Ok(()) => err,
            Err(cleanup) => Error::new(
                err.kind(),
                format!(
                    "{}; cleanup on the cluster failed: {}",
                    err.message(),
                    cleanup.message()
                ),
            ),
        });
    }
    Ok(())
}

/// J3–J9, once a member admitted us.
async fn complete(
    daemon: &Arc<Daemon>,
    config: &MemberConfig,
    init_config: &InitConfig,
    identity: &certs::CertKeyPair,
    response: &TokenResponse,
) -> Result<()> {
    let dir = &daemon.state_dir;
    // J3
    let cluster = certs::CertKeyPair {
        cert_pem: response.cluster_cert.clone(),
        key_pem: response.cluster_key.clone(),
    };
    certs::write_pair(&dir.cluster_cert(), &dir.cluster_key(), &cluster)?;
    for member in &response.cluster_members {
        daemon.truststore.add(member.clone())?;
    }
    daemon.truststore.add(Remote {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate: identity.cert_pem.clone(),
    })?;

    // J4, J5
    daemon.set_member(Some(config.clone()));
    daemon.set_database_state(DatabaseState::Starting);
    daemon.start_core_listener(config).await?;
    let db = daemon.open_database(true).await?;
    let join = RaftJoinRequest {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate: identity.cert_pem.clone(),
        node_id: db.id(),
        failure_domain: config.failure_domain,
    };
    let join = serde_json::to_value(&join)
        .map_err(|err| Error::internal(format!("Failed to encode the Raft join request: {err}")))?;
    let trusted = Client::remote(
        &response.trusted_member.address,
        &response.cluster_cert,
        Some(identity),
    )?
    .with_timeout(DEFAULT_TIMEOUT * 2);
    let role: String = trusted
        .query(Method::POST, RAFT_JOIN_PATH, Some(&join))
        .await
        .map_err(|err| err.context("Failed to join Raft: "))?;

    // J6: the version check of SPEC §11.5 and the missing updates; a member behind fails
    // here, and the join rolls back.
    db.bring_online(&daemon.opening(true), DEFAULT_TIMEOUT, |behind| {
        daemon.set_database_state(DatabaseState::Waiting { behind })
    })
    .await?;
    daemon.set_database_state(DatabaseState::Online);

    // J7–J9
    let hooks = &daemon.hooks.0;
    hooks.pre_join(daemon.state(), init_config.clone()).await?;
    let new_member = Remote {
        name: config.name.clone(),
        address: config.address.clone(),
        certificate: identity.cert_pem.clone(),
    };
    // Members admitted before us learnt of us only if the admission's notification reached
    // them; members still joining may have missed it. Ask the member that admitted us to
    // announce us again before we call on them (errors only delay convergence, which the
    // heartbeat completes).
    let announced = trusted
        .query::<Value>(
            Method::POST,
            "/core/internal/truststore",
            Some(&serde_json::json!(new_member)),
        )
        .await;
    if let Err(err) = announced {
        tracing::warn!("Failed to announce this member to the cluster again: {err}");
    }
    let peers: Vec<Remote> = daemon
        .truststore
        .list()
        .into_iter()
        .filter(|peer| peer.name != config.name)
        .collect();
    let body = serde_json::json!({ "new_member": new_member });
    let calls = peers.iter().map(|peer| {
        let body = body.clone();
        async move {
            let path = format!(
                "/core/internal/hooks/{}?target={}",
                names::ON_NEW_MEMBER,
                peer.name
            );
            let answered = match daemon.peer_client(&peer.address) {
                Ok(client) => {
                    client
                        .query::<Value>(Method::POST, &path, Some(&body))
                        .await
                }
                Err(err) => Err(err),
            };
            match answered {
                // The peer is still starting (SPEC §7.3 J8).
                Err(err) if err.http_status() == 503 => {
                    tracing::warn!("{} did not run OnNewMember: {err}", peer.name);
                    Ok(())
                }
                Err(err) => Err(err.context(format!("OnNewMember on {} failed: ", peer.name))),
                Ok(_) => Ok(()),
            }
        }
    });
    // J8: wake members waiting for an upgrade (errors are only logged), and OnNewMember.
    let (_, results) = futures::future::join(
        daemon.announce_database_online(),
        futures::future::join_all(calls),
    )
    .await;
    for result in results {
        result?;
    }
    hooks.post_join(daemon.state(), init_config.clone()).await?;
    tracing::info!("Joined the cluster as {} with role {role}", config.name);
    Ok(())
}

/// Asks the cluster to remove this member after a failed join (SPEC §7.4 step 2): first the
/// member that admitted it, then each other known member, until one succeeds.
async fn leave(
    daemon: &Arc<Daemon>,
    config: &MemberConfig,
    response: &TokenResponse,
) -> Result<()> {
    let identity = certs::load_pair(
        &daemon.state_dir.server_cert(),
        &daemon.state_dir.server_key(),
    )?;
    let removal = super::Removal {
        name: config.name.clone(),
        force: true,
        address: Some(config.address.clone()),
        caller_fingerprint: None,
    };
    let path = removal.path();
    let mut failures = Vec::new();
    let candidates = std::iter::once(&response.trusted_member).chain(
        response
            .cluster_members
            .iter()
            .filter(|m| m.address != response.trusted_member.address),
    );
    for member in candidates {
        let client = Client::remote(&member.address, &response.cluster_cert, Some(&identity))?
            .with_timeout(DEFAULT_TIMEOUT);
        match client.query::<Value>(Method::DELETE, &path, None).await {
            Ok(_) => return Ok(()),
            Err(err) => failures.push(format!("{}: {}", member.address, err.message())),
        }
    }
    Err(Error::unavailable(failures.join("; ")))
}

/// J2 for one address: checks the certificate it presents against the token's fingerprint,
/// then asks it to admit us.
async fn ask_admission(
    address: &str,
    fingerprint: &str,
    identity: &certs::CertKeyPair,
    body: &Value,
) -> Result<TokenResponse> {
    let presented = tls::fetch_server_certificate(address).await?;
    let found = certs::fingerprint_pem(&presented)?;
    if found != fingerprint {
        return Err(Error::unavailable(format!(
            "cluster certificate fingerprint mismatch (expected {fingerprint}, got {found})"
        )));
    }
    Client::remote(address, &presented, Some(identity))?
        .query(Method::POST, "/core/internal/cluster", Some(body))
        .await
}
