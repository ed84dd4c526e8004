//! `local_members` (SPEC §14.1): the members as this member's own `database/` has them,
//! readable with the daemon stopped.

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::db::raft::local_view::local_membership;
use crate::state_dir::StateDir;
use crate::{Error, Result};

use super::members::{SPARE, STAND_BY, VOTER};

/// A member in the local view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMember {
    /// The Raft node id.
    pub id: u64,
    /// The member name.
    pub name: String,
    /// The member address.
    pub address: String,
    /// `voter`, `stand-by` or `spare`.
    pub role: String,
}

/// The local view of `state_dir`, sorted by name: Raft membership for ids, names, addresses
/// and voters; the members table for telling stand-bys from spares.
pub fn local_members(state_dir: &StateDir) -> Result<Vec<LocalMember>> {
    let dir = state_dir.database_dir();
    let stand_bys = stand_bys(&dir.join("db.sqlite3"))?;
    let mut members: Vec<LocalMember> = local_membership(&dir)?
        .into_iter()
        .map(|(id, node, voter)| {
            let role = match (voter, stand_bys.contains(&node.name)) {
                (true, _) => VOTER,
                (false, true) => STAND_BY,
                (false, false) => SPARE,
            };
            LocalMember {
                id,
                name: node.name,
                address: node.address,
                role: role.to_string(),
            }
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

/// The names the members table marks as stand-by (none if there is no table yet).
fn stand_bys(path: &std::path::Path) -> Result<Vec<String>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let failed = |err: rusqlite::Error| {
        Error::internal(format!(
            "Failed to read the members table in {path:?}: {err}"
        ))
    };
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'core_cluster_members'",
            [],
            |row| row.get(0),
        )
        .map_err(failed)?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT name FROM core_cluster_members WHERE role = ?1")
        .map_err(failed)?;
    let names = stmt
        .query_map([STAND_BY], |row| row.get(0))
        .map_err(failed)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(failed)?;
    Ok(names)
}
