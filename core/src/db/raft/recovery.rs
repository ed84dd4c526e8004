//! Rewriting the Raft membership of a stopped member for quorum-loss recovery (SPEC §14.2
//! step 5), with the real log store and state machine, so that openraft loads exactly the new
//! membership at the next start.
//!
//! The rewrite works the way a leader would have done it, without the quorum:
//! 1. every entry still in the log is applied to the state machine (entries beyond the old
//!    commit index become committed: the recovering member has the most up-to-date log);
//! 2. two entries are appended in a new term `t` (one above the stored vote's term, which is at
//!    least the term of every entry in the log), led by this member: the new uniform
//!    membership, and a SQL entry that writes the members table's addresses and roles (Raft
//!    cannot tell a stand-by from a spare; the table does);
//! 3. both are applied too, the committed log id is set to the last one, and the vote becomes
//!    `t` for this member, not committed.
//!
//! At the next start openraft finds `applied == committed == last log id`, so it re-applies
//! nothing and takes the membership the state machine applied last: the new one. No member
//! ever led term `t` (every vote is at most `t - 1`), so no other log can hold a different
//! entry with the same log id, and the next election (term `t + 1`) proceeds normally among
//! the new voters, whose logs are copies of this one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
use rusqlite::Connection;

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{Command, MemberNode, NodeId, TypeConfig};
use crate::{Error, Result};

/// How many log entries are applied per batch while catching the state machine up.
const APPLY_CHUNK: u64 = 64;

/// The SQLite file of the database directory (the log is in segment files, which have no
/// write-ahead log).
const DATABASE: &str = "db.sqlite3";

/// Rewrites the Raft membership stored in the database directory `dir` of the stopped member
/// `own_id` to exactly `members` (`(id, node, voter)`), and records `sql` (statements on the
/// members table) in the same term. Afterwards the SQLite database is checkpointed, so `dir`
/// holds no write-ahead log content.
pub(crate) async fn rewrite_membership(
    dir: &Path,
    own_id: NodeId,
    members: &[(NodeId, MemberNode, bool)],
    sql: String,
) -> Result<()> {
    let failed = |err: &dyn std::fmt::Display| {
        Error::internal(format!(
            "Failed to rewrite the Raft membership in {dir:?}: {err}"
        ))
    };
    let mut log = LogStore::open(dir)?;
    let mut state_machine = StateMachine::open(dir)?;

    // 1. Apply everything the log holds.
    let (applied, _) = state_machine
        .applied_state()
        .await
        .map_err(|e| failed(&e))?;
    let state = log.get_log_state().await.map_err(|e| failed(&e))?;
    let Some(mut last) = std::cmp::max(state.last_log_id, applied) else {
        return Err(Error::invalid(
            "The local database holds no Raft log: this member never joined a cluster",
        ));
    };
    if state.last_log_id < applied {
        // A snapshot was installed and its entries are not in the log (openraft purges them at
        // start); the new entries must follow the snapshot without a hole.
        log.purge(last).await.map_err(|e| failed(&e))?;
    }
    let mut next = applied.map_or(0, |id| id.index + 1);
    while next <= last.index {
        let end = (next + APPLY_CHUNK).min(last.index + 1);
        let entries = log
            .try_get_log_entries(next..end)
            .await
            .map_err(|e| failed(&e))?;
        if entries.first().map(|e| e.log_id.index) != Some(next)
            || entries.last().map(|e| e.log_id.index) != Some(end - 1)
        {
            return Err(failed(&format!(
                "log entries {next}..{end} are missing from the Raft log"
            )));
        }
        state_machine.apply(entries).await.map_err(|e| failed(&e))?;
        next = end;
    }

    // 2. The new membership and the table update, in a term nobody led.
    let vote = log.read_vote().await.map_err(|e| failed(&e))?;
    let term = vote
        .map_or(0, |vote| vote.leader_id.term)
        .max(last.leader_id.term)
        + 1;
    let voters: BTreeSet<NodeId> = members
        .iter()
        .filter(|(_, _, voter)| *voter)
        .map(|(id, _, _)| *id)
        .collect();
    let nodes: BTreeMap<NodeId, MemberNode> = members
        .iter()
        .map(|(id, node, _)| (*id, node.clone()))
        .collect();
    let membership = Membership::new(vec![voters], nodes);
    let leader = CommittedLeaderId::new(term, own_id);
    let mut entries: Vec<Entry<TypeConfig>> = Vec::new();
    for payload in [
        EntryPayload::Membership(membership),
        EntryPayload::Normal(Command::Sql { sql }),
    ] {
        last = LogId::new(leader, last.index + 1);
        entries.push(Entry {
            log_id: last,
            payload,
        });
    }
    log.save_vote(&Vote::new(term, own_id))
        .await
        .map_err(|e| failed(&e))?;
    log.blocking_append(entries.clone())
        .await
        .map_err(|e| failed(&e))?;

    // 3. Applied and committed.
    state_machine.apply(entries).await.map_err(|e| failed(&e))?;
    log.save_committed(Some(last))
        .await
        .map_err(|e| failed(&e))?;
    // The committed id waits for the next write: this vote write.
    log.save_vote(&Vote::new(term, own_id))
        .await
        .map_err(|e| failed(&e))?;
    state_machine.close().await?;
    drop((log, state_machine));
    checkpoint(&dir.join(DATABASE))
}

/// Moves the write-ahead log of the SQLite database at `path` into the database file and
/// empties it, waiting for connections that are still closing.
fn checkpoint(path: &Path) -> Result<()> {
    let failed = |err: &dyn std::fmt::Display| {
        Error::internal(format!("Failed to checkpoint {path:?}: {err}"))
    };
    let conn = Connection::open(path).map_err(|e| failed(&e))?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| failed(&e))?;
    let (busy, frames, checkpointed): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(|e| failed(&e))?;
    if busy != 0 || frames != checkpointed {
        return Err(failed(&format!(
            "the database is busy ({checkpointed} of {frames} frames written back)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::raft::local_view::local_membership;

    fn node(name: &str, address: &str) -> MemberNode {
        MemberNode {
            name: name.into(),
            address: address.into(),
            certificate: format!("cert of {name}"),
            failure_domain: 0,
        }
    }

    /// Writes a log of `entries` (membership of 1 and 2, then SQL) and applies the first
    /// `applied` of them.
    async fn seed(dir: &Path, applied: usize) {
        let mut log = LogStore::open(dir).unwrap();
        let mut sm = StateMachine::open(dir).unwrap();
        let leader = CommittedLeaderId::new(3, 1);
        let nodes = BTreeMap::from([
            (1, node("c1", "127.0.0.1:9001")),
            (2, node("c2", "127.0.0.1:9002")),
        ]);
        let payloads = vec![
            EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], nodes)),
            EntryPayload::Normal(Command::Sql {
                sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".into(),
            }),
            EntryPayload::Normal(Command::Sql {
                sql: "INSERT INTO t VALUES (1, 'a')".into(),
            }),
        ];
        let entries: Vec<Entry<TypeConfig>> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Entry {
                log_id: LogId::new(leader, i as u64 + 1),
                payload,
            })
            .collect();
        log.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries[..applied].to_vec()).await.unwrap();
        log.save_committed(Some(entries[applied - 1].log_id))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_new_membership_is_applied_committed_and_last() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path(), 1).await;
        let members = vec![
            (1, node("c1", "127.0.0.1:8001"), false),
            (2, node("c2", "127.0.0.1:8002"), true),
        ];
        let sql = "INSERT INTO t VALUES (2, 'b')".to_string();
        rewrite_membership(dir.path(), 1, &members, sql)
            .await
            .unwrap();
        let wal = dir.path().join(format!("{DATABASE}-wal"));
        assert!(
            std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
            "{wal:?}"
        );

        let view = local_membership(dir.path()).unwrap();
        assert_eq!(view, members);
        let mut log = LogStore::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        let last = LogId::new(CommittedLeaderId::new(4, 1), 5);
        assert_eq!(state.last_log_id, Some(last));
        assert_eq!(applied, Some(last));
        assert_eq!(log.read_committed().await.unwrap(), Some(last));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        assert_eq!(membership.log_id().map(|id| id.index), Some(4));
        let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
        assert_eq!(voters, vec![2]);
        // The pending entries and the new SQL were applied, in order.
        let conn = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        let values: Vec<String> = conn
            .prepare("SELECT v FROM t ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(values, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn an_empty_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let members = vec![(1, node("c1", "127.0.0.1:8001"), true)];
        let err = rewrite_membership(dir.path(), 1, &members, String::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never joined"), "{err}");
    }
}
