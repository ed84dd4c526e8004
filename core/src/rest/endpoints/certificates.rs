//! `PUT /core/1.0/cluster/certificates/{name}`: replaces the cluster certificate, the server
//! certificate (before init only) or an extension server's certificate, on every member, and
//! hot-reloads the listeners that present it (SPEC §13.7).

use std::sync::Arc;

use hyper::Method;

use crate::certs::{self, CertKeyPair};
use crate::daemon::{Daemon, DatabaseState};
use crate::rest::envelope::Response;
use crate::rest::router::{Action, Endpoint, Request, handler};
use crate::state_dir::write_atomic;
use crate::types::KeyPair;
use crate::{Error, Result};

/// `PUT /core/1.0/cluster/certificates/{name}`.
pub(super) fn endpoint() -> Endpoint {
    Endpoint::new("core/1.0/cluster/certificates/{name}")
        .before_init()
        .put(Action::trusted(handler(put_certificate)))
}

async fn put_certificate(daemon: Arc<Daemon>, request: Request) -> Result<Response> {
    let name = request.vars.get("name").cloned().unwrap_or_default();
    let pair: KeyPair = request.json()?;
    validate(&name, &pair)?;
    let (cert_path, key_path, ca_path) = match name.as_str() {
        "cluster" => {
            let dir = &daemon.state_dir;
            (dir.cluster_cert(), dir.cluster_key(), dir.cluster_ca())
        }
        "server" if daemon.member_address().is_some() => {
            return Err(Error::invalid(
                "Cannot replace server certificate after initialization",
            ));
        }
        "server" => {
            let dir = &daemon.state_dir;
            let ca = dir.root().join("server.ca");
            (dir.server_cert(), dir.server_key(), ca)
        }
        other => {
            let known = daemon
                .extension_servers
                .iter()
                .any(|server| server.name == other && !server.core_api);
            if !known {
                return Err(Error::invalid(format!(
                    "No matching additional server found for {other:?}"
                )));
            }
            let (cert, key) = daemon.state_dir.extension_certificate(other);
            let ca = daemon
                .state_dir
                .certificates_dir()
                .join(format!("{other}.ca"));
            (cert, key, ca)
        }
    };

    let database_open = matches!(
        daemon.database_state(),
        DatabaseState::Online | DatabaseState::Waiting { .. }
    );
    if database_open && !request.is_notification() {
        update_peers(&daemon, &name, &request).await?;
    }

    // The writes fsync: off the async runtime.
    let written = pair.clone();
    tokio::task::spawn_blocking(move || {
        write_atomic(&cert_path, written.cert.as_bytes(), 0o644)?;
        write_atomic(&key_path, written.key.as_bytes(), 0o600)?;
        match written.ca.is_empty() {
            true => Ok(()),
            false => write_atomic(&ca_path, written.ca.as_bytes(), 0o644),
        }
    })
    .await
    .map_err(|err| Error::internal(format!("Failed to write the certificate: {err}")))??;
    let identity = CertKeyPair {
        cert_pem: pair.cert.clone(),
        key_pem: pair.key.clone(),
    };
    daemon.reload_certificate(&name, &identity).await?;
    if name == "cluster"
        && let Ok(database) = daemon.database()
    {
        database.set_cluster_certificate(pair.cert);
    }
    tracing::info!("Certificate {name:?} replaced");
    Ok(Response::empty())
}

/// The checks of SPEC §13.7 step 1, and that the key belongs to the certificate.
fn validate(name: &str, pair: &KeyPair) -> Result<()> {
    certs::parse_cert_pem(&pair.cert)
        .map_err(|_| Error::invalid("Certificate must be base64 encoded PEM certificate"))?;
    certs::parse_key_pem(&pair.key)
        .map_err(|_| Error::invalid("Private key must be base64 encoded PEM key"))?;
    if !pair.ca.is_empty() {
        certs::parse_cert_pem(&pair.ca)
            .map_err(|_| Error::invalid("CA must be base64 encoded PEM key"))?;
    }
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        return Err(Error::invalid("Certificate name cannot be a path"));
    }
    certs::certified_key(&CertKeyPair {
        cert_pem: pair.cert.clone(),
        key_pem: pair.key.clone(),
    })
    .map(|_| ())
}

/// Sends the same update to every other member as a notification (SPEC §13.7 step 3).
async fn update_peers(daemon: &Arc<Daemon>, name: &str, request: &Request) -> Result<()> {
    let answers = daemon
        .state()
        .query_cluster(Method::PUT, &request.path_and_query, request.body.as_ref())
        .await?;
    let failures: Vec<String> = answers
        .into_iter()
        .filter_map(|(member, answer)| answer.err().map(|err| format!("{member}: {err}")))
        .collect();
    match failures.is_empty() {
        true => Ok(()),
        false => Err(Error::internal(format!(
            "Failed to update {name:?} certificate on peers: {}",
            failures.join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_and_names_are_refused_with_the_spec_texts() {
        let good = certs::generate("c1").unwrap();
        let other = certs::generate("c2").unwrap();
        let pair = |cert: &str, key: &str, ca: &str| KeyPair {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        };
        let err =
            |name: &str, pair: KeyPair| validate(name, &pair).unwrap_err().message().to_string();
        assert_eq!(
            err("cluster", pair("garbage", &good.key_pem, "")),
            "Certificate must be base64 encoded PEM certificate"
        );
        assert_eq!(
            err("cluster", pair(&good.cert_pem, "garbage", "")),
            "Private key must be base64 encoded PEM key"
        );
        assert_eq!(
            err("cluster", pair(&good.cert_pem, &good.key_pem, "garbage")),
            "CA must be base64 encoded PEM key"
        );
        for name in ["a/b", "a\\b", ".."] {
            assert_eq!(
                err(name, pair(&good.cert_pem, &good.key_pem, "")),
                "Certificate name cannot be a path"
            );
        }
        assert_eq!(
            err("cluster", pair(&good.cert_pem, &other.key_pem, "")),
            "Certificate does not match its private key"
        );
        validate(
            "cluster",
            &pair(&good.cert_pem, &good.key_pem, &other.cert_pem),
        )
        .unwrap();
    }
}
