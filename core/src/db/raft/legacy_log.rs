//! The Raft log as versions before the segment files stored it: a SQLite file, `raft.db`, in
//! the database directory, with the tables `log(idx, term, node, entry)` (entries encoded as
//! they are in segments) and `meta(key, value)` (the vote, the committed id and the last purged
//! id). The first open of the log store moves it into segments ([`migrate`]); until then the
//! offline membership view reads it ([`read`]).

use std::fs;
use std::path::Path;

use openraft::{CommittedLeaderId, LogId, StorageIOError, Vote};
use rusqlite::{Connection, OpenFlags};

use super::NodeId;
use super::segments::{EncodedEntry, LOG_DIR, SegmentLog};
use super::sqlite::{Kind, OrFail, Res, read_meta};
use crate::state_dir::sync_dir;
use crate::{Error, Result};

const READ: Kind = StorageIOError::read;

/// The file of the log in versions before segments.
pub(super) const LEGACY_FILE: &str = "raft.db";

/// Where the log is written while it is moved, before it is renamed to [`LOG_DIR`].
const STAGING_DIR: &str = "log.migrating";

/// The entries appended to segments at once while the log is moved.
const MIGRATE_CHUNK: usize = 1024;

/// What a `raft.db` holds.
pub(super) struct LegacyLog {
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub last_purged: Option<LogId<NodeId>>,
    /// Every entry, in index order.
    pub entries: Vec<EncodedEntry>,
}

/// Reads the `raft.db` of the database directory `database_dir`, if there is one. Opened
/// `writable`, SQLite also recovers its write-ahead log after a crash.
pub(super) fn read(database_dir: &Path, writable: bool) -> Res<Option<LegacyLog>> {
    let path = database_dir.join(LEGACY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let flags = if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(&path, flags).or_fail(READ)?;
    let vote = read_meta(&conn, "meta", "vote", READ)?;
    let committed = read_meta::<Option<LogId<NodeId>>>(&conn, "meta", "committed", READ)?;
    let last_purged = read_meta(&conn, "meta", "last_purged", READ)?;
    let mut stmt = conn
        .prepare("SELECT idx, term, node, entry FROM log ORDER BY idx")
        .or_fail(READ)?;
    let entries = stmt
        .query_map([], |row| {
            let id = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
            Ok(EncodedEntry {
                log_id: LogId::new(CommittedLeaderId::new(id(1)?, id(2)?), id(0)?),
                blob: row.get(3)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .or_fail(READ)?;
    Ok(Some(LegacyLog {
        vote,
        committed: committed.flatten(),
        last_purged,
        entries,
    }))
}

/// Moves the log of the database directory `database_dir` from `raft.db` into segments, if it
/// is still there: the segments are written aside and renamed into place, then `raft.db` is
/// removed. A crash at any point leaves either log whole.
pub(super) fn migrate(database_dir: &Path) -> Result<()> {
    let failed = |err: &dyn std::fmt::Display| {
        Error::internal(format!(
            "Failed to move the Raft log of {database_dir:?} from {LEGACY_FILE} into segment files: {err}"
        ))
    };
    let Some(legacy) = read(database_dir, true).map_err(|err| failed(&err))? else {
        return Ok(());
    };
    let log_dir = database_dir.join(LOG_DIR);
    if !log_dir.exists() {
        let staging = database_dir.join(STAGING_DIR);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|err| failed(&err))?;
        }
        let mut log = SegmentLog::open_dir(&staging, database_dir).map_err(|err| failed(&err))?;
        if let Some(vote) = legacy.vote {
            log.save_vote(vote, None).map_err(|err| failed(&err))?;
        }
        if let Some(purged) = legacy.last_purged {
            log.purge(purged, None).map_err(|err| failed(&err))?;
        }
        for chunk in legacy.entries.chunks(MIGRATE_CHUNK) {
            log.append(chunk, legacy.committed)
                .map_err(|err| failed(&err))?;
        }
        drop(log);
        fs::rename(&staging, &log_dir).map_err(|err| failed(&err))?;
        sync_dir(database_dir)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let path = database_dir.join(format!("{LEGACY_FILE}{suffix}"));
        match fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(failed(&err)),
            _ => {}
        }
    }
    sync_dir(database_dir)?;
    tracing::info!(
        "Moved the Raft log of {database_dir:?} from {LEGACY_FILE} into segment files ({} entries)",
        legacy.entries.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::{Entry, EntryPayload};

    use super::*;
    use crate::db::raft::log_store::LogStore;
    use crate::db::raft::sqlite::{encode, write_meta};
    use crate::db::raft::{Command, TypeConfig};

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// A `raft.db` as the SQLite log store wrote it: entries 6–40 (1–5 purged), a vote and a
    /// committed id.
    fn legacy_log(dir: &Path) {
        let conn = Connection::open(dir.join(LEGACY_FILE)).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE log(idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                 node INTEGER NOT NULL, entry BLOB NOT NULL);
             CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .unwrap();
        let kind: Kind = StorageIOError::write;
        let vote: Vote<NodeId> = Vote::new_committed(2, 1);
        write_meta(&conn, "meta", "vote", &vote, kind).unwrap();
        write_meta(&conn, "meta", "committed", &Some(id(2, 38)), kind).unwrap();
        write_meta(&conn, "meta", "last_purged", &id(1, 5), kind).unwrap();
        for index in 6..=40 {
            let term = if index < 20 { 1 } else { 2 };
            let sql = format!("INSERT INTO t VALUES ({index})");
            let entry: Entry<TypeConfig> = Entry {
                log_id: id(term, index),
                payload: EntryPayload::Normal(Command::Sql { sql }),
            };
            let blob = encode(&entry, kind).unwrap();
            conn.execute(
                "INSERT INTO log VALUES (?1, ?2, 1, ?3)",
                rusqlite::params![index as i64, term as i64, blob],
            )
            .unwrap();
        }
    }

    #[tokio::test]
    async fn the_first_open_moves_the_log_from_raft_db_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        legacy_log(dir.path());
        let mut store = LogStore::open(dir.path()).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("{LEGACY_FILE}{suffix}"));
            assert!(!file.exists(), "{file:?}");
        }
        assert!(!dir.path().join(STAGING_DIR).exists());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(1, 5)));
        assert_eq!(state.last_log_id, Some(id(2, 40)));
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(id(2, 38)));
        let entries = store.try_get_log_entries(0..100).await.unwrap();
        let ids: Vec<LogId<NodeId>> = entries.iter().map(|entry| entry.log_id).collect();
        let expected: Vec<LogId<NodeId>> = (6..=40)
            .map(|index| id(if index < 20 { 1 } else { 2 }, index))
            .collect();
        assert_eq!(ids, expected);
        let EntryPayload::Normal(Command::Sql { sql }) = &entries[0].payload else {
            panic!("{:?}", entries[0]);
        };
        assert_eq!(sql, "INSERT INTO t VALUES (6)");
    }

    #[tokio::test]
    async fn a_move_interrupted_is_done_again_and_one_completed_is_not() {
        let dir = tempfile::tempdir().unwrap();
        legacy_log(dir.path());
        // Interrupted while the segments were written aside: they are written again.
        fs::create_dir(dir.path().join(STAGING_DIR)).unwrap();
        fs::write(
            dir.path().join(STAGING_DIR).join("0000000000000001.seg"),
            b"half",
        )
        .unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(id(2, 40))
        );
        drop(store);
        // Interrupted after the rename, before `raft.db` was removed: the segments stay as
        // they are, and `raft.db` goes.
        let mut store = LogStore::open(dir.path()).unwrap();
        store.purge(id(2, 30)).await.unwrap();
        drop(store);
        legacy_log(dir.path());
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(!dir.path().join(LEGACY_FILE).exists());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(2, 30)));
    }
}
