//! The durable Raft log: a SQLite file of its own (`database/raft.db`).
//!
//! Entries live in `log(idx, term, node, entry)`, keyed by index and encoded with `postcard`
//! (`term` and `node` repeat the entry's log id so it can be read without decoding); the vote,
//! the committed log id and the last purged log id live in `meta(key, value)`. The file runs with
//! `journal_mode=WAL` and `synchronous=FULL`: it is the durability point of every write, so a
//! commit is fsynced before it is acknowledged.
//!
//! SQLite never runs on the async executor. One dedicated OS thread owns the read-write
//! connection and performs every write (an [`RaftLogStorage::append`] batch is one transaction,
//! so one fsync); a second thread owns a read-only connection and serves log reads, so
//! replication reads are not queued behind an fsync. Requests travel over `std::sync::mpsc`
//! and answers come back over `tokio::sync::oneshot`. Each thread ends when the last handle
//! that can reach it is dropped.
//!
//! The newest entries (at most [`RECENT_MAX_ENTRIES`] and about [`RECENT_MAX_BYTES`]) are
//! also kept in memory, as a contiguous tail of the log: replication to members that keep up
//! and applying committed entries read them from there, without a thread hop or a decode.
//! Older entries are read from disk. Memory stays bounded whatever the log's length.
//!
//! The committed log id is a hint (a restarted member applies up to it before hearing from
//! the leader), so saving it costs no commit of its own: it rides along in the next write
//! transaction (an append, a vote, a truncate or a purge). The last one saved before a
//! shutdown may be lost; the member then learns it from the leader.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{CommittedLeaderId, Entry, LogId, OptionalSend, StorageIOError, Vote};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::sqlite::{Kind, OrFail, Res, Worker, WriteTx, decode, encode, read_meta, write_meta};
use super::{NodeId, TypeConfig};
use crate::sync::lock;

const READ_LOGS: Kind = StorageIOError::read_logs;
const WRITE_LOGS: Kind = StorageIOError::write_logs;

/// A Raft log entry of our types.
type LogEntry = Entry<TypeConfig>;

/// The most bytes of entries one `limited_get_log_entries` call returns (at least one entry).
const READ_LIMIT_BYTES: usize = 4 << 20;

/// The most entries kept in memory.
const RECENT_MAX_ENTRIES: usize = 4096;

/// About the most encoded bytes of entries kept in memory.
const RECENT_MAX_BYTES: usize = 16 << 20;

/// The key-value table of the vote, the committed id and the last purged id.
const META: &str = "meta";
const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged";

/// Converts an index to SQLite's signed integer, saturating at `i64::MAX`.
fn sql_index(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// The half-open index range `[start, end)` of `range`.
fn index_range((start, end): (Bound<u64>, Bound<u64>)) -> (u64, u64) {
    let start = match start {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match end {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// Reads the entries of `[start, end)` in index order, stopping after `limit_bytes` (at least
/// one).
fn read_entries(conn: &Connection, start: u64, end: u64, limit_bytes: usize) -> Res<Vec<LogEntry>> {
    let sql = "SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx";
    let mut stmt = conn.prepare_cached(sql).or_fail(READ_LOGS)?;
    let mut rows = stmt
        .query(params![sql_index(start), sql_index(end)])
        .or_fail(READ_LOGS)?;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(row) = rows.next().or_fail(READ_LOGS)? {
        let blob = row.get_ref(0).or_fail(READ_LOGS)?;
        let blob = blob.as_blob().or_fail(READ_LOGS)?;
        bytes += blob.len();
        out.push(decode(blob, READ_LOGS)?);
        if bytes >= limit_bytes {
            break;
        }
    }
    Ok(out)
}

/// The newest entries of the log, each with its encoded size: always a contiguous tail of
/// the log as submitted to the writer thread (possibly empty). It is changed when a write is
/// submitted, in the order of the calls, so it agrees with the disk once the writer thread
/// has caught up.
///
/// An entry is dropped for the limits only once the writer thread has written it, so an entry
/// that is not held here is on disk.
#[derive(Default)]
struct RecentEntries {
    /// Each entry with its encoded size and the number of the append that submitted it.
    entries: VecDeque<(LogEntry, usize, u64)>,
    bytes: usize,
    /// The number of the last append submitted, and of the last one written.
    submitted: u64,
    written: u64,
}

impl RecentEntries {
    /// Adds entries submitted for writing after the tail, then drops the oldest written ones
    /// beyond the limits. Returns the number of this append, for [`RecentEntries::written`].
    fn extend(&mut self, entries: Vec<(LogEntry, usize)>) -> u64 {
        self.submitted += 1;
        let append = self.submitted;
        let Some(first) = entries.first().map(|(entry, _)| entry.log_id.index) else {
            return append;
        };
        // `INSERT OR REPLACE` overwrites entries; and the tail must stay contiguous.
        self.truncate(first);
        if self.last_index().is_some_and(|last| last + 1 != first) {
            self.clear();
        }
        for (entry, size) in entries {
            self.bytes += size;
            self.entries.push_back((entry, size, append));
        }
        while (self.entries.len() > RECENT_MAX_ENTRIES || self.bytes > RECENT_MAX_BYTES)
            && self
                .entries
                .front()
                .is_some_and(|&(_, _, submitted_by)| submitted_by <= self.written)
        {
            self.pop_front();
        }
        append
    }

    /// Records that the writer thread has written append number `append` (and those before).
    fn written(&mut self, append: u64) {
        self.written = self.written.max(append);
    }

    /// Drops the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(entry, _, _)| entry.log_id.index >= index)
        {
            if let Some((_, size, _)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops the entries up to `index`, included.
    fn purge(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(entry, _, _)| entry.log_id.index <= index)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size, _)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _, _)| entry.log_id.index)
    }

    /// The entries of `[start, end)` (stopping after `limit_bytes`, at least one), or `None`
    /// when some of them may be older than the entries held, so only the disk has them.
    fn read(&self, start: u64, end: u64, limit_bytes: usize) -> Option<Vec<LogEntry>> {
        let first = self.entries.front()?.0.log_id.index;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for (entry, size, _) in self.entries.iter().skip(skip) {
            if entry.log_id.index >= end {
                break;
            }
            out.push(entry.clone());
            bytes += size;
            if bytes >= limit_bytes {
                break;
            }
        }
        Some(out)
    }
}

/// The recent entries, shared by the writer thread and the readers.
type SharedRecent = Arc<Mutex<RecentEntries>>;

/// An entry's id and its encoding, as written to disk.
struct EncodedEntry {
    log_id: LogId<NodeId>,
    blob: Vec<u8>,
}

/// The committed id saved since the writer thread last wrote one, if any. It is shared, so
/// saving it does not wake the writer thread: the next write transaction picks it up.
type PendingCommitted = Arc<Mutex<Option<Option<LogId<NodeId>>>>>;

/// What the writer thread owns: the read-write connection and the committed id waiting to be
/// written.
struct LogWriter {
    conn: Connection,
    pending_committed: PendingCommitted,
}

impl LogWriter {
    /// Runs `write` in one transaction (so one fsync) together with the pending committed id.
    fn transaction<T>(&mut self, write: impl FnOnce(&Connection) -> Res<T>) -> Res<T> {
        let tx = WriteTx::begin(&self.conn).or_fail(WRITE_LOGS)?;
        let written = write(&tx)?;
        // Only an id whose entry is on disk once this commits: the id may have been saved
        // after a quorum of other members acknowledged an entry whose own append still waits
        // behind this transaction, and a restart must not find it past the log's end.
        let last: Option<i64> = tx
            .prepare_cached("SELECT max(idx) FROM log")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .or_fail(WRITE_LOGS)?;
        let committed = lock(&self.pending_committed).filter(|committed| {
            let index = committed.map_or(0, |id| sql_index(id.index));
            last.is_some_and(|last| index <= last)
        });
        if let Some(committed) = &committed {
            write_meta(&tx, META, META_COMMITTED, committed, WRITE_LOGS)?;
        }
        tx.commit().or_fail(WRITE_LOGS)?;
        let mut pending = lock(&self.pending_committed);
        // A newer id saved meanwhile waits for the next transaction.
        if committed.is_some() && *pending == committed {
            *pending = None;
        }
        Ok(written)
    }

    /// Writes a batch of encoded entries in one transaction.
    fn append(&mut self, rows: &[EncodedEntry]) -> Res<()> {
        self.transaction(|tx| {
            let sql = "INSERT OR REPLACE INTO log(idx, term, node, entry) VALUES (?1, ?2, ?3, ?4)";
            let mut stmt = tx.prepare_cached(sql).or_fail(WRITE_LOGS)?;
            for row in rows {
                let LogId { leader_id, index } = row.log_id;
                let (index, term, node) = (index, leader_id.term, leader_id.node_id);
                stmt.execute(params![
                    sql_index(index),
                    sql_index(term),
                    sql_index(node),
                    row.blob
                ])
                .or_fail(WRITE_LOGS)?;
            }
            Ok(())
        })
    }

    /// The committed id: the one waiting to be written, else the one on disk.
    fn committed(&self) -> Res<Option<LogId<NodeId>>> {
        if let Some(committed) = *lock(&self.pending_committed) {
            return Ok(committed);
        }
        let kind: Kind = StorageIOError::read;
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.conn, META, META_COMMITTED, kind)?.flatten())
    }
}

/// A handle that reads log entries, from memory when recent and else from disk; cheap to
/// clone, used by replication tasks.
#[derive(Clone)]
pub struct LogReader {
    recent: SharedRecent,
    reader: Worker<Connection>,
}

impl LogReader {
    async fn read(
        &self,
        range: (Bound<u64>, Bound<u64>),
        limit_bytes: usize,
    ) -> Res<Vec<LogEntry>> {
        let (start, end) = index_range(range);
        if let Some(entries) = lock(&self.recent).read(start, end, limit_bytes) {
            return Ok(entries);
        }
        let f = move |conn: &mut Connection| read_entries(conn, start, end, limit_bytes);
        self.reader.call(READ_LOGS, f).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Res<Vec<LogEntry>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.read(range, usize::MAX).await
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Res<Vec<LogEntry>> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        self.read(range, READ_LIMIT_BYTES).await
    }
}

/// The durable Raft log store (`RaftLogStorage`), backed by a SQLite file.
pub struct LogStore {
    writer: Worker<LogWriter>,
    reader: LogReader,
    pending_committed: PendingCommitted,
    /// The number of transactions committed by the writer connection.
    #[cfg(test)]
    commits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Holds appends back from disk while closed (tests of the leader's parallel flush).
    #[cfg(test)]
    pub(crate) flush_gate: tests::FlushGate,
}

impl LogStore {
    /// Opens (creating if needed) the log database at `path` and starts its threads.
    pub fn open(path: &Path) -> Result<LogStore, crate::Error> {
        let err = |e: rusqlite::Error| {
            crate::Error::internal(format!("open Raft log {}: {e}", path.display()))
        };
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            let msg = format!("open Raft log {}: journal mode {mode}", path.display());
            return Err(crate::Error::internal(msg));
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS log(
                 idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, node INTEGER NOT NULL,
                 entry BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(err)?;
        #[cfg(test)]
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        #[cfg(test)]
        {
            let counter = commits.clone();
            let hook = move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                false // do not roll back
            };
            conn.commit_hook(Some(hook)).map_err(err)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let read_conn = Connection::open_with_flags(path, flags).map_err(err)?;
        read_conn
            .busy_timeout(Duration::from_secs(5))
            .map_err(err)?;
        let recent = SharedRecent::default();
        let reader = Worker::spawn("raft-log-read", read_conn)?;
        let pending_committed = PendingCommitted::default();
        let writer = LogWriter {
            conn,
            pending_committed: pending_committed.clone(),
        };
        let writer = Worker::spawn("raft-log-write", writer)?;
        Ok(LogStore {
            writer,
            reader: LogReader { recent, reader },
            pending_committed,
            #[cfg(test)]
            commits,
            #[cfg(test)]
            flush_gate: tests::FlushGate::default(),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Res<Vec<LogEntry>> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Res<LogState<TypeConfig>> {
        let f = |writer: &mut LogWriter| {
            let conn = &writer.conn;
            let last_purged: Option<LogId<NodeId>> =
                read_meta(conn, META, META_LAST_PURGED, READ_LOGS)?;
            let sql = "SELECT idx, term, node FROM log ORDER BY idx DESC LIMIT 1";
            let last = conn
                .query_row(sql, [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()
                .or_fail(READ_LOGS)?;
            let last_log_id = match last {
                Some((index, term, node)) => Some(LogId::new(
                    CommittedLeaderId::new(term as u64, node as u64),
                    index as u64,
                )),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id,
            })
        };
        self.writer.call(READ_LOGS, f).await
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Res<()> {
        let (vote, kind): (_, Kind) = (*vote, StorageIOError::write_vote);
        let f = move |writer: &mut LogWriter| {
            writer.transaction(|tx| write_meta(tx, META, META_VOTE, &vote, kind))
        };
        self.writer.call(kind, f).await
    }

    async fn read_vote(&mut self) -> Res<Option<Vote<NodeId>>> {
        let kind: Kind = StorageIOError::read_vote;
        let f = move |writer: &mut LogWriter| read_meta(&writer.conn, META, META_VOTE, kind);
        self.writer.call(kind, f).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Res<()> {
        // The committed id is a hint that lets a restarted member apply sooner; losing the
        // latest one in a crash only delays that. So it waits for the next write transaction
        // instead of costing a commit (or even a wake of the writer thread) at every commit.
        // Entries up to it are already durable, so whichever transaction writes it is safe.
        *lock(&self.pending_committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Res<Option<LogId<NodeId>>> {
        let kind: Kind = StorageIOError::read;
        self.writer
            .call(kind, |writer: &mut LogWriter| writer.committed())
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Res<()>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The entries are readable (from memory) when this returns; they are durable when the
        // callback fires, after the writer thread's commit. The leader replicates them in
        // between (vendor/openraft/PATCHED.md).
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        let rows = entries
            .iter()
            .map(|entry| {
                let blob = encode(entry, WRITE_LOGS)?;
                Ok(EncodedEntry {
                    log_id: entry.log_id,
                    blob,
                })
            })
            .collect::<Res<Vec<EncodedEntry>>>()?;
        let sizes = rows.iter().map(|row| row.blob.len());
        let append = lock(&self.reader.recent).extend(entries.into_iter().zip(sizes).collect());
        let recent = self.reader.recent.clone();
        #[cfg(test)]
        let gate = self.flush_gate.clone();
        let f = move |writer: &mut LogWriter| {
            #[cfg(test)]
            gate.pass();
            let result = writer.append(&rows);
            if result.is_ok() {
                lock(&recent).written(append);
            }
            match &result {
                Ok(()) => callback.log_io_completed(Ok(())),
                Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            }
            result
        };
        self.writer.submit(WRITE_LOGS, f)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Res<()> {
        lock(&self.reader.recent).truncate(log_id.index);
        let f = move |writer: &mut LogWriter| {
            writer.transaction(|tx| {
                let sql = "DELETE FROM log WHERE idx >= ?1";
                tx.execute(sql, [sql_index(log_id.index)])
                    .or_fail(WRITE_LOGS)
            })?;
            Ok(())
        };
        self.writer.call(WRITE_LOGS, f).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Res<()> {
        lock(&self.reader.recent).purge(log_id.index);
        let f = move |writer: &mut LogWriter| {
            writer.transaction(|tx| {
                write_meta(tx, META, META_LAST_PURGED, &log_id, WRITE_LOGS)?;
                let sql = "DELETE FROM log WHERE idx <= ?1";
                tx.execute(sql, [sql_index(log_id.index)])
                    .or_fail(WRITE_LOGS)
            })?;
            Ok(())
        };
        self.writer.call(WRITE_LOGS, f).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Condvar;
    use std::sync::atomic::Ordering;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::db::raft::Command;

    type Ids = (Option<LogId<NodeId>>, Option<LogId<NodeId>>);

    /// A gate the writer thread waits at before writing an append, while it is closed.
    #[derive(Clone, Default)]
    pub(crate) struct FlushGate(Arc<(Mutex<bool>, Condvar)>);

    impl FlushGate {
        /// Holds back the appends submitted from now on.
        pub(crate) fn close(&self) {
            *self.0.0.lock().unwrap() = true;
        }

        /// Lets every append through again.
        pub(crate) fn open(&self) {
            *self.0.0.lock().unwrap() = false;
            self.0.1.notify_all();
        }

        /// Waits until the gate is open.
        pub(super) fn pass(&self) {
            let (closed, opened) = &*self.0;
            let guard = closed.lock().unwrap();
            drop(opened.wait_while(guard, |closed| *closed).unwrap());
        }
    }

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        let sql = format!("INSERT INTO t VALUES ({index})");
        let payload = EntryPayload::Normal(Command::Sql { sql });
        Entry {
            log_id: id(term, index),
            payload,
        }
    }

    fn entries(from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
        (from..=to).map(|i| entry(1, i)).collect()
    }

    /// The indexes present in `range`.
    async fn ids(store: &mut LogStore, range: std::ops::Range<u64>) -> Vec<u64> {
        let got = store.try_get_log_entries(range).await.unwrap();
        got.iter().map(|e| e.log_id.index).collect()
    }

    /// `(last_purged_log_id, last_log_id)`.
    async fn state(store: &mut LogStore) -> Ids {
        let state = store.get_log_state().await.unwrap();
        (state.last_purged_log_id, state.last_log_id)
    }

    #[tokio::test]
    async fn append_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&dir.path().join("raft.db")).unwrap();
        assert_eq!(state(&mut store).await, (None, None));
        assert!(ids(&mut store, 0..10).await.is_empty());
        store.blocking_append(entries(1, 10)).await.unwrap();
        let got = store.try_get_log_entries(3..6).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].log_id, id(1, 3));
        let sql = "INSERT INTO t VALUES (5)".to_string();
        assert!(
            matches!(&got[2].payload, EntryPayload::Normal(Command::Sql { sql: s }) if *s == sql)
        );
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(..).await.unwrap().len(), 10);
        let last = reader.try_get_log_entries(10..=10).await.unwrap();
        assert_eq!(last[0].log_id, id(1, 10));
        assert_eq!(reader.limited_get_log_entries(2, 4).await.unwrap().len(), 2);
        assert_eq!(state(&mut store).await, (None, Some(id(1, 10))));
    }

    #[tokio::test]
    async fn a_batch_is_one_transaction_and_durable_after_the_callback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        let mut store = LogStore::open(&path).unwrap();
        let before = store.commits.load(Ordering::SeqCst);
        // `blocking_append` returns only once the callback has fired.
        store.blocking_append(entries(1, 1000)).await.unwrap();
        assert_eq!(store.commits.load(Ordering::SeqCst), before + 1);
        // Another store on the same file (the first still open) sees every entry.
        let mut other = LogStore::open(&path).unwrap();
        let all: Vec<u64> = (1..=1000).collect();
        assert_eq!(ids(&mut other, 0..2000).await, all);
        drop((store, other));
        let mut reopened = LogStore::open(&path).unwrap();
        assert_eq!(state(&mut reopened).await, (None, Some(id(1, 1000))));
        assert_eq!(ids(&mut reopened, 500..502).await, vec![500, 501]);
    }

    fn indexes(entries: Option<Vec<LogEntry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    fn sized(entries: Vec<LogEntry>) -> Vec<(LogEntry, usize)> {
        entries.into_iter().map(|entry| (entry, 10)).collect()
    }

    #[test]
    fn recent_entries_are_a_contiguous_tail() {
        let mut recent = RecentEntries::default();
        assert_eq!(indexes(recent.read(1, 5, usize::MAX)), None);
        recent.extend(sized(entries(1, 10)));
        assert_eq!(indexes(recent.read(3, 6, usize::MAX)), Some(vec![3, 4, 5]));
        // Before the tail: only the disk has them.
        assert_eq!(indexes(recent.read(0, 5, usize::MAX)), None);
        // Past the end: nothing, as on disk.
        assert_eq!(indexes(recent.read(11, 20, usize::MAX)), Some(vec![]));
        // The byte limit stops after the entry that reaches it.
        assert_eq!(indexes(recent.read(1, 100, 25)), Some(vec![1, 2, 3]));

        // A new leader's entry overwrites from index 8.
        recent.extend(sized(vec![entry(2, 8)]));
        let all = recent.read(1, 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 8);
        assert_eq!(all[7].log_id, id(2, 8));

        // Entries after a gap (a snapshot was installed) replace the tail.
        recent.extend(sized(entries(20, 21)));
        assert_eq!(indexes(recent.read(1, 100, usize::MAX)), None);
        assert_eq!(
            indexes(recent.read(20, 100, usize::MAX)),
            Some(vec![20, 21])
        );
        recent.truncate(21);
        assert_eq!(indexes(recent.read(20, 100, usize::MAX)), Some(vec![20]));
        recent.purge(20);
        assert_eq!(indexes(recent.read(20, 100, usize::MAX)), None);
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn recent_entries_drop_only_written_entries_for_the_limits() {
        let mut recent = RecentEntries::default();
        let over = RECENT_MAX_ENTRIES as u64 + 10;
        let first = recent.extend(sized(entries(1, over)));
        // Not written yet: all kept, or a reader could find them neither here nor on disk.
        assert_eq!(recent.entries.len(), RECENT_MAX_ENTRIES + 10);
        let second = recent.extend(sized(vec![entry(1, over + 1)]));
        assert_eq!(recent.entries.len(), RECENT_MAX_ENTRIES + 11);
        recent.written(first);
        let _third = recent.extend(sized(vec![entry(1, over + 2)]));
        // Only the first append's entries may go; the second's entry stays.
        assert_eq!(recent.entries.len(), RECENT_MAX_ENTRIES);
        assert_eq!(recent.bytes, RECENT_MAX_ENTRIES * 10);
        assert_eq!(
            recent.entries.front().unwrap().0.log_id.index,
            over + 2 - 4095
        );
        recent.written(second);
        assert_eq!(indexes(recent.read(1, 5, usize::MAX)), None);
    }

    /// A store on `path`, and a second one on the same file that sees only what is on disk.
    fn store_and_disk_view(path: &Path) -> (LogStore, LogStore) {
        (LogStore::open(path).unwrap(), LogStore::open(path).unwrap())
    }

    #[tokio::test]
    async fn the_committed_id_is_written_with_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        let (mut store, mut other) = store_and_disk_view(&path);
        let before = store.commits.load(Ordering::SeqCst);
        store.save_committed(Some(id(1, 5))).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(id(1, 5)));
        // No commit of its own: not on disk yet.
        assert_eq!(store.commits.load(Ordering::SeqCst), before);
        assert_eq!(other.read_committed().await.unwrap(), None);
        store.blocking_append(entries(1, 5)).await.unwrap();
        assert_eq!(store.commits.load(Ordering::SeqCst), before + 1);
        assert_eq!(other.read_committed().await.unwrap(), Some(id(1, 5)));
        drop((store, other));
        let mut reopened = LogStore::open(&path).unwrap();
        assert_eq!(reopened.read_committed().await.unwrap(), Some(id(1, 5)));
    }

    #[tokio::test]
    async fn a_committed_id_past_the_written_log_waits_for_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut other) = store_and_disk_view(&dir.path().join("raft.db"));
        store.blocking_append(entries(1, 10)).await.unwrap();
        // A quorum acknowledged entry 12 before this member's own copy is written.
        store.save_committed(Some(id(1, 12))).await.unwrap();
        store.blocking_append(entries(11, 11)).await.unwrap();
        assert_eq!(other.read_committed().await.unwrap(), None);
        assert_eq!(store.read_committed().await.unwrap(), Some(id(1, 12)));
        store.blocking_append(entries(12, 12)).await.unwrap();
        assert_eq!(other.read_committed().await.unwrap(), Some(id(1, 12)));
    }

    #[tokio::test]
    async fn vote_and_committed_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), None);
        assert_eq!(store.read_committed().await.unwrap(), None);
        store.save_vote(&Vote::new(3, 7)).await.unwrap();
        store.save_vote(&Vote::new_committed(4, 7)).await.unwrap();
        store.save_committed(Some(id(4, 12))).await.unwrap();
        // The committed id is written with the next write.
        store.blocking_append(entries(1, 12)).await.unwrap();
        drop(store);
        let mut store = LogStore::open(&path).unwrap();
        let vote = store.read_vote().await.unwrap();
        assert_eq!(vote, Some(Vote::new_committed(4, 7)));
        assert_eq!(store.read_committed().await.unwrap(), Some(id(4, 12)));
        store.save_committed(None).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.db");
        let mut store = LogStore::open(&path).unwrap();
        store.blocking_append(entries(0, 10)).await.unwrap();

        store.truncate(id(1, 8)).await.unwrap();
        assert_eq!(ids(&mut store, 0..100).await, (0..=7).collect::<Vec<_>>());
        assert_eq!(state(&mut store).await, (None, Some(id(1, 7))));
        // The log goes on after a truncate with the new term.
        store.blocking_append(vec![entry(2, 8)]).await.unwrap();
        assert_eq!(state(&mut store).await, (None, Some(id(2, 8))));

        store.purge(id(1, 4)).await.unwrap();
        assert_eq!(ids(&mut store, 0..100).await, vec![5, 6, 7, 8]);
        assert_eq!(ids(&mut store, 2..7).await, vec![5, 6]);
        let expected = (Some(id(1, 4)), Some(id(2, 8)));
        assert_eq!(state(&mut store).await, expected);
        drop(store);
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(state(&mut store).await, expected);
        assert_eq!(ids(&mut store, 0..100).await, vec![5, 6, 7, 8]);

        // Purging beyond the last entry empties the log; last_log_id falls back to it.
        store.purge(id(3, 20)).await.unwrap();
        assert!(ids(&mut store, 0..100).await.is_empty());
        let expected = (Some(id(3, 20)), Some(id(3, 20)));
        assert_eq!(state(&mut store).await, expected);
        drop(store);
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(state(&mut store).await, expected);

        // The log continues after the purged id; truncating it all falls back again.
        store.blocking_append(vec![entry(3, 21)]).await.unwrap();
        assert_eq!(ids(&mut store, 0..100).await, vec![21]);
        assert_eq!(state(&mut store).await, (Some(id(3, 20)), Some(id(3, 21))));
        store.truncate(id(3, 21)).await.unwrap();
        assert_eq!(state(&mut store).await, expected);
    }
}
