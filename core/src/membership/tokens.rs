//! Join tokens in the database (SPEC §6): issue, list, revoke, and expiry.

use std::sync::Arc;

use rusqlite::params;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::daemon::Daemon;
use crate::db::tx::DEFAULT_TIMEOUT;
use crate::db::{ReadMode, Value};
use crate::token::{self, JoinToken};
use crate::types::{NEVER, TokenRecord, TokenRequest};
use crate::{Error, Result, certs};

/// A timestamp as stored in the database: RFC 3339 UTC, second precision, so that text order
/// is time order.
pub(crate) fn format_time(time: OffsetDateTime) -> String {
    let time = time.to_offset(time::UtcOffset::UTC);
    let time = time.replace_nanosecond(0).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_else(|_| NEVER.to_string())
}

/// Parses a stored timestamp.
pub(crate) fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// Deletes the tokens that expired at `now` (inside a transaction).
pub(crate) fn delete_expired(tx: &mut crate::db::Tx<'_>, now: &str) -> Result<()> {
    tx.execute(
        "DELETE FROM core_token_records WHERE expiry_date IS NOT NULL AND expiry_date <= ?1",
        [now],
    )?;
    Ok(())
}

/// `POST /core/control/tokens`: issues a token for `request.name` (SPEC §6.1).
pub(crate) async fn issue(daemon: &Arc<Daemon>, request: TokenRequest) -> Result<String> {
    let db = daemon.online_database()?;
    token::validate_token_name(&request.name)?;
    let now = OffsetDateTime::now_utc();
    let expiry = token::expiry_from(now, request.expire_after)?.map(format_time);
    let secret = token::new_secret()?;
    let hash = token::hash_secret(&secret);
    let name = request.name.clone();
    let now = format_time(now);
    let addresses = db
        .transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
            let taken = tx.query("SELECT 1 FROM core_token_records WHERE name = ?1", [&name])?;
            if !taken.rows.is_empty() {
                return Err(Error::invalid(format!(
                    "A join token with name {name:?} already exists"
                )));
            }
            let member = tx.query(
                "SELECT 1 FROM core_cluster_members WHERE name = ?1",
                [&name],
            )?;
            if !member.rows.is_empty() {
                return Err(Error::invalid(format!(
                    "A cluster member with name {name:?} already exists"
                )));
            }
            delete_expired(tx, &now)?;
            tx.execute(
                "INSERT INTO core_token_records (name, secret, expiry_date) VALUES (?1, ?2, ?3)",
                params![name, hash, expiry],
            )?;
            let rows = tx.query(
                "SELECT address FROM core_cluster_members WHERE role != 'PENDING' ORDER BY name",
                [],
            )?;
            Ok(rows
                .rows
                .into_iter()
                .filter_map(|row| match row.into_iter().next() {
                    Some(Value::Text(address)) => Some(address),
                    _ => None,
                })
                .collect::<Vec<_>>())
        })
        .await?;
    let join_addresses = match addresses.is_empty() {
        true => daemon.member_address().into_iter().collect(),
        false => addresses,
    };
    let cluster_cert = std::fs::read_to_string(daemon.state_dir.cluster_cert())
        .map_err(|err| Error::from(err).context("Failed to read the cluster certificate: "))?;
    Ok(JoinToken {
        secret,
        fingerprint: certs::fingerprint_pem(&cluster_cert)?,
        join_addresses,
    }
    .encode())
}

/// `GET /core/control/tokens`: the tokens that have not expired.
pub(crate) async fn list(daemon: &Arc<Daemon>) -> Result<Vec<TokenRecord>> {
    let db = daemon.online_database()?;
    let now = format_time(OffsetDateTime::now_utc());
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        let rows = tx.query(
            "SELECT name, expiry_date FROM core_token_records
             WHERE expiry_date IS NULL OR expiry_date > ?1 ORDER BY name",
            [&now],
        )?;
        Ok(rows
            .rows
            .into_iter()
            .map(|row| {
                let text = |value: &Value| match value {
                    Value::Text(text) => Some(text.clone()),
                    _ => None,
                };
                TokenRecord {
                    name: text(&row[0]).unwrap_or_default(),
                    token: String::new(),
                    expires_at: text(&row[1]).unwrap_or_else(|| NEVER.to_string()),
                }
            })
            .collect())
    })
    .await
}

/// `DELETE /core/1.0/tokens/{name}`.
pub(crate) async fn revoke(daemon: &Arc<Daemon>, name: String) -> Result<()> {
    let db = daemon.online_database()?;
    db.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
        let deleted = tx.execute("DELETE FROM core_token_records WHERE name = ?1", [&name])?;
        match deleted {
            0 => Err(Error::not_found("CoreTokenRecord not found")),
            _ => Ok(()),
        }
    })
    .await
}
