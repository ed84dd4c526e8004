//! The `core_cluster_members` table (SPEC §11.2): reading and writing member rows inside a
//! transaction.

use rusqlite::params;

use crate::db::{Tx, Value};
use crate::types::ClusterMember;
use crate::{Error, Result};

/// A Raft voter.
pub(crate) const VOTER: &str = "voter";
/// A non-voting replica promoted first.
pub(crate) const STAND_BY: &str = "stand-by";
/// A non-voting replica promoted last.
pub(crate) const SPARE: &str = "spare";
/// A join in progress (admitted, not yet in Raft).
pub(crate) const PENDING: &str = "PENDING";

/// Now as an RFC 3339 UTC timestamp with second precision.
pub(crate) fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| crate::types::NEVER.to_string())
}

/// Inserts a member row.
pub(crate) fn insert(tx: &mut Tx<'_>, member: &ClusterMember) -> Result<()> {
    let extensions = serde_json::to_string(&member.extensions)
        .map_err(|err| Error::internal(format!("Failed to encode extensions: {err}")))?;
    tx.execute(
        "INSERT INTO core_cluster_members (name, address, certificate, schema_internal, schema_external, heartbeat, role, api_extensions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            member.name,
            member.address,
            member.certificate,
            member.schema_internal_version as i64,
            member.schema_external_version as i64,
            member.last_heartbeat,
            member.role,
            extensions
        ],
    )?;
    Ok(())
}

/// Sets a member's role and heartbeat.
pub(crate) fn set_role(tx: &mut Tx<'_>, name: &str, role: &str, heartbeat: &str) -> Result<()> {
    tx.execute(
        "UPDATE core_cluster_members SET role = ?2, heartbeat = ?3 WHERE name = ?1",
        params![name, role, heartbeat],
    )?;
    Ok(())
}

/// Every member row, sorted by name (status left empty).
pub(crate) fn list(tx: &mut Tx<'_>) -> Result<Vec<ClusterMember>> {
    let rows = tx.query(
        "SELECT name, address, certificate, schema_internal, schema_external, heartbeat, role, api_extensions
         FROM core_cluster_members ORDER BY name",
        [],
    )?;
    rows.rows
        .iter()
        .map(|row| {
            Ok(ClusterMember {
                name: text(&row[0]),
                address: text(&row[1]),
                certificate: text(&row[2]),
                schema_internal_version: integer(&row[3]),
                schema_external_version: integer(&row[4]),
                last_heartbeat: text(&row[5]),
                role: text(&row[6]),
                extensions: serde_json::from_str(&text(&row[7])).unwrap_or_default(),
                ..ClusterMember::default()
            })
        })
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(text) => text.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Blob(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::Null => String::new(),
    }
}

fn integer(value: &Value) -> u64 {
    match value {
        Value::Integer(i) => u64::try_from(*i).unwrap_or(0),
        _ => 0,
    }
}
