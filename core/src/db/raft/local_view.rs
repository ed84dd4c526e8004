//! The local, offline view of Raft membership (SPEC §14.1): read from `database/` directly,
//! whether or not the daemon runs.
//!
//! The newest membership is the later of the one the state machine applied and the last
//! membership entry still in the log. Where the state machine database cannot be trusted (a
//! machine crash while it ran unsynced), its last snapshot stands in for it: the log holds
//! every entry after it.

use std::path::Path;

use openraft::{EntryPayload, StorageIOError, StoredMembership};
use rusqlite::{Connection, OpenFlags};

use super::legacy_log;
use super::segments::{LogEntry, LogOnDisk};
use super::sqlite::{Kind, Res, decode, read_meta};
use super::state_machine::{DB_FILE, SNAPSHOT_FILE};
use super::unsynced::database_trusted;
use super::{MemberNode, NodeId};
use crate::{Error, Result};

const READ: Kind = StorageIOError::read;

/// The members of the newest Raft membership stored in the database directory `dir`, each
/// with whether it is a voter; empty for a member that never joined.
pub fn local_membership(dir: &Path) -> Result<Vec<(NodeId, MemberNode, bool)>> {
    let failed = |err: &dyn std::fmt::Display| {
        Error::internal(format!(
            "Failed to read the local Raft membership in {dir:?}: {err}"
        ))
    };
    let open = |file: &str| -> Result<Option<Connection>> {
        let path = dir.join(file);
        if !path.exists() {
            return Ok(None);
        }
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map(Some)
            .map_err(|err| failed(&err))
    };
    let mut newest: Option<StoredMembership<NodeId, MemberNode>> = None;
    let trusted = database_trusted(dir, READ).map_err(|err| failed(&err))?;
    let applied = if trusted { DB_FILE } else { SNAPSHOT_FILE };
    if let Some(conn) = open(applied)? {
        newest = read_meta(&conn, "_microcluster_raft", "membership", READ)
            .map_err(|err| failed(&err))?;
    }
    for entry in stored_entries(dir)
        .map_err(|err| failed(&err))?
        .into_iter()
        .rev()
    {
        if let EntryPayload::Membership(membership) = entry.payload {
            let newer = newest
                .as_ref()
                .and_then(|stored| stored.log_id().as_ref())
                .is_none_or(|applied| applied.index < entry.log_id.index);
            if newer {
                newest = Some(StoredMembership::new(Some(entry.log_id), membership));
            }
            break;
        }
    }
    let Some(stored) = newest else {
        return Ok(Vec::new());
    };
    let membership = stored.membership();
    Ok(membership
        .nodes()
        .map(|(id, node)| (*id, node.clone(), membership.voter_ids().any(|v| v == *id)))
        .collect())
}

/// Every entry of the log stored in the database directory `dir`: in segments, or in the
/// `raft.db` of an earlier version that was not started since.
fn stored_entries(dir: &Path) -> Res<Vec<LogEntry>> {
    if let Some(log) = LogOnDisk::read(dir)? {
        return log.entries();
    }
    let Some(legacy) = legacy_log::read(dir, false)? else {
        return Ok(Vec::new());
    };
    (legacy.entries.iter())
        .map(|entry| decode(&entry.blob, READ))
        .collect()
}

/// The first and the last index of the entries in the Raft log stored in the database
/// directory `dir`, if it holds any; read directly, whether or not the daemon runs.
pub fn local_log_range(dir: &Path) -> Result<Option<(u64, u64)>> {
    let log = LogOnDisk::read(dir)
        .map_err(|err| Error::internal(format!("Failed to read the Raft log in {dir:?}: {err}")))?;
    Ok(log.and_then(|log| log.range()))
}
