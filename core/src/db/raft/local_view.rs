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

use super::sqlite::{Kind, OrFail, decode, read_meta};
use super::state_machine::{DB_FILE, SNAPSHOT_FILE};
use super::unsynced::database_trusted;
use super::{MemberNode, NodeId, TypeConfig};
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
    if let Some(conn) = open("raft.db")? {
        let mut stmt = conn
            .prepare("SELECT entry FROM log ORDER BY idx DESC")
            .or_fail(READ)
            .map_err(|err| failed(&err))?;
        let mut rows = stmt.query([]).or_fail(READ).map_err(|err| failed(&err))?;
        while let Some(row) = rows.next().or_fail(READ).map_err(|err| failed(&err))? {
            let blob: Vec<u8> = row.get(0).or_fail(READ).map_err(|err| failed(&err))?;
            let entry: openraft::Entry<TypeConfig> =
                decode(&blob, READ).map_err(|err| failed(&err))?;
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
