//! `/core/1.0/cluster`, `/core/1.0/tokens/{name}` and the internal membership endpoints:
//! admission (`/core/internal/cluster`), Raft join and truststore notifications.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};

use crate::daemon::{Daemon, DatabaseState};
use crate::db::ReadMode;
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::db::upgrade;
use crate::membership::heartbeat::{self, HeartbeatInfo};
use crate::membership::{self, Removal, Removed, members, tokens};
use crate::rest::access::Origin;
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::trust::Remote;
use crate::types::ClusterMember;
use crate::{Error, Result};

/// How long each member gets to answer the readiness probe of `GET /core/1.0/cluster`.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /core/1.0/cluster` (SPEC §8.5).
pub(super) fn members() -> Endpoint {
    Endpoint::new("core/1.0/cluster")
        .before_init()
        .get(Action::trusted(handler(get_members)))
}

/// `DELETE /core/1.0/cluster/{name}[?force=1][&address=A]` (SPEC §9).
pub(super) fn member() -> Endpoint {
    Endpoint::new("core/1.0/cluster/{name}").delete(Action::trusted(handler(delete_member)))
}

async fn delete_member(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let param = |name: &str| {
        request
            .query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let caller_fingerprint = match &request.origin {
        Origin::Network {
            client_certificate: Some(certificate),
            ..
        } => Some(certificate.fingerprint.clone()),
        _ => None,
    };
    let removal = Removal {
        name: request.vars.get("name").cloned().unwrap_or_default(),
        force: param("force").is_some_and(|v| matches!(v.as_str(), "1" | "true")),
        address: param("address").filter(|a| !a.is_empty()),
        caller_fingerprint,
    };
    match membership::remove(daemon.clone(), removal).await? {
        Removed::Other => Ok(Response::empty()),
        Removed::ThisMember => Ok(Response::empty().notify_when_sent(reset_when_sent(daemon))),
    }
}

/// Resets this member once the answer that announces it has been sent (at most 30 s later).
fn reset_when_sent(daemon: Arc<Daemon>) -> tokio::sync::oneshot::Sender<()> {
    let (sent, when_sent) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), when_sent).await;
        let _serialised = daemon.init_lock.lock().await;
        membership::reset(&daemon, membership::RESET_REMOVED).await;
    });
    sent
}

/// `PUT /core/internal/cluster/{name}`: resets this member, which was removed (SPEC §9.4).
pub(super) fn reset() -> Endpoint {
    Endpoint::new("core/internal/cluster/{name}").put(Action::trusted(handler(put_reset)))
}

async fn put_reset(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let name = request.vars.get("name").cloned().unwrap_or_default();
    let own = daemon.server_info().name;
    if name != own {
        return Err(Error::invalid(format!(
            "Cannot reset member {name:?}: this member is {own:?}"
        )));
    }
    Ok(Response::empty().notify_when_sent(reset_when_sent(daemon)))
}

async fn get_members(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    let state = daemon.database_state();
    if !matches!(state, DatabaseState::Online | DatabaseState::Waiting { .. }) {
        return Err(Error::unavailable(state.text()));
    }
    let db = daemon.database()?;
    let rows = db
        .transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, members::list)
        .await?;
    if let DatabaseState::Waiting { .. } = state {
        // SPEC §8.5: nothing is probed while the database waits for an upgrade.
        let own = upgrade::CodeVersions::of(&daemon.schema_updates, &daemon.extensions);
        let members: Vec<ClusterMember> = rows
            .into_iter()
            .map(|member| ClusterMember {
                status: upgrade::waiting_status(&own, &member).to_string(),
                ..member
            })
            .collect();
        return Ok(Response::sync(json!(members)));
    }
    let probes = rows.into_iter().map(|member| {
        let daemon = daemon.clone();
        async move {
            let ready = daemon.probe_ready(&member.address, PROBE_TIMEOUT).await;
            ClusterMember {
                status: if ready { "ONLINE" } else { "UNREACHABLE" }.to_string(),
                ..member
            }
        }
    });
    let members = futures::future::join_all(probes).await;
    Ok(Response::sync(json!(members)))
}

/// `DELETE /core/1.0/tokens/{name}`.
pub(super) fn token() -> Endpoint {
    Endpoint::new("core/1.0/tokens/{name}").delete(Action::trusted(handler(delete_token)))
}

async fn delete_token(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let name = request.vars.get("name").cloned().unwrap_or_default();
    tokens::revoke(&daemon, name).await?;
    Ok(Response::empty())
}

/// `POST /core/internal/cluster`: admission of a joiner holding a token (SPEC §7.3 A1–A6).
pub(super) fn admission() -> Endpoint {
    Endpoint::new("core/internal/cluster")
        .before_init()
        .post(Action::untrusted(handler(post_admission)))
}

async fn post_admission(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let joiner: ClusterMember = request.json()?;
    let response = membership::admit(daemon, joiner).await?;
    Ok(Response::sync(json!(response)))
}

/// `POST /core/internal/raft/join` (SPEC §7.3 J5).
pub(super) fn raft_join() -> Endpoint {
    Endpoint::new("core/internal/raft/join")
        .before_init()
        .network_only()
        .post(Action::trusted(handler(post_raft_join)))
}

async fn post_raft_join(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let role = membership::raft_join(daemon, request.json()?).await?;
    Ok(Response::sync(json!(role)))
}

/// `POST /core/internal/truststore`: trust a member, and tell the others unless this is a
/// notification.
pub(super) fn truststore() -> Endpoint {
    Endpoint::new("core/internal/truststore")
        .before_init()
        .post(Action::trusted(handler(post_truststore)))
}

/// `DELETE /core/internal/truststore/{name}`: stop trusting a member, and tell the others
/// unless this is a notification.
pub(super) fn truststore_entry() -> Endpoint {
    Endpoint::new("core/internal/truststore/{name}")
        .before_init()
        .delete(Action::trusted(handler(delete_truststore)))
}

async fn delete_truststore(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let name = request.vars.get("name").cloned().unwrap_or_default();
    let others = daemon.truststore.list();
    daemon.truststore.remove(&name)?;
    if !request.is_notification() {
        let path = format!("/core/internal/truststore/{name}");
        daemon
            .notify(&others, Method::DELETE, &path, None::<&Value>)
            .await;
    }
    Ok(Response::empty())
}

async fn post_truststore(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let remote: Remote = request.json()?;
    let others = daemon.truststore.list();
    daemon.truststore.add(remote.clone())?;
    if !request.is_notification() {
        daemon
            .notify(
                &others,
                Method::POST,
                "/core/internal/truststore",
                Some(&remote),
            )
            .await;
    }
    Ok(Response::empty())
}

/// `POST /core/internal/heartbeat` (SPEC §8.3).
pub(super) fn heartbeat() -> Endpoint {
    Endpoint::new("core/internal/heartbeat").post(Action::trusted(handler(post_heartbeat)))
}

async fn post_heartbeat(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let info: HeartbeatInfo = request.json()?;
    if info.begin_round {
        let db = daemon.online_database()?;
        if !request.origin.is_control_socket() || !db.is_leader() {
            return Err(Error::invalid(
                "Attempt to initiate heartbeat from non-leader",
            ));
        }
        heartbeat::round(&daemon, &db).await?;
        return Ok(Response::empty());
    }
    heartbeat::receive(&daemon, &info)?;
    Ok(Response::empty())
}
