//! The leader's heartbeat rounds (SPEC §8.3), reconciliation of the members table with Raft
//! (§8.4) and role rebalancing (§8.2).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::db::raft::{MemberNode, NodeId};
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::db::{Database, ReadMode};
use crate::hooks::RoleChange;
use crate::trust::Remote;
use crate::types::ClusterMember;
use crate::{Error, Result};

use super::members::{self, PENDING, SPARE, STAND_BY, VOTER};
use super::tokens::format_time;

/// How many voters and stand-bys the leader aims for (SPEC §1.2).
pub(crate) const VOTERS_TARGET: usize = 3;
pub(crate) const STAND_BYS_TARGET: usize = 3;

/// `POST /core/internal/heartbeat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct HeartbeatInfo {
    /// Start a round now (control socket, leader only).
    #[serde(default)]
    pub begin_round: bool,
    /// The leader's address.
    #[serde(default)]
    pub leader_address: String,
    /// The highest internal schema version in the members table.
    #[serde(default)]
    pub max_schema_internal: u64,
    /// The highest external schema version in the members table.
    #[serde(default)]
    pub max_schema_external: u64,
    /// Every row of the members table, by address.
    #[serde(default)]
    pub cluster_members: BTreeMap<String, ClusterMember>,
}

/// Runs a heartbeat round every heartbeat interval while this member leads, until the
/// member's services stop.
pub(crate) async fn run(daemon: Arc<Daemon>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(daemon.heartbeat_interval) => {}
        }
        let Ok(db) = daemon.online_database() else {
            continue;
        };
        if !db.is_leader() {
            continue;
        }
        // A round can wait on the database for a long time when the cluster is in trouble;
        // stopping must not wait for it (a round's transactions are atomic).
        tokio::select! {
            _ = stop.cancelled() => return,
            done = round(&daemon, &db) => if let Err(err) = done {
                tracing::warn!("Heartbeat round failed: {err}");
            },
        }
    }
}

/// One round on the leader.
pub(crate) async fn round(daemon: &Arc<Daemon>, db: &Arc<Database>) -> Result<()> {
    let interval = daemon.heartbeat_interval;
    // Membership changes are serialised on the leader, but not for the whole round: the
    // fan-out to members below may take two intervals and must not hold up a join.
    let before = {
        let _serialised = daemon.membership_lock.lock().await;
        reconcile(db).await?
    };
    let own = daemon.member_address().unwrap_or_default();

    // Step 2: tell every other member.
    let info = HeartbeatInfo {
        begin_round: false,
        leader_address: own.clone(),
        max_schema_internal: before
            .iter()
            .map(|m| m.schema_internal_version)
            .max()
            .unwrap_or(0),
        max_schema_external: before
            .iter()
            .map(|m| m.schema_external_version)
            .max()
            .unwrap_or(0),
        cluster_members: before
            .iter()
            .map(|m| (m.address.clone(), m.clone()))
            .collect(),
    };
    let body = serde_json::to_value(&info)
        .map_err(|err| Error::internal(format!("Failed to encode the heartbeat: {err}")))?;
    let sends = before
        .iter()
        .filter(|m| m.address != own && m.role != PENDING)
        .map(|member| {
            let body = body.clone();
            async move {
                let answered = match daemon.peer_client(&member.address) {
                    Ok(client) => client
                        .with_timeout(interval * 2)
                        .query::<Value>(Method::POST, "/core/internal/heartbeat", Some(&body))
                        .await
                        .is_ok(),
                    Err(_) => false,
                };
                (member.name.clone(), answered)
            }
        });
    let answers = futures::future::join_all(sends).await;
    let now = Instant::now();
    let mut answered: BTreeSet<String> = answers
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(name, _)| name.clone())
        .collect();
    if let Some(own_row) = before.iter().find(|m| m.address == own) {
        answered.insert(own_row.name.clone());
    }
    daemon.record_seen(&answered, now);

    // Step 3: heartbeats, roles from Raft, expired tokens.
    let stamp = format_time(time::OffsetDateTime::now_utc());
    let names: Vec<String> = answered.iter().cloned().collect();
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        for name in &names {
            tx.execute(
                "UPDATE core_cluster_members SET heartbeat = ?2 WHERE name = ?1",
                [name, &stamp],
            )?;
        }
        super::tokens::delete_expired(tx, &stamp)
    })
    .await?;

    // Step 4: rebalance, one change.
    let after = {
        let serialised = daemon.membership_lock.lock().await;
        rebalance(daemon, db, &serialised).await?;
        reconcile(db).await?
    };

    // Step 5: OnHeartbeat.
    let old: HashMap<&str, &str> = before
        .iter()
        .map(|m| (m.name.as_str(), m.role.as_str()))
        .collect();
    let roles = after
        .iter()
        .map(|m| {
            let change = RoleChange {
                old: old.get(m.name.as_str()).unwrap_or(&"").to_string(),
                new: m.role.clone(),
            };
            (m.name.clone(), change)
        })
        .collect();
    if let Err(err) = daemon.hooks.0.on_heartbeat(daemon.state(), roles).await {
        tracing::warn!("OnHeartbeat failed: {err}");
    }
    Ok(())
}

/// The role a Raft member should have in the table.
fn role_from_raft(voter: bool, table_role: Option<&str>) -> &'static str {
    match (voter, table_role) {
        (true, _) => VOTER,
        (false, Some(STAND_BY)) => STAND_BY,
        (false, _) => SPARE,
    }
}

/// Makes the members table match Raft (SPEC §8.4): inserts missing rows, fixes wrong ones,
/// deletes rows with no Raft member behind them (PENDING rows stay). Returns the rows.
pub(crate) async fn reconcile(db: &Arc<Database>) -> Result<Vec<ClusterMember>> {
    let database = db.clone();
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        // Read in the closure, so a run that conflicts with a role change (a join promoting
        // its member writes the role after the Raft change) runs again with the new Raft
        // membership, instead of writing back the role of the old one.
        let raft: Vec<(NodeId, MemberNode, bool)> = database.members();
        let rows = members::list(tx)?;
        for (_, node, voter) in &raft {
            let row = rows.iter().find(|m| m.name == node.name);
            let role = role_from_raft(*voter, row.map(|m| m.role.as_str()));
            match row {
                None => members::insert(
                    tx,
                    &ClusterMember {
                        name: node.name.clone(),
                        address: node.address.clone(),
                        certificate: node.certificate.clone(),
                        role: role.to_string(),
                        last_heartbeat: crate::types::NEVER.to_string(),
                        ..ClusterMember::default()
                    },
                )?,
                Some(row)
                    if row.address != node.address
                        || row.certificate != node.certificate
                        || row.role != role =>
                {
                    tx.execute(
                        "UPDATE core_cluster_members SET address = ?2, certificate = ?3, role = ?4 WHERE name = ?1",
                        [&node.name, &node.address, &node.certificate, role],
                    )?;
                }
                Some(_) => {}
            }
        }
        for row in &rows {
            if row.role != PENDING && !raft.iter().any(|(_, node, _)| node.name == row.name) {
                tx.execute("DELETE FROM core_cluster_members WHERE name = ?1", [&row.name])?;
            }
        }
        members::list(tx)
    })
    .await
    .map_err(|err| err.context("Failed to reconcile cluster membership: "))
}

/// Applies at most one role change (SPEC §8.2).
///
/// Runs under the membership lock (its guard is the third argument), and reads which members
/// are online only once it holds it: a join that ran while it waited has made its member
/// a voter and recorded it as seen, and an older view of who is online would take the new
/// voter for an offline one and demote it.
pub(crate) async fn rebalance(
    daemon: &Daemon,
    db: &Arc<Database>,
    serialised: &tokio::sync::MutexGuard<'_, ()>,
) -> Result<()> {
    debug_assert!(std::ptr::eq(
        tokio::sync::MutexGuard::mutex(serialised),
        &daemon.membership_lock
    ));
    let online = daemon.online_members(daemon.heartbeat_interval * 2);
    let rows = db
        .transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, members::list)
        .await?;
    let raft = db.members();
    let leader = db.id();
    let is_online = |id: NodeId, name: &str| id == leader || online.contains(name);
    let role_of = |name: &str| rows.iter().find(|m| m.name == name).map(|m| m.role.clone());
    let voters: Vec<&(NodeId, MemberNode, bool)> = raft.iter().filter(|(_, _, v)| *v).collect();
    let online_voters: Vec<_> = voters
        .iter()
        .filter(|(id, n, _)| is_online(*id, &n.name))
        .collect();
    let voter_domains: BTreeSet<u64> = online_voters
        .iter()
        .map(|(_, n, _)| n.failure_domain)
        .collect();
    // Candidates for promotion: online non-voters, stand-bys first, then a new failure
    // domain, then the lowest Raft id.
    let mut candidates: Vec<&(NodeId, MemberNode, bool)> = raft
        .iter()
        .filter(|(id, n, v)| !v && is_online(*id, &n.name))
        .collect();
    candidates.sort_by_key(|(id, n, _)| {
        (
            role_of(&n.name).as_deref() != Some(STAND_BY),
            voter_domains.contains(&n.failure_domain),
            *id,
        )
    });

    // Rule 1: promote while fewer than the target of online voters.
    if online_voters.len() < VOTERS_TARGET
        && let Some((id, node, _)) = candidates.first()
    {
        tracing::info!("Promoting {} to voter", node.name);
        return change_membership(db, ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true)
            .await;
    }
    // Rule 2: demote an offline voter while there are more voters than the target; never
    // the leader.
    if voters.len() > VOTERS_TARGET
        && let Some((id, node, _)) = voters
            .iter()
            .find(|(id, n, _)| *id != leader && !is_online(*id, &n.name))
    {
        tracing::info!("Demoting offline voter {} to spare", node.name);
        change_membership(db, ChangeMembers::RemoveVoters(BTreeSet::from([*id])), true).await?;
        return set_role(db, &node.name, SPARE).await;
    }
    // Rules 3 and 4: stand-bys (table roles of learners).
    let online_stand_bys = raft
        .iter()
        .filter(|(id, n, v)| {
            !v && is_online(*id, &n.name) && role_of(&n.name).as_deref() == Some(STAND_BY)
        })
        .count();
    let online_spare = candidates
        .iter()
        .find(|(_, n, _)| role_of(&n.name).as_deref() != Some(STAND_BY));
    if online_stand_bys < STAND_BYS_TARGET
        && let Some((_, node, _)) = online_spare
    {
        tracing::info!("Promoting spare {} to stand-by", node.name);
        return set_role(db, &node.name, STAND_BY).await;
    }
    if let Some((_, node, _)) = raft.iter().find(|(id, n, v)| {
        !v && !is_online(*id, &n.name) && role_of(&n.name).as_deref() == Some(STAND_BY)
    }) && online_spare.is_some()
    {
        tracing::info!("Demoting offline stand-by {} to spare", node.name);
        return set_role(db, &node.name, SPARE).await;
    }
    Ok(())
}

async fn set_role(db: &Arc<Database>, name: &str, role: &'static str) -> Result<()> {
    let name = name.to_string();
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        tx.execute(
            "UPDATE core_cluster_members SET role = ?2 WHERE name = ?1",
            [&name, role],
        )?;
        Ok(())
    })
    .await
}

/// Applies a Raft membership change and waits for its commit. `retain` keeps removed voters
/// as learners.
pub(crate) async fn change_membership(
    db: &Database,
    change: ChangeMembers<NodeId, MemberNode>,
    retain: bool,
) -> Result<()> {
    tokio::time::timeout(DEFAULT_TIMEOUT, db.raft().change_membership(change, retain))
        .await
        .map_err(|_| Error::unavailable("Timed out changing the Raft membership"))?
        .map_err(|err| {
            Error::unavailable(format!("Failed to change the Raft membership: {err}"))
        })?;
    Ok(())
}

/// The environment variable naming the executable a member runs when the cluster has other
/// schema versions than its own (SPEC §8.3).
const SCHEMA_UPDATE_ENV: &str = "SCHEMA_UPDATE";

/// The longest random delay before `$SCHEMA_UPDATE` runs, so members do not all update at
/// once.
const SCHEMA_UPDATE_MAX_DELAY_MS: u32 = 30_000;

/// A receiver's side of a heartbeat: its truststore becomes exactly the members listed, and
/// a member whose versions differ from the cluster's highest runs `$SCHEMA_UPDATE`.
pub(crate) fn receive(daemon: &Daemon, info: &HeartbeatInfo) -> Result<()> {
    schedule_schema_update(daemon, info);
    let remotes: Vec<Remote> = info
        .cluster_members
        .values()
        .map(|m| Remote {
            name: m.name.clone(),
            address: m.address.clone(),
            certificate: m.certificate.clone(),
        })
        .collect();
    if remotes.is_empty() {
        return Err(Error::invalid("A heartbeat must list the cluster members"));
    }
    daemon.truststore.replace_all(remotes)
}

/// Rewrites this member's truststore to the set derived from its local view (SPEC §8.4): one
/// entry per Raft member, plus one per PENDING row of the local database.
pub(crate) async fn repair_truststore(daemon: &Daemon, db: &Arc<Database>) -> Result<()> {
    let mut remotes: Vec<Remote> = db
        .members()
        .into_iter()
        .map(|(_, node, _)| Remote {
            name: node.name,
            address: node.address,
            certificate: node.certificate,
        })
        .collect();
    if remotes.is_empty() {
        return Ok(());
    }
    let rows = db
        .transaction(ReadMode::Local, DEFAULT_TIMEOUT, members::list)
        .await?;
    for row in rows.into_iter().filter(|m| m.role == PENDING) {
        if !remotes.iter().any(|r| r.name == row.name) {
            remotes.push(Remote {
                name: row.name,
                address: row.address,
                certificate: row.certificate,
            });
        }
    }
    daemon.truststore.replace_all(remotes)
}

/// Runs `$SCHEMA_UPDATE` (if set) once, after a random delay of up to 30 s, when this
/// member's row has other schema versions than the highest of the heartbeat.
fn schedule_schema_update(daemon: &Daemon, info: &HeartbeatInfo) {
    let Some(program) = std::env::var_os(SCHEMA_UPDATE_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    let own = daemon.member_address().unwrap_or_default();
    let Some(row) = info.cluster_members.get(&own) else {
        return;
    };
    let versions = (row.schema_internal_version, row.schema_external_version);
    if versions == (info.max_schema_internal, info.max_schema_external)
        || daemon
            .schema_update_scheduled
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    let mut random = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let delay = Duration::from_millis(u64::from(
        u32::from_le_bytes(random) % SCHEMA_UPDATE_MAX_DELAY_MS,
    ));
    tracing::info!(
        "Schema versions {versions:?} differ from the cluster's ({}, {}); running {program:?} in {delay:?}",
        info.max_schema_internal,
        info.max_schema_external
    );
    let stop = daemon.member_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let shown = program.clone();
        let ran = tokio::task::spawn_blocking(move || std::process::Command::new(program).status());
        match ran.await {
            Ok(Ok(status)) if status.success() => tracing::info!("{shown:?} finished"),
            Ok(Ok(status)) => tracing::warn!("{shown:?} failed: {status}"),
            Ok(Err(err)) => tracing::warn!("Failed to run {shown:?}: {err}"),
            Err(err) => tracing::warn!("Failed to run {shown:?}: {err}"),
        }
    });
}
