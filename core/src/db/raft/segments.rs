//! The files of the durable Raft log: append-only segments in `database/log/`, every record
//! checksummed, and a small `meta` file.
//!
//! A segment, `<seq>.seg` (`seq` in 16 hex digits, counting up, never reused), starts with
//! [`MAGIC`] and then holds records back to back:
//!
//! ```text
//! len u32 | crc u32 | kind u8 | index u64 | term u64 | node u64 | payload (len bytes)
//! ```
//!
//! all little-endian; `crc` is the CRC-32 of everything after it. An entry record carries the
//! entry's log id in its header and the `postcard`-encoded entry as payload. A committed record
//! carries the committed log id (a hint for a restarted member, see `log_store`) and no payload.
//! `meta` holds the vote, the last purged log id and the committed id as of the last purge; it is
//! replaced atomically.
//!
//! **Why segments and not a SQLite file.** An append is one `pwrite` of the batch's records and
//! one `fdatasync`. A segment's space is allocated when it is created (`posix_fallocate`), so
//! that `fdatasync` writes the new data and no file size. A SQLite commit wrote several pages
//! (the table's leaf, the metadata row) into its write-ahead log and copied them again at each
//! checkpoint. Measured with three writers at once on this disk: 0.21–0.26 ms against 0.31–0.43
//! ms per commit (median), 0.38–0.49 against 1.0–1.5 ms at the 99th percentile.
//!
//! **Bytes are never written twice**, so a reader never sees a record change under it, and a
//! crash (of the process or of the machine) can only tear the end of the segment being
//! appended to:
//! - Truncating the log cuts the segment that holds the first removed entry with `ftruncate`
//!   and deletes the segments after it, the last first; the next append starts a new segment.
//! - Opening the log cuts the last segment after its last valid record (a torn batch was never
//!   acknowledged: an append is acknowledged only after its `fdatasync`), and the next append
//!   starts a new segment. A segment before the last must end exactly with a valid record;
//!   anything else is damage, reported and never cut.
//! - Purging writes `meta` first, then deletes the segments whose entries are all purged.
//!   Entries up to the last purged id that are still in a segment are skipped by readers.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::{AnyError, CommittedLeaderId, Entry, LogId, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::sqlite::{Kind, OrFail, Res, decode, encode};
use super::{NodeId, StorageError, TypeConfig};
use crate::state_dir::{create_dir, sync_dir, write_atomic};
use crate::sync::lock;

const READ_LOGS: Kind = StorageIOError::read_logs;
const WRITE_LOGS: Kind = StorageIOError::write_logs;

/// The directory of the log, inside the database directory.
pub(super) const LOG_DIR: &str = "log";

/// The file of the vote, the last purged id and the committed id at the last purge.
const META_FILE: &str = "meta";

/// The file name suffix of segments.
const SEGMENT_SUFFIX: &str = ".seg";

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"mcrlog01";

/// The bytes allocated for a segment when it is created; a larger batch gets a segment of its
/// own size.
const SEGMENT_BYTES: u64 = 16 << 20;

/// The bytes of a record before its payload.
const HEADER_BYTES: usize = 33;

/// The kinds of record.
const ENTRY: u8 = 1;
const COMMITTED: u8 = 2;

/// A Raft log entry of our types.
pub(super) type LogEntry = Entry<TypeConfig>;

/// An entry's id and its encoding, as written to disk.
pub(super) struct EncodedEntry {
    pub log_id: LogId<NodeId>,
    pub blob: Vec<u8>,
}

/// What `meta` holds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// A storage error of the subject `kind` with `message`.
fn failure(kind: Kind, message: String) -> StorageError {
    StorageError::from(kind(AnyError::error(message)))
}

fn log_id(index: u64, term: u64, node: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// Appends a record of `kind` for `id` with `payload` to `buf`.
fn push_record(buf: &mut Vec<u8>, kind: u8, id: LogId<NodeId>, payload: &[u8]) -> Res<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        failure(
            WRITE_LOGS,
            format!("a log entry of {} bytes", payload.len()),
        )
    })?;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    for value in [id.index, id.leader_id.term, id.leader_id.node_id] {
        buf.extend_from_slice(&value.to_le_bytes());
    }
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The header of a valid record at the start of `bytes`, with the record's length; `None`
/// where no whole record with a matching checksum starts (the end of the log).
fn parse_record(bytes: &[u8]) -> Option<(u8, LogId<NodeId>, usize)> {
    let header = bytes.get(..HEADER_BYTES)?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let len = HEADER_BYTES + usize::try_from(u32_at(0)).ok()?;
    let record = bytes.get(..len)?;
    let kind = header[8];
    if crc32fast::hash(&record[8..]) != u32_at(4) || !matches!(kind, ENTRY | COMMITTED) {
        return None;
    }
    Some((kind, log_id(u64_at(9), u64_at(17), u64_at(25)), len))
}

/// Where an entry's record is in its segment.
#[derive(Clone, Copy, Debug)]
struct Position {
    index: u64,
    offset: u64,
    /// The record's length, header included.
    len: u32,
    term: u64,
    node: u64,
}

/// The entries of one segment, in index order (at least one).
struct SegmentPositions {
    seq: u64,
    file: Arc<File>,
    records: Vec<Position>,
}

impl SegmentPositions {
    /// The index after the segment's last entry.
    fn end(&self) -> u64 {
        self.records.last().map_or(0, |last| last.index + 1)
    }

    /// The number of the segment's entries before `index`.
    fn before(&self, index: u64) -> usize {
        self.records.partition_point(|record| record.index < index)
    }
}

/// Where every entry of the log is: shared by the writer and the readers.
#[derive(Default)]
pub(super) struct Positions {
    /// Segments in order, each holding at least one entry, every index above those before it.
    /// Raft appends without gaps, but the storage allows them (openraft's storage suite
    /// makes some).
    segments: Vec<SegmentPositions>,
    /// The last purged index: entries up to it may still be in a segment, but are not read.
    purged: Option<u64>,
}

/// An entry to read: its segment file and its record.
type Located = (Arc<File>, Position);

impl Positions {
    /// The records of the entries of `[start, end)`, stopping after `limit_bytes` (at least one).
    fn locate(&self, start: u64, end: u64, limit_bytes: usize) -> Vec<Located> {
        let start = start.max(self.purged.map_or(0, |purged| purged + 1));
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for segment in &self.segments {
            for position in &segment.records[segment.before(start)..] {
                if position.index >= end {
                    return out;
                }
                out.push((segment.file.clone(), *position));
                bytes += position.len as usize;
                if bytes >= limit_bytes {
                    return out;
                }
            }
        }
        out
    }

    /// The id of the last entry held.
    fn last(&self) -> Option<LogId<NodeId>> {
        let position = self.segments.last()?.records.last()?;
        Some(log_id(position.index, position.term, position.node))
    }

    /// The index of the first entry held that is not purged.
    fn first(&self) -> Option<u64> {
        let (_, position) = self.locate(0, u64::MAX, 0).into_iter().next()?;
        Some(position.index)
    }
}

/// Reads the entries of `[start, end)` located by `positions`, stopping after `limit_bytes`
/// (at least one).
pub(super) fn read_entries(
    positions: &Mutex<Positions>,
    start: u64,
    end: u64,
    limit_bytes: usize,
) -> Res<Vec<LogEntry>> {
    let located = lock(positions).locate(start, end, limit_bytes);
    match read_located(&located) {
        Ok(entries) => Ok(entries),
        Err(err) => {
            // A truncate may have cut a segment after the records were located: read again
            // while the writer cannot change what is located.
            tracing::debug!("Reading the Raft log again under its lock: {err}");
            let positions = lock(positions);
            read_located(&positions.locate(start, end, limit_bytes))
        }
    }
}

/// Reads and checks the located records, with one `pread` per run of adjacent records.
fn read_located(located: &[Located]) -> Res<Vec<LogEntry>> {
    let mut out = Vec::with_capacity(located.len());
    let mut run_start = 0;
    while run_start < located.len() {
        let (file, first) = &located[run_start];
        let mut run_end = run_start + 1;
        let mut end_offset = first.offset + u64::from(first.len);
        while let Some((next_file, next)) = located.get(run_end) {
            if !Arc::ptr_eq(file, next_file) || next.offset != end_offset {
                break;
            }
            end_offset += u64::from(next.len);
            run_end += 1;
        }
        let mut buf = vec![0; (end_offset - first.offset) as usize];
        file.read_exact_at(&mut buf, first.offset)
            .or_fail(READ_LOGS)?;
        let mut at = 0;
        for (_, position) in &located[run_start..run_end] {
            let expected = log_id(position.index, position.term, position.node);
            match parse_record(&buf[at..]) {
                Some((ENTRY, id, len)) if id == expected && len == position.len as usize => {
                    out.push(decode(&buf[at + HEADER_BYTES..at + len], READ_LOGS)?);
                    at += len;
                }
                _ => {
                    let message = format!("the record of log entry {expected} is damaged");
                    return Err(failure(READ_LOGS, message));
                }
            }
        }
        run_start = run_end;
    }
    Ok(out)
}

/// The path of segment `seq` in the log directory `dir`.
fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}{SEGMENT_SUFFIX}"))
}

/// One segment as found on disk.
struct FoundSegment {
    seq: u64,
    file: File,
    /// The entries after the last purged one.
    records: Vec<Position>,
    /// The end of the last valid record, and the file's length.
    end: u64,
    len: u64,
    /// Whether bytes after `end` are not all zero (a torn write).
    torn: bool,
}

/// The log as found on disk.
struct Found {
    meta: Meta,
    segments: Vec<FoundSegment>,
    /// The newest committed id: in `meta` or in a committed record.
    committed: Option<LogId<NodeId>>,
}

/// Reads the log in `dir` (which must exist) without changing it; files are opened for
/// writing too when `writable`.
fn find(dir: &Path, writable: bool) -> Res<Found> {
    let kind: Kind = StorageIOError::read;
    let meta: Meta = match fs::read(dir.join(META_FILE)) {
        Ok(bytes) => decode(&bytes, kind)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Meta::default(),
        Err(err) => return Err(err).or_fail(kind),
    };
    let mut seqs = Vec::new();
    for dir_entry in fs::read_dir(dir).or_fail(kind)? {
        let name = dir_entry.or_fail(kind)?.file_name();
        let seq = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX));
        if let Some(seq) = seq.and_then(|seq| u64::from_str_radix(seq, 16).ok()) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();

    let purged = meta.last_purged.map(|id| id.index);
    let mut previous: Option<u64> = None;
    let mut committed = meta.committed;
    let mut segments = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let damaged = |what: String| {
            failure(
                kind,
                format!("The Raft log segment {path:?} is damaged: {what}"),
            )
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .or_fail(kind)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).or_fail(kind)?;
        let mut segment = FoundSegment {
            seq,
            file,
            records: Vec::new(),
            end: 0,
            len: bytes.len() as u64,
            torn: false,
        };
        if bytes.starts_with(MAGIC) {
            let mut offset = MAGIC.len();
            while let Some((record_kind, id, len)) = parse_record(&bytes[offset..]) {
                if record_kind == COMMITTED {
                    committed = committed.max(Some(id));
                } else if purged.is_none_or(|purged| id.index > purged) {
                    if let Some(previous) = previous.filter(|&previous| previous >= id.index) {
                        let message = format!("entry {} after entry {previous}", id.index);
                        return Err(damaged(message));
                    }
                    segment.records.push(Position {
                        index: id.index,
                        offset: offset as u64,
                        len: len as u32,
                        term: id.leader_id.term,
                        node: id.leader_id.node_id,
                    });
                    previous = Some(id.index);
                }
                offset += len;
            }
            segment.end = offset as u64;
        } else if bytes.iter().any(|&b| b != 0) {
            return Err(damaged("it is not a log segment".to_string()));
        }
        segment.torn = bytes[segment.end as usize..].iter().any(|&b| b != 0);
        let last = i + 1 == seqs.len();
        if segment.torn && !last {
            return Err(damaged(format!("no valid record at byte {}", segment.end)));
        }
        segments.push(segment);
    }
    Ok(Found {
        meta,
        segments,
        committed,
    })
}

/// A read-only view of a log on disk, for reading it while its member may run.
pub(super) struct LogOnDisk {
    positions: Mutex<Positions>,
}

impl LogOnDisk {
    /// Reads the log in the database directory `database_dir`; `None` if it has none.
    pub(super) fn read(database_dir: &Path) -> Res<Option<LogOnDisk>> {
        let dir = database_dir.join(LOG_DIR);
        if !dir.exists() {
            return Ok(None);
        }
        let found = find(&dir, false)?;
        let positions = positions_of(found.segments, found.meta.last_purged);
        Ok(Some(LogOnDisk {
            positions: Mutex::new(positions),
        }))
    }

    /// The first and the last index of the entries held, if any.
    pub(super) fn range(&self) -> Option<(u64, u64)> {
        let positions = lock(&self.positions);
        Some((positions.first()?, positions.last()?.index))
    }

    /// Every entry held, in order.
    pub(super) fn entries(&self) -> Res<Vec<LogEntry>> {
        read_entries(&self.positions, 0, u64::MAX, usize::MAX)
    }
}

/// The positions of the entries of `segments` (those without entries are left out).
fn positions_of(segments: Vec<FoundSegment>, purged: Option<LogId<NodeId>>) -> Positions {
    let segments = segments
        .into_iter()
        .filter(|segment| !segment.records.is_empty())
        .map(|segment| SegmentPositions {
            seq: segment.seq,
            file: Arc::new(segment.file),
            records: segment.records,
        })
        .collect();
    Positions {
        segments,
        purged: purged.map(|id| id.index),
    }
}

/// The segment appends go to.
struct Active {
    seq: u64,
    file: Arc<File>,
    /// The end of the last record, and the bytes allocated.
    end: u64,
    capacity: u64,
}

/// The log's files, owned by the log store's writer thread.
pub(super) struct SegmentLog {
    dir: PathBuf,
    meta: Meta,
    positions: Arc<Mutex<Positions>>,
    active: Option<Active>,
    next_seq: u64,
    /// The newest committed id on disk.
    committed: Option<LogId<NodeId>>,
    /// Set once a write failed: what is on disk is then unknown, so nothing more is written.
    failed: bool,
    /// The number of `fdatasync`s of appends.
    #[cfg(test)]
    pub(super) syncs: Arc<std::sync::atomic::AtomicUsize>,
}

impl SegmentLog {
    /// Opens the log in the database directory `database_dir`, creating it if needed. The last
    /// segment is cut after its last valid record; segments without entries are deleted.
    pub(super) fn open(database_dir: &Path) -> Res<SegmentLog> {
        SegmentLog::open_dir(&database_dir.join(LOG_DIR), database_dir)
    }

    /// Opens the log in `dir`, a directory in `parent`, as [`SegmentLog::open`] does.
    pub(super) fn open_dir(dir: &Path, parent: &Path) -> Res<SegmentLog> {
        let kind: Kind = StorageIOError::write_logs;
        if !dir.exists() {
            create_dir(dir, 0o700).or_fail(kind)?;
            sync_dir(parent).or_fail(kind)?;
        }
        let dir = dir.to_path_buf();
        let found = find(&dir, true)?;
        let next_seq = found.segments.last().map_or(1, |segment| segment.seq + 1);
        if let Some(last) = found.segments.last()
            && last.end < last.len
        {
            if last.torn {
                tracing::warn!(
                    "The Raft log's last segment ends with {} bytes of a write that was never acknowledged (a crash); cutting them",
                    last.len - last.end
                );
            }
            last.file.set_len(last.end).or_fail(kind)?;
            last.file.sync_all().or_fail(kind)?;
        }
        let empty: Vec<u64> = (found.segments.iter())
            .filter(|segment| segment.records.is_empty())
            .map(|segment| segment.seq)
            .collect();
        for &seq in &empty {
            fs::remove_file(segment_path(&dir, seq)).or_fail(kind)?;
        }
        if !empty.is_empty() {
            sync_dir(&dir).or_fail(kind)?;
        }
        let positions = positions_of(found.segments, found.meta.last_purged);
        Ok(SegmentLog {
            dir,
            meta: found.meta,
            positions: Arc::new(Mutex::new(positions)),
            active: None,
            next_seq,
            committed: found.committed,
            failed: false,
            #[cfg(test)]
            syncs: Default::default(),
        })
    }

    /// The positions of the entries, for readers.
    pub(super) fn positions(&self) -> Arc<Mutex<Positions>> {
        self.positions.clone()
    }

    /// The last purged id and the id of the last entry (the last purged one if none is held).
    pub(super) fn state(&self) -> (Option<LogId<NodeId>>, Option<LogId<NodeId>>) {
        let last = lock(&self.positions).last();
        (self.meta.last_purged, last.or(self.meta.last_purged))
    }

    /// The saved vote.
    pub(super) fn vote(&self) -> Option<Vote<NodeId>> {
        self.meta.vote
    }

    /// The newest committed id on disk.
    pub(super) fn committed(&self) -> Option<LogId<NodeId>> {
        self.committed
    }

    /// Saves the vote (an atomic replace of `meta`), and `committed` with it if its entry is
    /// written and it is newer than the committed id on disk.
    pub(super) fn save_vote(
        &mut self,
        vote: Vote<NodeId>,
        committed: Option<LogId<NodeId>>,
    ) -> Res<()> {
        let meta = Meta {
            vote: Some(vote),
            ..self.meta
        };
        self.write_meta(meta, committed)
    }

    /// `committed` if its entry is written (the last entry written is `last`) and it is newer
    /// than the committed id on disk.
    fn newer_committed(
        &self,
        committed: Option<LogId<NodeId>>,
        last: Option<u64>,
    ) -> Option<LogId<NodeId>> {
        committed
            .filter(|id| last.is_some_and(|last| id.index <= last) && Some(*id) > self.committed)
    }

    /// Writes `meta` to the meta file, with `committed` if its entry is written and it is newer
    /// ([`SegmentLog::newer_committed`]), and makes it the current one.
    fn write_meta(&mut self, mut meta: Meta, committed: Option<LogId<NodeId>>) -> Res<()> {
        let kind: Kind = StorageIOError::write;
        self.usable(kind)?;
        let last = lock(&self.positions).last();
        let committed = self.newer_committed(committed, last.map(|id| id.index));
        meta.committed = self.committed.max(committed);
        let bytes = encode(&meta, kind)?;
        write_atomic(&self.dir.join(META_FILE), &bytes, 0o600).or_fail(kind)?;
        self.committed = meta.committed;
        self.meta = meta;
        Ok(())
    }

    fn usable(&self, kind: Kind) -> Res<()> {
        if self.failed {
            let message = "an earlier write to the Raft log failed; restart the member".to_string();
            return Err(failure(kind, message));
        }
        Ok(())
    }

    /// Appends `entries` (in index order; from an index the log holds, the entries from there
    /// on are replaced) and `committed`, if its entry is then written and it is newer than the
    /// committed id on disk, in one `pwrite` and one `fdatasync`.
    pub(super) fn append(
        &mut self,
        entries: &[EncodedEntry],
        committed: Option<LogId<NodeId>>,
    ) -> Res<()> {
        self.usable(WRITE_LOGS)?;
        let Some(first) = entries.first().map(|entry| entry.log_id.index) else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let mut records: Vec<Position> = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(previous) = records.last().filter(|p| p.index >= entry.log_id.index) {
                let message = format!(
                    "entry {} appended after entry {}",
                    entry.log_id.index, previous.index
                );
                return Err(failure(WRITE_LOGS, message));
            }
            let offset = buf.len();
            push_record(&mut buf, ENTRY, entry.log_id, &entry.blob)?;
            records.push(Position {
                index: entry.log_id.index,
                offset: offset as u64,
                len: (buf.len() - offset) as u32,
                term: entry.log_id.leader_id.term,
                node: entry.log_id.leader_id.node_id,
            });
        }
        let last_index = records.last().map(|last| last.index);
        let committed = self.newer_committed(committed, last_index);
        if let Some(id) = committed {
            push_record(&mut buf, COMMITTED, id, &[])?;
        }

        if self.state().1.is_some_and(|last| first <= last.index) {
            self.truncate(first)?;
        }
        self.make_room(buf.len() as u64)?;
        let Some(active) = &mut self.active else {
            unreachable!("make_room leaves an active segment");
        };
        let written = active
            .file
            .write_all_at(&buf, active.end)
            .and_then(|()| active.file.sync_data());
        if let Err(err) = written {
            self.failed = true;
            return Err(err).or_fail(WRITE_LOGS);
        }
        #[cfg(test)]
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for record in &mut records {
            record.offset += active.end;
        }
        active.end += buf.len() as u64;
        let mut positions = lock(&self.positions);
        match positions.segments.last_mut() {
            Some(segment) if segment.seq == active.seq => segment.records.extend(records),
            _ => positions.segments.push(SegmentPositions {
                seq: active.seq,
                file: active.file.clone(),
                records,
            }),
        }
        drop(positions);
        self.committed = self.committed.max(committed);
        Ok(())
    }

    /// Makes sure the active segment has room for `bytes` more, sealing it and starting a new
    /// one if not.
    fn make_room(&mut self, bytes: u64) -> Res<()> {
        if self
            .active
            .as_ref()
            .is_some_and(|active| active.end + bytes <= active.capacity)
        {
            return Ok(());
        }
        self.seal()?;
        let seq = self.next_seq;
        let path = segment_path(&self.dir, seq);
        let capacity = SEGMENT_BYTES.max(MAGIC.len() as u64 + bytes);
        let created = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all_at(MAGIC, 0)?;
            let len = i64::try_from(capacity).map_err(std::io::Error::other)?;
            nix::fcntl::posix_fallocate(&file, 0, len)?;
            file.sync_all()?;
            Ok::<File, std::io::Error>(file)
        })();
        let file = match created {
            Ok(file) => file,
            Err(err) => {
                let _ = fs::remove_file(&path);
                return Err(err).or_fail(WRITE_LOGS);
            }
        };
        sync_dir(&self.dir).or_fail(WRITE_LOGS)?;
        self.next_seq += 1;
        self.active = Some(Active {
            seq,
            file: Arc::new(file),
            end: MAGIC.len() as u64,
            capacity,
        });
        Ok(())
    }

    /// Cuts the active segment after its last record (freeing the space allocated beyond it);
    /// the next append starts a new segment.
    fn seal(&mut self) -> Res<()> {
        if let Some(active) = self.active.take() {
            let sealed = (active.file.set_len(active.end)).and_then(|()| active.file.sync_all());
            if let Err(err) = sealed {
                self.failed = true;
                return Err(err).or_fail(WRITE_LOGS);
            }
        }
        Ok(())
    }

    /// Removes the entries from `index` on.
    pub(super) fn truncate(&mut self, index: u64) -> Res<()> {
        self.usable(WRITE_LOGS)?;
        let mut positions = lock(&self.positions);
        let Some(keep) = (positions.segments.iter()).position(|segment| segment.end() > index)
        else {
            return Ok(()); // nothing from `index` on
        };
        let mut removed: Vec<SegmentPositions> = positions.segments.drain(keep..).collect();
        // The first affected segment keeps its entries before `index`, if any.
        let cut = match removed.first_mut() {
            Some(segment) if segment.before(index) > 0 => {
                let kept = segment.before(index);
                let offset = segment.records[kept].offset;
                let file = segment.file.clone();
                positions.segments.push(SegmentPositions {
                    seq: segment.seq,
                    file: segment.file.clone(),
                    records: segment.records[..kept].to_vec(),
                });
                removed.remove(0);
                Some((file, offset))
            }
            _ => None,
        };
        drop(positions);
        // Closing the active segment; whatever it is, it was among those affected.
        self.active = None;
        let result = (|| {
            for segment in removed.iter().rev() {
                fs::remove_file(segment_path(&self.dir, segment.seq))?;
            }
            if !removed.is_empty() {
                sync_dir(&self.dir).map_err(std::io::Error::other)?;
            }
            if let Some((file, offset)) = cut {
                file.set_len(offset)?;
                file.sync_all()?;
            }
            Ok::<(), std::io::Error>(())
        })();
        if let Err(err) = result {
            self.failed = true;
            return Err(err).or_fail(WRITE_LOGS);
        }
        Ok(())
    }

    /// Purges the entries up to `id`, included: saves it in `meta` (with `committed`, as
    /// [`SegmentLog::save_vote`] does), then deletes the segments that hold no later entry.
    pub(super) fn purge(&mut self, id: LogId<NodeId>, committed: Option<LogId<NodeId>>) -> Res<()> {
        if self.meta.last_purged >= Some(id) {
            return Ok(());
        }
        let meta = Meta {
            last_purged: Some(id),
            ..self.meta
        };
        self.write_meta(meta, committed)?;
        let mut positions = lock(&self.positions);
        positions.purged = Some(id.index);
        let gone = (positions.segments.iter())
            .take_while(|segment| segment.end() <= id.index + 1)
            .count();
        let removed: Vec<u64> = positions
            .segments
            .drain(..gone)
            .map(|segment| segment.seq)
            .collect();
        drop(positions);
        if self
            .active
            .as_ref()
            .is_some_and(|active| removed.contains(&active.seq))
        {
            self.active = None;
        }
        for &seq in &removed {
            fs::remove_file(segment_path(&self.dir, seq)).or_fail(WRITE_LOGS)?;
        }
        if !removed.is_empty() {
            sync_dir(&self.dir).or_fail(WRITE_LOGS)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::db::raft::Command;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        log_id(index, term, 0)
    }

    /// Entries `from..=to` of `term`, encoded.
    fn entries(term: u64, from: u64, to: u64) -> Vec<EncodedEntry> {
        (from..=to)
            .map(|index| {
                let sql = format!("INSERT INTO t VALUES ({index})");
                let entry = LogEntry {
                    log_id: id(term, index),
                    payload: EntryPayload::Normal(Command::Sql { sql }),
                };
                EncodedEntry {
                    log_id: entry.log_id,
                    blob: encode(&entry, WRITE_LOGS).unwrap(),
                }
            })
            .collect()
    }

    /// The `(term, index)` of every entry the log in `database_dir` holds, read from disk.
    fn on_disk(database_dir: &Path) -> Vec<(u64, u64)> {
        let log = LogOnDisk::read(database_dir).unwrap().unwrap();
        let entries = log.entries().unwrap();
        (entries.iter())
            .map(|entry| (entry.log_id.leader_id.term, entry.log_id.index))
            .collect()
    }

    fn run(term: u64, from: u64, to: u64) -> Vec<(u64, u64)> {
        (from..=to).map(|index| (term, index)).collect()
    }

    fn segment_files(database_dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(database_dir.join(LOG_DIR))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
            .collect();
        files.sort();
        files
    }

    /// A log in `dir` with entries 1–15 of term 1, in three segments (each open starts one).
    fn three_segments(dir: &Path) {
        for (from, to) in [(1, 5), (6, 10), (11, 15)] {
            let mut log = SegmentLog::open(dir).unwrap();
            log.append(&entries(1, from, to), None).unwrap();
        }
        assert_eq!(segment_files(dir).len(), 3);
    }

    #[test]
    fn a_segment_is_allocated_ahead_and_cut_to_its_records_when_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.append(&entries(1, 1, 3), None).unwrap();
        let file = &segment_files(dir.path())[0];
        assert_eq!(fs::metadata(file).unwrap().len(), SEGMENT_BYTES);
        let end = log.active.as_ref().unwrap().end;
        drop(log);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(fs::metadata(file).unwrap().len(), end);
        assert_eq!(log.state(), (None, Some(id(1, 3))));
        assert_eq!(on_disk(dir.path()), run(1, 1, 3));
    }

    #[test]
    fn a_torn_write_at_the_end_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.append(&entries(1, 1, 4), None).unwrap();
        let end = log.active.as_ref().unwrap().end;
        // A batch whose first record reached the disk only in part (a machine crash): its
        // length and checksum are there, half its bytes are not.
        let mut torn = Vec::new();
        push_record(&mut torn, ENTRY, id(1, 5), &entries(1, 5, 5)[0].blob).unwrap();
        torn.truncate(torn.len() / 2);
        let file = &log.active.as_ref().unwrap().file;
        file.write_all_at(&torn, end).unwrap();
        drop(log);

        let mut log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(log.state(), (None, Some(id(1, 4))));
        assert_eq!(
            fs::metadata(&segment_files(dir.path())[0]).unwrap().len(),
            end
        );
        log.append(&entries(2, 5, 6), None).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(log.state(), (None, Some(id(2, 6))));
        let mut expected = run(1, 1, 4);
        expected.extend(run(2, 5, 6));
        assert_eq!(on_disk(dir.path()), expected);
    }

    #[test]
    fn damage_before_the_last_segment_is_reported_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let first = &segment_files(dir.path())[0];
        let mut bytes = fs::read(first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::write(first, &bytes).unwrap();
        let err = SegmentLog::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("is damaged"), "{err}");
        assert!(LogOnDisk::read(dir.path()).is_err());
        // Nothing was cut.
        assert_eq!(fs::read(first).unwrap(), bytes);
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        fs::write(segment_files(dir.path())[2].clone(), b"not a segment").unwrap();
        let err = SegmentLog::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("not a log segment"), "{err}");
    }

    #[test]
    fn truncating_cuts_one_segment_and_deletes_the_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.truncate(8).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 2);
        assert_eq!(log.state(), (None, Some(id(1, 7))));
        // The next entries, of a new term, go to a new segment; the old bytes after the cut
        // are gone and can never come back.
        log.append(&entries(2, 8, 9), None).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 3);
        drop(log);
        let mut expected = run(1, 1, 7);
        expected.extend(run(2, 8, 9));
        assert_eq!(on_disk(dir.path()), expected);

        // Appending from an index the log holds replaces the entries from there on.
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.append(&entries(3, 3, 3), None).unwrap();
        drop(log);
        let mut expected = run(1, 1, 2);
        expected.push((3, 3));
        assert_eq!(on_disk(dir.path()), expected);

        // Truncating every entry leaves an empty log.
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.truncate(1).unwrap();
        assert_eq!(log.state(), (None, None));
        assert!(segment_files(dir.path()).is_empty());
    }

    #[test]
    fn a_batch_must_be_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.append(&entries(1, 1, 3), None).unwrap();
        let mut backwards = entries(1, 5, 5);
        backwards.extend(entries(1, 4, 4));
        let err = log.append(&backwards, None).err().unwrap();
        assert!(
            err.to_string().contains("entry 4 appended after entry 5"),
            "{err}"
        );
        assert_eq!(log.state(), (None, Some(id(1, 3))));
    }

    #[test]
    fn purging_deletes_the_segments_it_empties_and_readers_skip_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.purge(id(1, 7), None).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 2);
        assert_eq!(log.state(), (Some(id(1, 7)), Some(id(1, 15))));
        assert_eq!(on_disk(dir.path()), run(1, 8, 15));
        let reopened = LogOnDisk::read(dir.path()).unwrap().unwrap();
        assert_eq!(reopened.range(), Some((8, 15)));

        // Past the last entry: every segment goes, and the log goes on after the purged id.
        log.purge(id(2, 20), None).unwrap();
        assert!(segment_files(dir.path()).is_empty());
        assert_eq!(log.state(), (Some(id(2, 20)), Some(id(2, 20))));
        log.append(&entries(2, 21, 22), None).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(log.state(), (Some(id(2, 20)), Some(id(2, 22))));
        assert_eq!(on_disk(dir.path()), run(2, 21, 22));
    }

    #[test]
    fn a_purge_interrupted_before_its_files_went_is_completed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let files = segment_files(dir.path());
        let kept: Vec<Vec<u8>> = files.iter().map(|file| fs::read(file).unwrap()).collect();
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.purge(id(1, 12), None).unwrap();
        drop(log);
        // The crash came after `meta` was written, before the segments were deleted.
        for (file, bytes) in files.iter().zip(&kept) {
            fs::write(file, bytes).unwrap();
        }
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(log.state(), (Some(id(1, 12)), Some(id(1, 15))));
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert_eq!(on_disk(dir.path()), run(1, 13, 15));
    }

    #[test]
    fn vote_and_committed_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path()).unwrap();
        log.append(&entries(1, 1, 3), Some(id(1, 2))).unwrap();
        // An id whose entry is not written is not written either.
        log.append(&entries(1, 4, 4), Some(id(1, 9))).unwrap();
        log.save_vote(Vote::new(4, 7), None).unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(log.vote(), Some(Vote::new(4, 7)));
        assert_eq!(log.committed(), Some(id(1, 2)));
    }

    #[test]
    fn a_reader_reads_ranges_across_segments_and_checks_every_record() {
        let dir = tempfile::tempdir().unwrap();
        three_segments(dir.path());
        let log = SegmentLog::open(dir.path()).unwrap();
        let positions = log.positions();
        let got = read_entries(&positions, 4, 13, usize::MAX).unwrap();
        let indexes: Vec<u64> = got.iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(indexes, (4..13).collect::<Vec<_>>());
        // The byte limit stops after the record that reaches it.
        let one = lock(&positions).segments[0].records[0].len as usize;
        // A gap (openraft's storage suite makes some) is skipped.
        let mut log = log;
        log.append(&entries(1, 20, 21), None).unwrap();
        let got = read_entries(&positions, 14, 30, usize::MAX).unwrap();
        let indexes: Vec<u64> = got.iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(indexes, [14, 15, 20, 21]);
        assert_eq!(read_entries(&positions, 1, 15, one + 1).unwrap().len(), 2);

        // A record changed on disk is refused, not decoded.
        let file = &segment_files(dir.path())[1];
        let mut bytes = fs::read(file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(file, &bytes).unwrap();
        let err = read_entries(&positions, 9, 11, usize::MAX).err().unwrap();
        assert!(
            err.to_string().contains("log entry T1-N0-10 is damaged"),
            "{err}"
        );
    }
}
