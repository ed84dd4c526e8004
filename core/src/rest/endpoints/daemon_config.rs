//! `/core/1.0/daemon/servers` and `/core/1.0/daemon/config`: this member's extension-listener
//! addresses and failure domain (SPEC §13.5, §13.6).

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::daemon::Daemon;
use crate::hooks::names;
use crate::member_config::{MemberConfig, ServerConfig};
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::{Error, Result, validate};

/// `GET`/`PUT /core/1.0/daemon/servers`.
pub(super) fn servers() -> Endpoint {
    Endpoint::new("core/1.0/daemon/servers")
        .get(Action::trusted(handler(get_servers)))
        .put(Action::trusted(handler(put_servers)))
}

/// `GET`/`PUT`/`PATCH /core/1.0/daemon/config`.
pub(super) fn config() -> Endpoint {
    Endpoint::new("core/1.0/daemon/config")
        .get(Action::trusted(handler(get_config)))
        .put(Action::trusted(handler(put_config)))
        .patch(Action::trusted(handler(patch_config)))
}

/// The body of `PUT` and `PATCH /core/1.0/daemon/config`; `null` counts as absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigUpdate {
    name: Option<String>,
    address: Option<String>,
    servers: Option<BTreeMap<String, ServerConfig>>,
    #[serde(rename = "failure-domain")]
    failure_domain: Option<u64>,
}

fn current(daemon: &Daemon) -> Result<MemberConfig> {
    daemon
        .member_config()
        .ok_or_else(|| Error::unavailable(crate::DatabaseState::NotInitialized.text()))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Response> {
    serde_json::to_value(value)
        .map(Response::sync)
        .map_err(|err| Error::internal(format!("Failed to encode the configuration: {err}")))
}

async fn get_servers(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    to_json(&current(&daemon)?.servers)
}

async fn put_servers(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let servers: BTreeMap<String, ServerConfig> = request.json()?;
    apply(&daemon, false, move |mut config| {
        config.servers = servers;
        Ok(config)
    })
    .await
}

async fn get_config(daemon: Arc<Daemon>, _request: Request) -> Result<Response> {
    to_json(&current(&daemon)?)
}

/// Replaces every mutable field; `name` and `address` must be unchanged if given.
async fn put_config(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let update: ConfigUpdate = request.json()?;
    apply(&daemon, restart_requested(&request), move |mut config| {
        if update.name.is_some_and(|name| name != config.name) {
            return Err(Error::invalid("Name is immutable"));
        }
        if update
            .address
            .is_some_and(|address| address != config.address)
        {
            return Err(Error::invalid("Address is immutable"));
        }
        config.servers = update.servers.unwrap_or_default();
        config.failure_domain = update.failure_domain.unwrap_or_default();
        Ok(config)
    })
    .await
}

/// Changes only the fields present; `name` and `address` are ignored.
async fn patch_config(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let update: ConfigUpdate = request.json()?;
    apply(&daemon, restart_requested(&request), move |mut config| {
        if let Some(servers) = update.servers {
            config.servers = servers;
        }
        if let Some(failure_domain) = update.failure_domain {
            config.failure_domain = failure_domain;
        }
        Ok(config)
    })
    .await
}

fn restart_requested(request: &Request) -> bool {
    request
        .query_value("restart")
        .is_some_and(|value| matches!(value, "1" | "true"))
}

/// Changes this member's configuration with `change` (SPEC §13.5–13.6): checks the servers
/// (steps 1–2), persists it, updates the listeners, all under the init lock so that
/// concurrent changes do not lose each other; then, without the lock, publishes the failure
/// domain if asked to and runs OnDaemonConfigUpdate on the other members.
async fn apply(
    daemon: &Arc<Daemon>,
    publish: bool,
    change: impl FnOnce(MemberConfig) -> Result<MemberConfig>,
) -> Result<Response> {
    let config = {
        let _serialised = daemon.init_lock.lock().await;
        let config = change(current(daemon)?)?;
        check_servers(daemon, &config)?;
        let (saved, path) = (config.clone(), daemon.state_dir.daemon_yaml());
        tokio::task::spawn_blocking(move || saved.save(&path))
            .await
            .map_err(|err| Error::internal(format!("Failed to write daemon.yaml: {err}")))??;
        daemon.set_member(Some(config.clone()));
        daemon.apply_extension_listeners(&config).await?;
        config
    };
    if publish {
        daemon.publish_failure_domain(config.failure_domain).await?;
    }
    let body = serde_json::to_value(&config)
        .map_err(|err| Error::internal(format!("Failed to encode the configuration: {err}")))?;
    let path = format!("/core/internal/hooks/{}", names::ON_DAEMON_CONFIG_UPDATE);
    let failures: Vec<String> = daemon
        .state()
        .query_cluster(Method::POST, &path, Some(&body))
        .await?
        .into_iter()
        .filter_map(|(member, answer)| answer.err().map(|err| format!("{member}: {err}")))
        .collect();
    if !failures.is_empty() {
        return Err(Error::internal(format!(
            "The configuration was applied, but OnDaemonConfigUpdate failed on other members: {}",
            failures.join("; ")
        )));
    }
    Ok(Response::sync(Value::Object(Default::default())))
}

fn check_servers(daemon: &Daemon, config: &MemberConfig) -> Result<()> {
    let mut addresses = vec![config.address.clone()];
    for (name, server) in &config.servers {
        let known = daemon
            .extension_servers
            .iter()
            .any(|s| s.name == *name && !s.core_api);
        if !known {
            return Err(Error::invalid(format!(
                "No matching additional listener found for {name:?}"
            )));
        }
        if server.address.is_empty() {
            continue;
        }
        validate::member_address(&server.address).map_err(|reason| {
            Error::invalid(format!("Invalid address {:?}: {reason}", server.address))
        })?;
        if addresses.contains(&server.address) {
            return Err(Error::invalid(format!(
                "Address {:?} is already in use",
                server.address
            )));
        }
        addresses.push(server.address.clone());
    }
    Ok(())
}
