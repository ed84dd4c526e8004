//! Join, the cluster's side (SPEC §7.3 A1–A6 and J5): admitting a joiner with its token, and
//! adding it to Raft with its final role. Both run on the leader; other members forward.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::daemon::Daemon;
use crate::db::raft::{MemberNode, NodeId};
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::db::{Database, ReadMode, Value as SqlValue};
use crate::trust::Remote;
use crate::types::{ClusterMember, NEVER, TokenResponse};
use crate::{Error, ErrorKind, Result, token, validate};

use super::heartbeat::{STAND_BYS_TARGET, VOTERS_TARGET};
use super::join::RAFT_JOIN_PATH;
use super::members::{self, PENDING, SPARE, STAND_BY, VOTER};
use super::tokens::{format_time, parse_time};

/// How long a non-leader waits for a leader to be known before forwarding (SPEC §7.3 A2).
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long a voter gets to answer the readiness probe when a joiner's role is decided.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a new member may take to catch up with the log before it gets its role.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The J5 request: add this member to Raft.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RaftJoinRequest {
    /// The joiner's name.
    pub name: String,
    /// The joiner's address.
    pub address: String,
    /// The joiner's server certificate, PEM.
    pub certificate: String,
    /// The joiner's Raft node id.
    pub node_id: NodeId,
    /// The joiner's failure domain.
    #[serde(default)]
    pub failure_domain: u64,
}

/// The leader's address, waiting up to [`LEADER_WAIT`] for one to be known; `None` when this
/// member leads.
pub(super) async fn leader_address(db: &Database) -> Result<Option<String>> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        match db.leader() {
            Some((id, _)) if id == db.id() => return Ok(None),
            Some((_, node)) => return Ok(Some(node.address)),
            None if tokio::time::Instant::now() >= deadline => {
                return Err(Error::unavailable("No leader is known"));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What a non-leader does with a request that only the leader handles.
pub(super) enum Leadership {
    /// This member leads: handle it here.
    Here,
    /// The leader answered this (relayed as it is).
    Relayed(Value),
}

/// Sends `method path` with `body` to the leader and relays its answer (SPEC §7.3 A2,
/// §9.2 step 1). While the leader cannot be reached (it may just have died), it waits for
/// another to be elected and tries again, up to [`LEADER_WAIT`].
pub(super) async fn forward_to_leader(
    daemon: &Daemon,
    db: &Database,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Leadership> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let Some(leader) = leader_address(db).await? else {
            return Ok(Leadership::Here);
        };
        let sent = daemon
            .peer_client(&leader)?
            .with_timeout(DEFAULT_TIMEOUT * 2)
            .query::<Value>(method.clone(), path, body)
            .await;
        match sent {
            Ok(answer) => return Ok(Leadership::Relayed(answer)),
            Err(err)
                if err.kind() == ErrorKind::Unavailable
                    && err.message().starts_with("Failed to connect")
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!("The leader at {leader} is unreachable, waiting: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// `POST /core/internal/cluster` (A1–A6).
pub(crate) async fn admit(daemon: Arc<Daemon>, request: ClusterMember) -> Result<TokenResponse> {
    let db = daemon.online_database()?;
    validate::fqdn(&request.name).map_err(|reason| {
        Error::invalid(format!(
            "Cluster member name {:?} is not a valid FQDN: {reason}",
            request.name
        ))
    })?;
    validate::member_address(&request.address).map_err(|reason| {
        Error::invalid(format!("Invalid address {:?}: {reason}", request.address))
    })?;
    let body = to_json(&request)?;
    let path = "/core/internal/cluster";
    if let Leadership::Relayed(answer) =
        forward_to_leader(&daemon, &db, Method::POST, path, Some(&body)).await?
    {
        return from_json(answer);
    }
    let _serialised = daemon.membership_lock.lock().await;
    super::heartbeat::reconcile(&db).await?;
    if daemon.truststore.by_address(&request.address).is_some() {
        return Err(Error::invalid(format!(
            "Remote with address {:?} exists",
            request.address
        )));
    }
    crate::api_extensions::compare(&daemon.extensions, &request.extensions)?;

    let joiner = request.clone();
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        for member in members::list(tx)? {
            if member.address == joiner.address {
                return Err(Error::invalid(format!(
                    "Remote with address {:?} exists",
                    joiner.address
                )));
            }
            if member.name == joiner.name {
                return Err(Error::invalid(format!(
                    "A cluster member with name {:?} already exists",
                    joiner.name
                )));
            }
        }
        // Compare the presented secret with every stored hash, in constant time each.
        let records = tx.query(
            "SELECT id, name, secret, expiry_date FROM core_token_records",
            [],
        )?;
        let mut found = None;
        for row in &records.rows {
            if let (SqlValue::Integer(id), SqlValue::Text(name), SqlValue::Text(hash)) =
                (&row[0], &row[1], &row[2])
                && token::secret_matches(&joiner.secret, hash)
            {
                let expiry = match &row[3] {
                    SqlValue::Text(expiry) => parse_time(expiry),
                    _ => None,
                };
                found = Some((*id, name.clone(), expiry));
            }
        }
        let (id, name, expiry) =
            found.ok_or_else(|| Error::not_found("CoreTokenRecord not found"))?;
        token::validate_join(
            &name,
            expiry,
            OffsetDateTime::now_utc(),
            &joiner.name,
            &joiner.certificate,
        )?;
        members::insert(
            tx,
            &ClusterMember {
                role: PENDING.to_string(),
                last_heartbeat: NEVER.to_string(),
                ..joiner.clone()
            },
        )?;
        tx.execute("DELETE FROM core_token_records WHERE id = ?1", [id])?;
        Ok(())
    })
    .await?;

    // A5
    let joiner = Remote {
        name: request.name.clone(),
        address: request.address.clone(),
        certificate: request.certificate.clone(),
    };
    let others: Vec<Remote> = daemon.truststore.list();
    daemon.truststore.add(joiner.clone())?;
    daemon
        .notify(
            &others,
            Method::POST,
            "/core/internal/truststore",
            Some(&joiner),
        )
        .await;

    // A6
    let own = daemon
        .member_address()
        .and_then(|address| daemon.truststore.by_address(&address))
        .ok_or_else(|| Error::internal("This member is missing from its own truststore"))?;
    let cluster_cert = read(&daemon.state_dir.cluster_cert())?;
    let cluster_key = read(&daemon.state_dir.cluster_key())?;
    Ok(TokenResponse {
        cluster_cert,
        cluster_key,
        cluster_members: others,
        cluster_additional_certs: Default::default(),
        trusted_member: own,
    })
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|err| Error::from(err).context(format!("Failed to read {}: ", path.display())))
}

/// `POST /core/internal/raft/join` (J5): adds an admitted joiner to Raft as a learner, lets it
/// catch up, gives it its role, and returns the role.
pub(crate) async fn raft_join(daemon: Arc<Daemon>, request: RaftJoinRequest) -> Result<String> {
    let db = daemon.online_database()?;
    let body = to_json(&request)?;
    if let Leadership::Relayed(answer) =
        forward_to_leader(&daemon, &db, Method::POST, RAFT_JOIN_PATH, Some(&body)).await?
    {
        return from_json(answer);
    }
    let _serialised = daemon.membership_lock.lock().await;
    let name = request.name.clone();
    let certificate = request.certificate.clone();
    let (pending, stand_bys) = db
        .transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
            let rows = members::list(tx)?;
            let pending = rows
                .iter()
                .any(|m| m.name == name && m.certificate == certificate && m.role == PENDING);
            let stand_bys = rows.iter().filter(|m| m.role == STAND_BY).count();
            Ok((pending, stand_bys))
        })
        .await?;
    if !pending {
        return Err(Error::forbidden(format!(
            "No join in progress for {:?} with this certificate",
            request.name
        )));
    }
    let node = MemberNode {
        name: request.name.clone(),
        address: request.address.clone(),
        certificate: request.certificate.clone(),
        failure_domain: request.failure_domain,
    };
    let raft = db.raft();
    let membership_error = |err: &dyn std::fmt::Display| {
        Error::unavailable(format!("Failed to add {} to Raft: {err}", request.name))
    };
    tokio::time::timeout(
        CATCH_UP_TIMEOUT,
        raft.add_learner(request.node_id, node, true),
    )
    .await
    .map_err(|_| membership_error(&"timed out waiting for the member to catch up"))?
    .map_err(|err| membership_error(&err))?;
    // A voter counts if it answers now (SPEC §8.2: a member joining while a voter is
    // offline becomes a voter).
    let probes = db
        .members()
        .into_iter()
        .filter(|(_, _, voter)| *voter)
        .map(|(_, node, _)| {
            let daemon = daemon.clone();
            async move { daemon.probe_ready(&node.address, PROBE_TIMEOUT).await }
        });
    let online_voters = futures::future::join_all(probes)
        .await
        .into_iter()
        .filter(|online| *online)
        .count();
    let role = if online_voters < VOTERS_TARGET {
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([request.node_id]));
        tokio::time::timeout(CATCH_UP_TIMEOUT, raft.change_membership(change, false))
            .await
            .map_err(|_| membership_error(&"timed out promoting the member to voter"))?
            .map_err(|err| membership_error(&err))?;
        VOTER
    } else if stand_bys < STAND_BYS_TARGET {
        STAND_BY
    } else {
        SPARE
    };
    let name = request.name.clone();
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        members::set_role(tx, &name, role, &format_time(OffsetDateTime::now_utc()))
    })
    .await?;
    // The joiner is alive now: until it answers its first heartbeat, a rebalance must not
    // take it for an offline member and demote it.
    daemon.record_seen(
        &BTreeSet::from([request.name.clone()]),
        std::time::Instant::now(),
    );
    tracing::info!("{} joined Raft as {role}", request.name);
    Ok(role.to_string())
}

fn to_json(value: &impl Serialize) -> Result<Value> {
    serde_json::to_value(value)
        .map_err(|err| Error::internal(format!("Failed to encode the request: {err}")))
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|err| Error::internal(format!("Unexpected answer from the leader: {err}")))
}
