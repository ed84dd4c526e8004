//! The Raft state machine: a SQLite database (`database/db.sqlite3`, WAL) owned by one writer
//! thread.
//!
//! Every batch of entries is applied in one SQLite transaction together with the applied log
//! id, the membership and the per-table last-write indexes, so a crash can never apply an entry
//! twice. Each entry runs in its own savepoint: an entry that conflicts or fails is rolled back
//! alone and answered as such, identically on every member.
//!
//! Snapshots are `VACUUM INTO` copies of the database, which carry their own applied state; a
//! received snapshot is installed by renaming it over the database file.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, EntryPayload, LogId, StorageIOError, StoredMembership};
use rusqlite::hooks::Action;
use rusqlite::session::{ConflictAction, ConflictType};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{Command, CommandResult, MemberNode, NodeId, StorageError, TypeConfig};

/// Prefix of the library's own bookkeeping tables inside the state machine database.
pub const INTERNAL_TABLE_PREFIX: &str = "_microcluster_";

/// The applied state as Raft sees it.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _microcluster_raft (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS _microcluster_table_writes (name TEXT PRIMARY KEY NOT NULL, idx INTEGER NOT NULL);
";

/// The database file inside the database directory.
const DB_FILE: &str = "db.sqlite3";

/// The open database and where it lives; only the writer thread touches it.
struct Db {
    dir: PathBuf,
    conn: Connection,
    /// Tables changed by the entry being applied (filled by the update hook).
    written: Arc<Mutex<BTreeSet<String>>>,
}

fn open_connection(
    path: &Path,
    written: &Arc<Mutex<BTreeSet<String>>>,
) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Raft's log is the durability point; the state machine is rebuilt from it after a crash.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    let written = written.clone();
    conn.update_hook(Some(move |_: Action, _: &str, table: &str, _: i64| {
        if !table.starts_with(INTERNAL_TABLE_PREFIX) {
            written
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(table.to_string());
        }
    }))?;
    Ok(conn)
}

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(io::Error::other)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(io::Error::other)
}

impl Db {
    fn open(dir: &Path) -> io::Result<Db> {
        std::fs::create_dir_all(dir.join("snapshots"))?;
        let written = Arc::new(Mutex::new(BTreeSet::new()));
        let conn = open_connection(&dir.join(DB_FILE), &written).map_err(io::Error::other)?;
        Ok(Db {
            dir: dir.to_path_buf(),
            conn,
            written,
        })
    }

    fn meta<T: serde::de::DeserializeOwned>(conn: &Connection, key: &str) -> io::Result<Option<T>> {
        let bytes: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM _microcluster_raft WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()
            .map_err(io::Error::other)?;
        bytes.map(|bytes| decode(&bytes)).transpose()
    }

    fn set_meta<T: serde::Serialize>(conn: &Connection, key: &str, value: &T) -> io::Result<()> {
        conn.execute(
            "INSERT OR REPLACE INTO _microcluster_raft (key, value) VALUES (?1, ?2)",
            params![key, encode(value)?],
        )
        .map_err(io::Error::other)?;
        Ok(())
    }

    fn applied_state(&self) -> io::Result<AppliedState> {
        let applied = Db::meta(&self.conn, "applied")?.flatten();
        let membership = Db::meta(&self.conn, "membership")?.unwrap_or_default();
        Ok((applied, membership))
    }

    fn take_written(&self) -> BTreeSet<String> {
        std::mem::take(
            &mut *self
                .written
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Applies a batch in one transaction; each entry in its own savepoint.
    fn apply(
        &mut self,
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> io::Result<Vec<CommandResult>> {
        let tx = self.conn.transaction().map_err(io::Error::other)?;
        let mut results = Vec::with_capacity(entries.len());
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Applied { rows_affected: 0 },
                EntryPayload::Membership(membership) => {
                    Db::set_meta(
                        &tx,
                        "membership",
                        &StoredMembership::new(Some(entry.log_id), membership),
                    )?;
                    CommandResult::Applied { rows_affected: 0 }
                }
                EntryPayload::Normal(command) => {
                    self.written
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .clear();
                    let result = apply_command(&tx, index, &command)?;
                    let written = std::mem::take(
                        &mut *self
                            .written
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    );
                    if matches!(result, CommandResult::Applied { .. }) {
                        for table in written {
                            tx.execute(
                                "INSERT OR REPLACE INTO _microcluster_table_writes (name, idx) VALUES (?1, ?2)",
                                params![table, index as i64],
                            )
                            .map_err(io::Error::other)?;
                        }
                    }
                    result
                }
            };
            last = Some(entry.log_id);
            results.push(result);
        }
        if let Some(log_id) = last {
            Db::set_meta(&tx, "applied", &Some(log_id))?;
        }
        tx.commit().map_err(io::Error::other)?;
        self.take_written();
        Ok(results)
    }

    /// Writes a snapshot of the current state and returns its metadata and file.
    fn build_snapshot(&self) -> io::Result<(SnapshotMeta<NodeId, MemberNode>, PathBuf)> {
        let (last_log_id, last_membership) = self.applied_state()?;
        let snapshot_id = match last_log_id {
            Some(log_id) => format!(
                "{}-{}-{}",
                log_id.leader_id.term, log_id.leader_id.node_id, log_id.index
            ),
            None => "0-0-0".to_string(),
        };
        let dir = self.dir.join("snapshots");
        let temp = dir.join(format!("{snapshot_id}.tmp"));
        let _ = std::fs::remove_file(&temp);
        self.conn
            .execute("VACUUM main INTO ?1", [temp.to_string_lossy()])
            .map_err(io::Error::other)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let path = dir.join("current.db");
        std::fs::rename(&temp, &path)?;
        crate::state_dir::write_atomic(&dir.join("current.meta"), &encode(&meta)?, 0o600)
            .map_err(io::Error::other)?;
        sync_dir(&dir)?;
        Ok((meta, path))
    }

    /// Replaces the database with the snapshot at `received`, keeping a copy as the current
    /// snapshot.
    fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        received: &Path,
    ) -> io::Result<()> {
        let snapshot: AppliedState = {
            let conn = Connection::open(received).map_err(io::Error::other)?;
            (
                Db::meta(&conn, "applied")?.flatten(),
                Db::meta(&conn, "membership")?.unwrap_or_default(),
            )
        };
        if snapshot.0 != meta.last_log_id {
            return Err(io::Error::other(format!(
                "snapshot {} holds applied log id {:?}, not {:?}",
                meta.snapshot_id, snapshot.0, meta.last_log_id
            )));
        }
        let dir = self.dir.join("snapshots");
        let current = dir.join("current.db");
        std::fs::copy(received, dir.join("current.db.tmp"))?;
        std::fs::rename(dir.join("current.db.tmp"), &current)?;
        crate::state_dir::write_atomic(&dir.join("current.meta"), &encode(meta)?, 0o600)
            .map_err(io::Error::other)?;

        // Close the database, move the snapshot into its place, and reopen.
        let placeholder = Connection::open_in_memory().map_err(io::Error::other)?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        let db_path = self.dir.join(DB_FILE);
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{DB_FILE}{suffix}")));
        }
        std::fs::rename(received, &db_path)?;
        sync_dir(&self.dir)?;
        self.conn = open_connection(&db_path, &self.written).map_err(io::Error::other)?;
        Ok(())
    }

    fn current_snapshot(&self) -> io::Result<Option<(SnapshotMeta<NodeId, MemberNode>, PathBuf)>> {
        let dir = self.dir.join("snapshots");
        match std::fs::read(dir.join("current.meta")) {
            Ok(bytes) => Ok(Some((decode(&bytes)?, dir.join("current.db")))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Applies one command inside a savepoint. Conflicts and SQL failures roll the savepoint back
/// and are answered, not raised: they are deterministic outcomes of the log.
fn apply_command(
    tx: &rusqlite::Transaction<'_>,
    index: u64,
    command: &Command,
) -> io::Result<CommandResult> {
    if let Command::Changeset {
        base, read_tables, ..
    } = command
    {
        for table in read_tables {
            let last_write: Option<i64> = tx
                .query_row(
                    "SELECT idx FROM _microcluster_table_writes WHERE name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .optional()
                .map_err(io::Error::other)?;
            if let Some(last_write) = last_write.filter(|&idx| idx as u64 > *base) {
                return Ok(CommandResult::Conflict {
                    reason: format!(
                        "table {table:?} was written at index {last_write}, after the transaction's base {base}"
                    ),
                });
            }
        }
    }
    tx.execute_batch("SAVEPOINT entry")
        .map_err(io::Error::other)?;
    let outcome = match command {
        Command::Sql { sql } => {
            let before = tx.total_changes();
            tx.execute_batch(sql)
                .map(|()| CommandResult::Applied {
                    rows_affected: tx.total_changes() - before,
                })
                .unwrap_or_else(|err| CommandResult::Failed {
                    message: err.to_string(),
                })
        }
        Command::Changeset { changeset, .. } => {
            let conflict = Arc::new(Mutex::new(None::<String>));
            let seen = conflict.clone();
            let mut input: &[u8] = changeset;
            let applied =
                tx.apply_strm(&mut input, None::<fn(&str) -> bool>, move |kind, _item| {
                    *seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Some(conflict_name(kind));
                    ConflictAction::SQLITE_CHANGESET_ABORT
                });
            let kind = conflict
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            match (applied, kind) {
                (Ok(()), None) => CommandResult::Applied { rows_affected: 0 },
                (_, Some(kind)) => CommandResult::Conflict {
                    reason: format!("changeset conflict ({kind}) at index {index}"),
                },
                (Err(err), None) => CommandResult::Conflict {
                    reason: format!("changeset could not be applied at index {index}: {err}"),
                },
            }
        }
    };
    let finish = match outcome {
        CommandResult::Applied { .. } => "RELEASE entry",
        _ => "ROLLBACK TO entry; RELEASE entry",
    };
    tx.execute_batch(finish).map_err(io::Error::other)?;
    Ok(outcome)
}

fn conflict_name(kind: ConflictType) -> String {
    match kind {
        ConflictType::SQLITE_CHANGESET_DATA => "row changed".into(),
        ConflictType::SQLITE_CHANGESET_NOTFOUND => "row not found".into(),
        ConflictType::SQLITE_CHANGESET_CONFLICT => "row exists".into(),
        ConflictType::SQLITE_CHANGESET_CONSTRAINT => "constraint".into(),
        ConflictType::SQLITE_CHANGESET_FOREIGN_KEY => "foreign key".into(),
        other => format!("{other:?}"),
    }
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The state machine handed to openraft. Cloning shares the writer thread.
#[derive(Clone)]
pub struct StateMachine {
    jobs: mpsc::Sender<Job>,
    dir: PathBuf,
}

impl StateMachine {
    /// Opens (or creates) the state machine database in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> crate::Result<StateMachine> {
        let mut db = Db::open(dir).map_err(|err| {
            crate::Error::internal(format!("Failed to open the database in {dir:?}: {err}"))
        })?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("microcluster-db".into())
            .spawn(move || {
                for job in queue {
                    job(&mut db);
                }
            })
            .map_err(|err| {
                crate::Error::internal(format!("Failed to start the database thread: {err}"))
            })?;
        Ok(StateMachine {
            jobs,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `work` on the writer thread and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Db) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |db| {
                let _ = reply.send(work(db));
            }))
            .map_err(|_| io::Error::other("the database thread has stopped"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the database thread has stopped"))?
    }
}

fn sm_read_error(err: io::Error) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&err)).into()
}

fn sm_write_error(err: io::Error) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&err)).into()
}

fn snapshot_error(err: io::Error) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&err)).into()
}

async fn open_snapshot(
    meta: SnapshotMeta<NodeId, MemberNode>,
    path: PathBuf,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let file = tokio::fs::File::open(&path).await.map_err(|err| {
        StorageError::from(StorageIOError::read_snapshot(
            Some(meta.signature()),
            AnyError::new(&err),
        ))
    })?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, path) = self
            .call(|db| db.build_snapshot())
            .await
            .map_err(snapshot_error)?;
        open_snapshot(meta, path).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError> {
        self.call(|db| db.applied_state())
            .await
            .map_err(sm_read_error)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.call(move |db| db.apply(entries))
            .await
            .map_err(sm_write_error)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // Readable too: install_snapshot reads the received data back from this handle.
        let path = self.dir.join("snapshots").join("incoming.db");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snapshot_error)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // The data may come in any file handle (openraft's own tests hand over another
        // member's snapshot file): copy it from its start into a file of our own.
        let mut source = *snapshot;
        let received = self.dir.join("snapshots").join("installing.db");
        let copied = async {
            let step = |what: &'static str| {
                move |err: io::Error| io::Error::new(err.kind(), format!("{what}: {err}"))
            };
            tokio::io::AsyncWriteExt::flush(&mut source)
                .await
                .map_err(step("flush the received snapshot"))?;
            tokio::io::AsyncSeekExt::seek(&mut source, std::io::SeekFrom::Start(0))
                .await
                .map_err(step("rewind the received snapshot"))?;
            let mut target = tokio::fs::File::create(&received)
                .await
                .map_err(step("create the snapshot copy"))?;
            tokio::io::copy(&mut source, &mut target)
                .await
                .map_err(step("copy the received snapshot"))?;
            tokio::io::AsyncWriteExt::flush(&mut target)
                .await
                .map_err(step("flush the snapshot copy"))?;
            target
                .sync_all()
                .await
                .map_err(step("sync the snapshot copy"))
        };
        copied.await.map_err(snapshot_error)?;
        let incoming = self.dir.join("snapshots").join("incoming.db");
        if let Err(err) = tokio::fs::remove_file(&incoming).await
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("Failed to remove {incoming:?}: {err}");
        }
        let meta = meta.clone();
        self.call(move |db| db.install_snapshot(&meta, &received))
            .await
            .map_err(snapshot_error)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match self
            .call(|db| db.current_snapshot())
            .await
            .map_err(snapshot_error)?
        {
            Some((meta, path)) => Ok(Some(open_snapshot(meta, path).await?)),
            None => Ok(None),
        }
    }
}
