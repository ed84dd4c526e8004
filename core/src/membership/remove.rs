//! Removal of a member (SPEC §9), on the leader, and the reset of the removed member.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use openraft::ChangeMembers;
use serde_json::{Value, json};

use crate::client::Client;
use crate::daemon::Daemon;
use crate::db::ReadMode;
use crate::db::raft::NodeId;
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::hooks::names;
use crate::trust::Remote;
use crate::{Error, Result};

use super::admission::{Leadership, forward_to_leader};
use super::heartbeat::change_membership;
use super::members::{self, PENDING};

/// How long requests to the victim may take; 5 s with `force` so a black-holed victim does
/// not stall the removal (SPEC §9.3).
const VICTIM_TIMEOUT: Duration = Duration::from_secs(30);
const FORCED_VICTIM_TIMEOUT: Duration = Duration::from_secs(5);

/// What a removal request asks for.
#[derive(Clone, Debug)]
pub(crate) struct Removal {
    /// The member's name.
    pub name: String,
    /// Ignore the victim's failures (SPEC §9.3).
    pub force: bool,
    /// The victim's address, to remove orphans.
    pub address: Option<String>,
    /// The fingerprint of the caller's certificate, when it came over the network: the
    /// victim itself asking (the rollback of a failed join) skips PreRemove and the reset.
    pub caller_fingerprint: Option<String>,
}

impl Removal {
    /// The path of the DELETE request for this removal.
    pub fn path(&self) -> String {
        removal_path(&self.name, self.force, self.address.as_deref())
    }
}

/// The path of `DELETE /core/1.0/cluster/{name}[?force=1][&address=A]`. A plain function: the
/// query serializer is not `Send`, so it must not live across an `await`.
pub(crate) fn removal_path(name: &str, force: bool, address: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if force {
        query.append_pair("force", "1");
    }
    if let Some(address) = address {
        query.append_pair("address", address);
    }
    let query = query.finish();
    let name = form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    match query.is_empty() {
        true => format!("/core/1.0/cluster/{name}"),
        false => format!("/core/1.0/cluster/{name}?{query}"),
    }
}

/// The victim as found in Raft, the members table and the truststore.
struct Victim {
    name: String,
    address: String,
    raft_id: Option<NodeId>,
    pending: bool,
    in_table: bool,
    certificate: Option<String>,
}

/// `DELETE /core/1.0/cluster/{name}` (SPEC §9.2).
pub(crate) async fn remove(daemon: Arc<Daemon>, removal: Removal) -> Result<Removed> {
    let db = daemon.online_database()?;
    if let Leadership::Relayed(_) =
        forward_to_leader(&daemon, &db, Method::DELETE, &removal.path(), None).await?
    {
        return Ok(Removed::Other);
    }
    let serialised = daemon.membership_lock.lock().await;
    super::heartbeat::reconcile(&db).await?;
    let rows = db
        .transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, members::list)
        .await?;
    let raft_members = db.members();
    let trusted = daemon.truststore.list();

    // Step 3: resolve the victim.
    let by_name = |name: &str| -> Option<String> {
        rows.iter()
            .find(|m| m.name == name)
            .map(|m| m.address.clone())
            .or_else(|| {
                raft_members
                    .iter()
                    .find(|(_, node, _)| node.name == name)
                    .map(|(_, node, _)| node.address.clone())
            })
            .or_else(|| {
                trusted
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| r.address.clone())
            })
    };
    let address = match (&removal.address, by_name(&removal.name)) {
        (Some(given), Some(known)) if *given != known => {
            return Err(Error::invalid(format!(
                "Member {:?} has address {known:?}, not {given:?}",
                removal.name
            )));
        }
        (Some(given), _) => given.clone(),
        (None, Some(known)) => known,
        (None, None) => {
            return Err(Error::not_found(format!(
                "No remote exists with the given name {:?}",
                removal.name
            )));
        }
    };
    let matches =
        |name: &str, member_address: &str| name == removal.name || member_address == address;
    let row = rows.iter().find(|m| matches(&m.name, &m.address));
    let raft_entry = raft_members
        .iter()
        .find(|(_, node, _)| matches(&node.name, &node.address));
    let in_truststore = trusted.iter().any(|r| matches(&r.name, &r.address));
    if row.is_none() && raft_entry.is_none() && !in_truststore {
        return Err(Error::not_found(format!(
            "No remote exists with the given name {:?}",
            removal.name
        )));
    }
    let victim = Victim {
        name: removal.name.clone(),
        address: address.clone(),
        raft_id: raft_entry.map(|(id, _, _)| *id),
        pending: row.is_some_and(|m| m.role == PENDING),
        in_table: row.is_some(),
        certificate: row
            .map(|m| m.certificate.clone())
            .or_else(|| raft_entry.map(|(_, node, _)| node.certificate.clone()))
            .or_else(|| {
                trusted
                    .iter()
                    .find(|r| matches(&r.name, &r.address))
                    .map(|r| r.certificate.clone())
            }),
    };
    let from_victim = match (&removal.caller_fingerprint, &victim.certificate) {
        (Some(caller), Some(certificate)) => {
            crate::certs::fingerprint_pem(certificate).is_ok_and(|own| own == *caller)
        }
        _ => false,
    };

    // Step 4: refusals.
    let voters = raft_members.iter().filter(|(_, _, voter)| *voter).count();
    if !rows.iter().any(|m| m.role != PENDING) {
        return Err(Error::invalid(
            "Cannot remove cluster members, there are no remaining non-pending members",
        ));
    }
    if victim.pending && voters < 2 {
        return Err(Error::invalid(
            "Cannot remove a pending cluster member while fewer than 2 voters are present",
        ));
    }
    if victim.raft_id.is_some() && raft_members.len() < 2 {
        return Err(Error::invalid(format!(
            "Cannot leave a cluster with {} members",
            raft_members.len()
        )));
    }
    let removing_self = victim.raft_id == Some(db.id());

    // Step 5: with two members, the one that stays must be a voter.
    if raft_members.len() == 2 && victim.raft_id.is_some() {
        let other: BTreeSet<NodeId> = raft_members
            .iter()
            .filter(|(id, _, voter)| Some(*id) != victim.raft_id && !voter)
            .map(|(id, _, _)| *id)
            .collect();
        if !other.is_empty() {
            change_membership(&db, ChangeMembers::AddVoterIds(other), false).await?;
        }
    }

    // Step 7: PreRemove on the victim.
    let victim_timeout = match removal.force {
        true => FORCED_VICTIM_TIMEOUT,
        false => VICTIM_TIMEOUT,
    };
    if !from_victim {
        let path = format!(
            "/core/internal/hooks/{}?target={}",
            names::PRE_REMOVE,
            victim.name
        );
        let pre_remove = match removing_self {
            true => {
                daemon
                    .hooks
                    .0
                    .pre_remove(daemon.state(), removal.force)
                    .await
            }
            false => {
                let body = json!({ "force": removal.force });
                match victim_client(&daemon, &victim.address, victim_timeout) {
                    Ok(client) => client
                        .as_notifier()
                        .query::<Value>(Method::POST, &path, Some(&body))
                        .await
                        .map(|_| ()),
                    Err(err) => Err(err),
                }
            }
        };
        if let Err(err) = pre_remove {
            match removal.force {
                true => tracing::warn!(
                    "PreRemove on {} failed (forced removal): {err}",
                    victim.name
                ),
                false => return Err(err.context("Failed to run pre-remove hook: ")),
            }
        }
    }

    // Step 8: the row, then Raft.
    if victim.in_table {
        let (name, address) = (victim.name.clone(), victim.address.clone());
        db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
            tx.execute(
                "DELETE FROM core_cluster_members WHERE address = ?1 OR name = ?2",
                [&address, &name],
            )?;
            Ok(())
        })
        .await?;
    }
    let remaining: Vec<Remote> = trusted
        .iter()
        .filter(|r| !matches(&r.name, &r.address))
        .cloned()
        .collect();
    if let Some(id) = victim.raft_id {
        // Without `retain`, a removed voter is not kept as a learner either.
        let change = match raft_entry.is_some_and(|(_, _, voter)| *voter) {
            true => ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            false => ChangeMembers::RemoveNodes(BTreeSet::from([id])),
        };
        change_membership(&db, change, false).await?;
    }
    if removing_self {
        // This member has left Raft; the others still trust it until told otherwise, so
        // PostRemove goes out before the truststore entries are dropped.
        post_remove_everywhere(&daemon, &remaining, removal.force, false).await?;
        drop_from_truststores(&daemon, &remaining, &victim.name).await;
        return Ok(Removed::ThisMember);
    }

    // Step 9: truststores.
    if let Err(err) = daemon.truststore.remove(&victim.name)
        && !removal.force
        && in_truststore
    {
        tracing::warn!(
            "Failed to remove {} from the truststore: {err}",
            victim.name
        );
    }
    drop_from_truststores(&daemon, &remaining, &victim.name).await;

    // Step 10: reset the victim.
    if !from_victim {
        let path = format!(
            "/core/internal/cluster/{}{}",
            victim.name,
            if removal.force { "?force=1" } else { "" }
        );
        let reset = match victim_client(&daemon, &victim.address, victim_timeout) {
            Ok(client) => client
                .query::<Value>(Method::PUT, &path, None)
                .await
                .map(|_| ()),
            Err(err) => Err(err),
        };
        if let Err(err) = reset {
            match removal.force {
                true => tracing::warn!("Reset of {} failed (forced removal): {err}", victim.name),
                false => return Err(err.context("Failed to reset the removed member: ")),
            }
        }
    }

    // Step 11.
    if let Err(err) = super::heartbeat::rebalance(&daemon, &db, &serialised).await {
        tracing::warn!("Rebalancing after the removal failed: {err}");
    }

    // Step 12: PostRemove here, then on every remaining member.
    post_remove_everywhere(&daemon, &remaining, removal.force, true).await?;
    Ok(Removed::Other)
}

/// Who was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// Another member (it was reset through its own endpoint).
    Other,
    /// This member: it must reset once its answer has been sent (SPEC §9.4).
    ThisMember,
}

/// Tells `members` to stop trusting `name` (they fan out no further).
async fn drop_from_truststores(daemon: &Daemon, members: &[Remote], name: &str) {
    let path = format!("/core/internal/truststore/{name}");
    daemon
        .notify(members, Method::DELETE, &path, None::<&Value>)
        .await;
}

/// A client of the victim with its own deadline.
fn victim_client(daemon: &Daemon, address: &str, timeout: Duration) -> Result<Client> {
    Ok(daemon.peer_client(address)?.with_timeout(timeout))
}

/// Runs PostRemove on this member (if `here`) and on every member of `others`, in parallel.
async fn post_remove_everywhere(
    daemon: &Arc<Daemon>,
    others: &[Remote],
    force: bool,
    here: bool,
) -> Result<()> {
    if here {
        daemon.hooks.0.post_remove(daemon.state(), force).await?;
    }
    let own = daemon.member_address();
    let calls = others
        .iter()
        .filter(|member| Some(&member.address) != own.as_ref())
        .map(|member| async move {
            let path = format!(
                "/core/internal/hooks/{}?target={}",
                names::POST_REMOVE,
                member.name
            );
            daemon
                .peer_client(&member.address)?
                .as_notifier()
                .query::<Value>(Method::POST, &path, Some(&json!({ "force": force })))
                .await
                .map(|_| ())
                .map_err(|err| err.context(format!("PostRemove on {} failed: ", member.name)))
        });
    for result in futures::future::join_all(calls).await {
        result?;
    }
    Ok(())
}
