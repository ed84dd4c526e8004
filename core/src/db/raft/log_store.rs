//! The durable Raft log (`RaftLogStorage`): append-only segment files in `database/log/`
//! (see [`super::segments`] for the format and why it is not a SQLite file).
//!
//! File I/O never runs on the async executor. One dedicated OS thread owns the files and
//! performs every write (an [`RaftLogStorage::append`] batch is one `pwrite` and one
//! `fdatasync`); a second thread serves log reads, so replication reads are not queued behind
//! an fsync. Requests travel over `std::sync::mpsc` and answers come back over
//! `tokio::sync::oneshot`. Each thread ends when the last handle that can reach it is dropped.
//!
//! The newest entries (at most [`RECENT_MAX_ENTRIES`] and about [`RECENT_MAX_BYTES`]) are
//! also kept in memory, as a contiguous tail of the log: replication to members that keep up
//! and applying committed entries read them from there, without a thread hop or a decode.
//! Older entries are read from disk. Memory stays bounded whatever the log's length.
//!
//! The committed log id is a hint (a restarted member applies up to it before hearing from
//! the leader), so saving it costs no write of its own: it rides along in the next write (an
//! append, a vote or a purge). The last one saved before a shutdown may be lost; the member
//! then learns it from the leader.
//!
//! A database directory of an earlier version holds the log in a SQLite file (`raft.db`); it is
//! moved into segments at the first open ([`super::legacy_log`]).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, OptionalSend, StorageIOError, Vote};

use super::segments::{EncodedEntry, LogEntry, Positions, SegmentLog, read_entries};
use super::sqlite::{Kind, Res, Worker, encode};
use super::{NodeId, TypeConfig, legacy_log};
use crate::sync::lock;

const READ_LOGS: Kind = StorageIOError::read_logs;
const WRITE_LOGS: Kind = StorageIOError::write_logs;

/// The most bytes of entries one `limited_get_log_entries` call returns (at least one entry).
const READ_LIMIT_BYTES: usize = 4 << 20;

/// The most entries kept in memory.
const RECENT_MAX_ENTRIES: usize = 4096;

/// About the most encoded bytes of entries kept in memory.
const RECENT_MAX_BYTES: usize = 16 << 20;

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

/// The committed id saved since the writer thread last wrote one, if any. It is shared, so
/// saving it does not wake the writer thread: the next append picks it up.
type PendingCommitted = Arc<Mutex<Option<Option<LogId<NodeId>>>>>;

/// What the writer thread owns: the log's files and the committed id waiting to be written.
struct LogWriter {
    log: SegmentLog,
    pending_committed: PendingCommitted,
}

impl LogWriter {
    /// Runs `write` (an append, a vote or a purge) with the pending committed id, which the log
    /// writes with it if its entry is then on disk: the id may have been saved after a quorum of
    /// other members acknowledged an entry whose own append still waits behind this write, and
    /// a restart must not find it past the log's end.
    fn write(
        &mut self,
        write: impl FnOnce(&mut SegmentLog, Option<LogId<NodeId>>) -> Res<()>,
    ) -> Res<()> {
        let pending = *lock(&self.pending_committed);
        write(&mut self.log, pending.flatten())?;
        let mut pending_now = lock(&self.pending_committed);
        // A newer id saved meanwhile, or one whose entry is not written yet, waits.
        if let Some(committed) = pending
            && *pending_now == pending
            && committed <= self.log.committed()
        {
            *pending_now = None;
        }
        Ok(())
    }

    /// The committed id: the one waiting to be written, else the one on disk.
    fn committed(&self) -> Option<LogId<NodeId>> {
        lock(&self.pending_committed).unwrap_or_else(|| self.log.committed())
    }
}

/// A handle that reads log entries, from memory when recent and else from disk; cheap to
/// clone, used by replication tasks.
#[derive(Clone)]
pub struct LogReader {
    recent: SharedRecent,
    reader: Worker<Arc<Mutex<Positions>>>,
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
        let f = move |positions: &mut Arc<Mutex<Positions>>| {
            read_entries(positions, start, end, limit_bytes)
        };
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

/// The durable Raft log store (`RaftLogStorage`), backed by segment files.
pub struct LogStore {
    writer: Worker<LogWriter>,
    reader: LogReader,
    pending_committed: PendingCommitted,
    /// The number of appends synced to disk.
    #[cfg(test)]
    syncs: Arc<std::sync::atomic::AtomicUsize>,
    /// Holds appends back from disk while closed (tests of the leader's parallel flush).
    #[cfg(test)]
    pub(crate) flush_gate: tests::FlushGate,
}

impl LogStore {
    /// Opens (creating if needed) the log in the database directory `database_dir` and starts
    /// its threads.
    pub fn open(database_dir: &Path) -> Result<LogStore, crate::Error> {
        let err = |e: &dyn std::fmt::Display| {
            crate::Error::internal(format!(
                "Failed to open the Raft log in {}: {e}",
                database_dir.display()
            ))
        };
        legacy_log::migrate(database_dir)?;
        let log = SegmentLog::open(database_dir).map_err(|e| err(&e))?;
        #[cfg(test)]
        let syncs = log.syncs.clone();
        let recent = SharedRecent::default();
        let reader = Worker::spawn("raft-log-read", log.positions()).map_err(|e| err(&e))?;
        let pending_committed = PendingCommitted::default();
        let writer = LogWriter {
            log,
            pending_committed: pending_committed.clone(),
        };
        let writer = Worker::spawn("raft-log-write", writer).map_err(|e| err(&e))?;
        Ok(LogStore {
            writer,
            reader: LogReader { recent, reader },
            pending_committed,
            #[cfg(test)]
            syncs,
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
            let (last_purged_log_id, last_log_id) = writer.log.state();
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        self.writer.call(READ_LOGS, f).await
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Res<()> {
        let vote = *vote;
        let f = move |writer: &mut LogWriter| {
            writer.write(|log, committed| log.save_vote(vote, committed))
        };
        self.writer.call(StorageIOError::write_vote, f).await
    }

    async fn read_vote(&mut self) -> Res<Option<Vote<NodeId>>> {
        let f = |writer: &mut LogWriter| Ok(writer.log.vote());
        self.writer.call(StorageIOError::read_vote, f).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Res<()> {
        // The committed id is a hint that lets a restarted member apply sooner; losing the
        // latest one in a crash only delays that. So it waits for the next write instead of
        // costing a write (or even a wake of the writer thread) at every commit. Entries up to
        // it are already durable, so whichever append writes it is safe.
        *lock(&self.pending_committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Res<Option<LogId<NodeId>>> {
        let f = |writer: &mut LogWriter| Ok(writer.committed());
        self.writer.call(StorageIOError::read, f).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Res<()>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The entries are readable (from memory) when this returns; they are durable when the
        // callback fires, after the writer thread's fdatasync. The leader replicates them in
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
            let result = writer.write(|log, committed| log.append(&rows, committed));
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
        let f = move |writer: &mut LogWriter| writer.log.truncate(log_id.index);
        self.writer.call(WRITE_LOGS, f).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Res<()> {
        lock(&self.reader.recent).purge(log_id.index);
        let f = move |writer: &mut LogWriter| {
            writer.write(|log, committed| log.purge(log_id, committed))
        };
        self.writer.call(WRITE_LOGS, f).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Condvar;
    use std::sync::atomic::Ordering;

    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::*;
    use crate::db::raft::Command;
    use crate::db::raft::segments::LogOnDisk;

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
        let mut store = LogStore::open(dir.path()).unwrap();
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
    async fn a_batch_is_one_sync_and_durable_after_the_callback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut store = LogStore::open(&path).unwrap();
        let before = store.syncs.load(Ordering::SeqCst);
        // `blocking_append` returns only once the callback has fired.
        store.blocking_append(entries(1, 1000)).await.unwrap();
        assert_eq!(store.syncs.load(Ordering::SeqCst), before + 1);
        // What is on disk (read while the store is open) holds every entry.
        let on_disk = LogOnDisk::read(&path).unwrap().unwrap();
        assert_eq!(on_disk.range(), Some((1, 1000)));
        assert_eq!(on_disk.entries().unwrap().len(), 1000);
        drop(store);
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

    /// The committed id a store opened on `path` reads from disk.
    async fn committed_on_disk(path: &Path) -> Option<LogId<NodeId>> {
        LogStore::open(path)
            .unwrap()
            .read_committed()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_committed_id_is_written_with_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut store = LogStore::open(&path).unwrap();
        let before = store.syncs.load(Ordering::SeqCst);
        store.save_committed(Some(id(1, 5))).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(id(1, 5)));
        // No write of its own: not on disk.
        assert_eq!(store.syncs.load(Ordering::SeqCst), before);
        drop(store);
        assert_eq!(committed_on_disk(&path).await, None);

        let mut store = LogStore::open(&path).unwrap();
        let before = store.syncs.load(Ordering::SeqCst);
        store.save_committed(Some(id(1, 5))).await.unwrap();
        store.blocking_append(entries(1, 5)).await.unwrap();
        assert_eq!(store.syncs.load(Ordering::SeqCst), before + 1);
        drop(store);
        assert_eq!(committed_on_disk(&path).await, Some(id(1, 5)));
    }

    #[tokio::test]
    async fn a_committed_id_past_the_written_log_waits_for_its_entry() {
        for written in [11, 12] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(entries(1, 10)).await.unwrap();
            // A quorum acknowledged entry 12 before this member's own copy is written.
            store.save_committed(Some(id(1, 12))).await.unwrap();
            store.blocking_append(entries(11, written)).await.unwrap();
            assert_eq!(store.read_committed().await.unwrap(), Some(id(1, 12)));
            drop(store);
            let expected = (written == 12).then_some(id(1, 12));
            assert_eq!(committed_on_disk(dir.path()).await, expected, "{written}");
        }
    }

    #[tokio::test]
    async fn a_vote_and_a_purge_carry_the_committed_id_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries(1, 10)).await.unwrap();
        store.save_committed(Some(id(1, 8))).await.unwrap();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        drop(store);
        assert_eq!(committed_on_disk(dir.path()).await, Some(id(1, 8)));
        let mut store = LogStore::open(dir.path()).unwrap();
        store.save_committed(Some(id(1, 9))).await.unwrap();
        store.purge(id(1, 5)).await.unwrap();
        drop(store);
        assert_eq!(committed_on_disk(dir.path()).await, Some(id(1, 9)));
    }

    #[tokio::test]
    async fn vote_and_committed_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
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
        let path = dir.path().to_path_buf();
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
