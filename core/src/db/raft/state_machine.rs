//! The Raft state machine: a SQLite database (`database/db.sqlite3`, WAL) owned by one writer
//! thread.
//!
//! Every batch of entries is applied in one SQLite transaction together with the applied log
//! id, the membership and the per-table last-write indexes, so a crash can never apply an entry
//! twice. Each entry runs in its own savepoint: an entry that conflicts or fails is rolled back
//! alone and answered as such, identically on every member.
//!
//! The database runs without fsync; a marker file makes that safe against machine crashes (see
//! [`UnsyncedMarker`]): the Raft log and the snapshots are what is fsynced.
//!
//! A snapshot is a `VACUUM INTO` copy of the database (`snapshots/current.db`). It carries its
//! own applied log id and membership, so its metadata is always read from the file itself. A
//! received snapshot becomes the current one and is copied over the database file.
//!
//! A member applies the entries it proposed at once: their proposers wait for the results, and
//! get them from the writer thread as soon as it has committed them (see [`DirectAnswers`]).
//! Entries proposed by other members are applied in the background (see [`StateMachine::apply`]),
//! a few at a time, unless someone on this member waits for them. Whatever this member
//! reads or writes next sees them first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, LogId, StorageIOError, StoredMembership};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::session::ConflictType;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::watch;

use super::changeset::{self, ChangesetApplier, Outcome};
use super::sqlite::{Kind, OrFail, Res, Worker, WriteTx, read_meta, write_meta};
use super::unsynced::{Found, UnsyncedMarker};
use super::{Command, CommandResult, MemberNode, NodeId, TypeConfig};
use crate::db::proposer::DirectAnswers;
use crate::state_dir::sync_dir;
use crate::sync::{self, lock};

/// Prefix of the library's own bookkeeping tables inside the state machine database.
pub const INTERNAL_TABLE_PREFIX: &str = "_microcluster_";

/// The member whose proposals the state machine answers, and how (see [`DirectAnswers`]).
type Answers = (NodeId, Arc<DirectAnswers>);

/// The applied state as Raft sees it.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>);

/// Snapshot metadata of our types.
type Meta = SnapshotMeta<NodeId, MemberNode>;

const READ_SM: Kind = StorageIOError::read_state_machine;
const WRITE_SM: Kind = StorageIOError::write_state_machine;
const READ_SNAPSHOT: Kind = |e| StorageIOError::read_snapshot(None, e);
const WRITE_SNAPSHOT: Kind = |e| StorageIOError::write_snapshot(None, e);

/// The key-value table of the applied log id and the membership.
const META: &str = "_microcluster_raft";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _microcluster_raft (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS _microcluster_table_writes (name TEXT PRIMARY KEY NOT NULL, idx INTEGER NOT NULL);
";

/// The name under which `_microcluster_table_writes` records the index of the last SQL-text
/// entry (DDL): a transaction based before it conflicts, whatever it read. SQLite reserves
/// `sqlite_` names, so no user table can have it.
const SCHEMA_MARKER: &str = "sqlite_schema";

/// The database file inside the database directory.
pub(super) const DB_FILE: &str = "db.sqlite3";

/// The current snapshot, and where a received one is written before it is installed.
pub(super) const SNAPSHOT_FILE: &str = "snapshots/current.db";
const RECEIVING_FILE: &str = "snapshots/incoming.db";
const RECEIVED_FILE: &str = "snapshots/received.db";

/// Waits for a lock held by a transaction's connection, however long: failing an apply would
/// stop the Raft node.
fn wait_for_lock(attempts: i32) -> bool {
    if attempts > 0 && attempts % 10_000 == 0 {
        tracing::warn!(
            "The state machine has waited {} s for a database lock",
            attempts / 1000
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1));
    true
}

/// Opens the state machine's connection; `unsynced` without any fsync (see [`UnsyncedMarker`]),
/// else with every commit fsynced.
fn open_connection(
    path: &Path,
    settings: &Arc<SettingsGuard>,
    unsynced: bool,
) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(wait_for_lock))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = if unsynced { "OFF" } else { "FULL" };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch(SCHEMA)?;
    // The changeset applier keeps about four statements per table it writes.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    let settings = settings.clone();
    conn.authorizer(Some(move |context: AuthContext<'_>| {
        settings.authorize(context)
    }))?;
    Ok(conn)
}

/// How many prepared statements the state machine's connection keeps.
const STATEMENT_CACHE_CAPACITY: usize = 256;

/// How long a transaction's connection waits for the write lock.
const READER_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens a connection to the state machine database in `dir` for transactions and reads.
pub(crate) fn open_reader(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        dir.join(DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The applied index as recorded in the database `conn` reads (0 before the first entry);
/// inside a transaction, the index of exactly the state that transaction sees.
pub(crate) fn applied_index(conn: &Connection) -> crate::Result<u64> {
    let applied: Option<Option<LogId<NodeId>>> = read_meta(conn, META, "applied", READ_SM)
        .map_err(|err| {
            crate::Error::internal(format!("Failed to read the applied index: {err}"))
        })?;
    Ok(applied.flatten().map_or(0, |log_id| log_id.index))
}

/// Reads the applied state stored in a state machine database (live or a snapshot).
fn read_applied_state(conn: &Connection, kind: Kind) -> Res<AppliedState> {
    let applied = read_meta(conn, META, "applied", kind)?.flatten();
    let membership = read_meta(conn, META, "membership", kind)?.unwrap_or_default();
    Ok((applied, membership))
}

/// The metadata of the snapshot file at `path`, read from the file itself.
fn snapshot_meta(path: &Path, kind: Kind) -> Res<Meta> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).or_fail(kind)?;
    let (last_log_id, last_membership) = read_applied_state(&conn, kind)?;
    let snapshot_id = match last_log_id {
        Some(log_id) => format!(
            "{}-{}-{}",
            log_id.leader_id.term, log_id.leader_id.node_id, log_id.index
        ),
        None => "0-0-0".to_string(),
    };
    Ok(Meta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

/// Flushes a file, then the directory holding it, so a rename into it is durable.
fn sync_file_and_dir(path: &Path, kind: Kind) -> Res<()> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .or_fail(kind)?;
    sync_dir(path.parent().unwrap_or(Path::new("."))).or_fail(kind)
}

/// Replaces the database in `dir` (closed) with a copy of `source`, or with nothing (a new
/// database is created at the next open); durably, and with its write-ahead log removed. The
/// marker says so meanwhile, so a crash half-way through rebuilds the database at the next start.
fn replace_database(
    dir: &Path,
    marker: &mut UnsyncedMarker,
    source: Option<&Path>,
    kind: Kind,
) -> Res<()> {
    marker.replacing(kind)?;
    let db_path = dir.join(DB_FILE);
    let temp = db_path.with_extension("sqlite3.tmp");
    if let Some(source) = source {
        std::fs::copy(source, &temp).or_fail(kind)?;
        File::open(&temp)
            .and_then(|file| file.sync_all())
            .or_fail(kind)?;
    }
    for suffix in ["-wal", "-shm"] {
        remove_if_present(&dir.join(format!("{DB_FILE}{suffix}")), kind)?;
    }
    match source {
        Some(_) => std::fs::rename(&temp, &db_path).or_fail(kind)?,
        None => remove_if_present(&db_path, kind)?,
    }
    sync_dir(dir).or_fail(kind)?;
    marker.replaced(kind)
}

/// Removes a file, if there is one.
fn remove_if_present(path: &Path, kind: Kind) -> Res<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err).or_fail(kind),
        _ => Ok(()),
    }
}

/// The open database and where it lives; only the writer thread touches it.
struct Db {
    dir: PathBuf,
    conn: Connection,
    /// Consulted by the connection's authorizer.
    settings: Arc<SettingsGuard>,
    gate: WriteGate,
    applier: ChangesetApplier,
    /// The index of the last entry applied to the database, published after each commit.
    applied: watch::Sender<u64>,
    /// Says when the database file cannot be trusted after a crash.
    marker: UnsyncedMarker,
}

impl Db {
    fn open(dir: &Path, gate: WriteGate) -> Res<Db> {
        std::fs::create_dir_all(dir.join("snapshots")).or_fail(WRITE_SM)?;
        let (mut marker, found) = UnsyncedMarker::open(dir, WRITE_SM)?;
        if found == Found::AnotherBoot {
            Db::rebuild(dir, &mut marker)?;
        }
        marker.set(WRITE_SM)?;
        let settings = Arc::default();
        let conn =
            open_connection(&dir.join(DB_FILE), &settings, marker.unsynced()).or_fail(WRITE_SM)?;
        let (applied, _) = read_applied_state(&conn, READ_SM)?;
        Ok(Db {
            dir: dir.to_path_buf(),
            conn,
            settings,
            gate,
            marker,
            applier: ChangesetApplier::default(),
            applied: watch::Sender::new(applied.map_or(0, |id| id.index)),
        })
    }

    /// Replaces a database that may be torn (it ran unsynced when the machine stopped, or was
    /// being replaced) with the current snapshot, or with a new database when there is none
    /// (the log was then never purged). openraft applies the log after it again at start.
    fn rebuild(dir: &Path, marker: &mut UnsyncedMarker) -> Res<()> {
        let snapshot = dir.join(SNAPSHOT_FILE);
        let snapshot = snapshot.exists().then_some(snapshot);
        tracing::warn!(
            "The database in {dir:?} may be torn (the machine stopped while it ran unsynced, or \
             while it was replaced): rebuilding it from {}, and the Raft log after it",
            match &snapshot {
                Some(snapshot) => format!("the snapshot {snapshot:?}"),
                None => "nothing (there is no snapshot)".to_string(),
            }
        );
        replace_database(dir, marker, snapshot.as_deref(), WRITE_SM)
    }

    /// Writes everything back into the database file, fsynced, and removes the unsynced
    /// marker, so a start after a machine crash keeps the database as it is. A database in
    /// use by a reader stays marked.
    fn close(&mut self) -> Res<()> {
        if !self.marker.unsynced() {
            return Ok(());
        }
        let _turn = self.gate.turn();
        // SQLite fsyncs a checkpoint's writes unless the connection runs with synchronous=OFF.
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .or_fail(WRITE_SM)?;
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            });
        self.conn
            .pragma_update(None, "synchronous", "OFF")
            .or_fail(WRITE_SM)?;
        let (busy, frames, written_back) = checkpoint.or_fail(WRITE_SM)?;
        if busy != 0 || frames != written_back {
            tracing::warn!(
                "The database in {:?} is in use ({written_back} of {frames} log frames written \
                 back): it stays marked unsynced, and is rebuilt if the machine stops first",
                self.dir
            );
            return Ok(());
        }
        sync_file_and_dir(&self.dir.join(DB_FILE), WRITE_SM)?;
        self.marker.clear(WRITE_SM)
    }

    /// Publishes that the database holds the entries up to `index`.
    fn publish_applied(&self, index: u64) {
        self.applied.send_if_modified(|applied| {
            let newer = index > *applied;
            *applied = (*applied).max(index);
            newer
        });
    }

    /// Applies a batch in one transaction; each entry in its own savepoint. With `answers`,
    /// a batch this member proposed that is among the entries is answered as soon as the
    /// transaction is committed.
    fn apply(
        &mut self,
        entries: Vec<openraft::Entry<TypeConfig>>,
        answers: Option<&Answers>,
    ) -> Res<Vec<CommandResult>> {
        let claimed = answers.and_then(|(node, answers)| answers.claim(*node, &entries));
        self.marker.set(WRITE_SM)?;
        let _turn = self.gate.turn();
        // IMMEDIATE: take the write lock before reading, so a transaction's connection that
        // wrote in between can only make us wait, never fail (a deferred transaction would get
        // SQLITE_BUSY_SNAPSHOT, which stops the Raft node).
        let tx = WriteTx::begin(&self.conn).or_fail(WRITE_SM)?;
        self.applier.begin(&tx).or_fail(WRITE_SM)?;
        let mut results = Vec::with_capacity(entries.len());
        let mut last = None;
        let mut last_writes = LastWrites::default();
        for entry in entries {
            let index = entry.log_id.index;
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Applied { rows_affected: 0 },
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership);
                    write_meta(&tx, META, "membership", &stored, WRITE_SM)?;
                    CommandResult::Applied { rows_affected: 0 }
                }
                EntryPayload::Normal(Command::Batch { commands }) => {
                    let mut results = Vec::with_capacity(commands.len());
                    for command in &commands {
                        let result = Db::apply_recorded(
                            &self.settings,
                            &tx,
                            &mut self.applier,
                            &mut last_writes,
                            index,
                            command,
                        )?;
                        results.push(result);
                    }
                    CommandResult::Batch { results }
                }
                EntryPayload::Normal(command) => Db::apply_recorded(
                    &self.settings,
                    &tx,
                    &mut self.applier,
                    &mut last_writes,
                    index,
                    &command,
                )?,
            };
            last = Some(entry.log_id);
            results.push(result);
        }
        last_writes.save(&tx)?;
        if let Some(log_id) = last {
            write_meta(&tx, META, "applied", &Some(log_id), WRITE_SM)?;
        }
        tx.commit().or_fail(WRITE_SM)?;
        if let Some(log_id) = last {
            self.publish_applied(log_id.index);
        }
        if let Some(claimed) = claimed {
            let result = results[claimed.position].clone();
            claimed.answer(result);
        }
        Ok(results)
    }

    /// Applies one command of entry `index` and records the tables it wrote at that index:
    /// those of an applied changeset (triggers and foreign key actions do not run while
    /// changesets apply, so it changes nothing else), and for SQL text the schema marker,
    /// which makes every transaction based before it conflict.
    fn apply_recorded(
        settings: &SettingsGuard,
        tx: &Connection,
        applier: &mut ChangesetApplier,
        last_writes: &mut LastWrites,
        index: u64,
        command: &Command,
    ) -> Res<CommandResult> {
        let result = apply_command(tx, applier, settings, last_writes, index, command)?;
        if matches!(result, CommandResult::Applied { .. }) {
            let written = match command {
                Command::Changeset { changeset, .. } => {
                    changeset::tables(changeset).or_fail(WRITE_SM)?
                }
                _ => BTreeSet::from([SCHEMA_MARKER.to_string()]),
            };
            for table in written {
                last_writes.record(table, index);
            }
        }
        Ok(result)
    }

    /// Installs the snapshot written to [`RECEIVED_FILE`], after checking that it holds the
    /// state `meta` announces: it becomes the current snapshot, and a copy of it the database.
    fn install_snapshot(&mut self, meta: &Meta) -> Res<()> {
        let gate = self.gate.clone();
        let _file = gate.replace_file();
        let _snapshot = gate.snapshot_file();
        let _turn = gate.turn();
        let received = self.dir.join(RECEIVED_FILE);
        let found = snapshot_meta(&received, WRITE_SNAPSHOT)?;
        if found.last_log_id != meta.last_log_id {
            let message = format!(
                "snapshot {} holds applied log id {:?}, not {:?}",
                meta.snapshot_id, found.last_log_id, meta.last_log_id
            );
            return Err(std::io::Error::other(message)).or_fail(WRITE_SNAPSHOT);
        }
        let current = self.dir.join(SNAPSHOT_FILE);
        std::fs::rename(&received, &current).or_fail(WRITE_SNAPSHOT)?;
        sync_file_and_dir(&current, WRITE_SNAPSHOT)?;

        // Close the database, replace it with a copy of the snapshot, and reopen.
        let placeholder = Connection::open_in_memory().or_fail(WRITE_SNAPSHOT)?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        replace_database(&self.dir, &mut self.marker, Some(&current), WRITE_SNAPSHOT)?;
        let db_path = self.dir.join(DB_FILE);
        self.conn = open_connection(&db_path, &self.settings, self.marker.unsynced())
            .or_fail(WRITE_SNAPSHOT)?;
        self.applier = ChangesetApplier::default();
        if let Some(log_id) = meta.last_log_id {
            self.publish_applied(log_id.index);
        }
        Ok(())
    }
}

/// Makes a snapshot of the database in `dir` the current snapshot, on a connection of its
/// own: `VACUUM INTO` reads one consistent state while the writer thread goes on applying.
fn build_snapshot(dir: &Path) -> Res<()> {
    let path = dir.join(SNAPSHOT_FILE);
    let temp = path.with_extension("db.tmp");
    remove_if_present(&temp, WRITE_SNAPSHOT)?;
    open_reader(dir)
        .and_then(|conn| conn.execute("VACUUM main INTO ?1", [temp.to_string_lossy()]))
        .or_fail(WRITE_SNAPSHOT)?;
    File::open(&temp)
        .and_then(|file| file.sync_all())
        .or_fail(WRITE_SNAPSHOT)?;
    std::fs::rename(&temp, &path).or_fail(WRITE_SNAPSHOT)?;
    sync_file_and_dir(&path, WRITE_SNAPSHOT)
}

/// Opens the current snapshot in `dir`: its metadata and a handle on it. The caller holds
/// [`WriteGate::snapshot_file`], so no other snapshot replaces the file in between.
fn open_current_snapshot(dir: &Path) -> Res<Option<Snapshot<TypeConfig>>> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).or_fail(READ_SNAPSHOT),
    };
    let meta = snapshot_meta(&path, READ_SNAPSHOT)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(file)),
    }))
}

/// The index of the last write of each table (`_microcluster_table_writes`) as one batch of
/// entries is applied: read at most once per table, and written once per table at the end of
/// the batch.
#[derive(Default)]
struct LastWrites {
    /// The tables looked up or written so far, and whether each was written.
    known: BTreeMap<String, (Option<u64>, bool)>,
}

impl LastWrites {
    /// The index of the last write of `table`, if any.
    fn get(&mut self, tx: &Connection, table: &str) -> Res<Option<u64>> {
        if let Some((index, _)) = self.known.get(table) {
            return Ok(*index);
        }
        let index: Option<i64> = tx
            .prepare_cached("SELECT idx FROM _microcluster_table_writes WHERE name = ?1")
            .and_then(|mut query| query.query_row([table], |row| row.get(0)).optional())
            .or_fail(WRITE_SM)?;
        let index = index.map(|index| index as u64);
        self.known.insert(table.to_string(), (index, false));
        Ok(index)
    }

    /// Records a write of `table` at `index`.
    fn record(&mut self, table: String, index: u64) {
        self.known.insert(table, (Some(index), true));
    }

    /// Writes the recorded writes into `_microcluster_table_writes`.
    fn save(self, tx: &Connection) -> Res<()> {
        for (table, (index, written)) in self.known {
            if let (Some(index), true) = (index, written) {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO _microcluster_table_writes (name, idx) VALUES (?1, ?2)",
                )
                .and_then(|mut insert| insert.execute(params![table, index as i64]))
                .or_fail(WRITE_SM)?;
            }
        }
        Ok(())
    }
}

/// Applies one command. Conflicts and SQL failures undo what the command did and are answered,
/// not raised: they are deterministic outcomes of the log.
fn apply_command(
    tx: &Connection,
    applier: &mut ChangesetApplier,
    guard: &SettingsGuard,
    last_writes: &mut LastWrites,
    index: u64,
    command: &Command,
) -> Res<CommandResult> {
    if let Command::Changeset {
        base, read_tables, ..
    } = command
    {
        for table in read_tables
            .iter()
            .map(String::as_str)
            .chain([SCHEMA_MARKER])
        {
            if let Some(last_write) = last_writes.get(tx, table)?.filter(|&idx| idx > *base) {
                return Ok(CommandResult::Conflict {
                    reason: format!(
                        "table {table:?} was written at index {last_write}, after the transaction's base {base}"
                    ),
                });
            }
        }
    }
    let outcome = match command {
        // Proposers never nest batches; a nested one is refused the same way everywhere.
        Command::Batch { .. } => CommandResult::Failed {
            message: "nested batches are not supported".to_string(),
        },
        Command::Sql { sql } => apply_sql(tx, applier, guard, sql)?,
        Command::Changeset { changeset, .. } => {
            match applier.apply(tx, changeset).or_fail(WRITE_SM)? {
                Outcome::Applied => CommandResult::Applied { rows_affected: 0 },
                Outcome::Conflict(kind) => CommandResult::Conflict {
                    reason: format!(
                        "changeset conflict ({}) at index {index}",
                        conflict_name(kind)
                    ),
                },
                Outcome::Unusable(why) => CommandResult::Conflict {
                    reason: format!("changeset could not be applied at index {index}: {why}"),
                },
            }
        }
    };
    Ok(outcome)
}

/// Settings that SQL text may set with `PRAGMA`: `foreign_keys` (a no-op inside a
/// transaction, common in migration recipes), `defer_foreign_keys` and `legacy_alter_table`
/// (which end with their entry), and `user_version` and `application_id` (stored in the
/// database file, so replicated like any data).
const SETTABLE_PRAGMAS: &[&str] = &[
    "foreign_keys",
    "defer_foreign_keys",
    "legacy_alter_table",
    "user_version",
    "application_id",
];

/// The state machine connection's authorizer: while SQL text runs, it refuses `PRAGMA`s that
/// set anything but [`SETTABLE_PRAGMAS`] (pragmas that only describe a table or index, with
/// its name as argument, are allowed), and records why.
#[derive(Default)]
struct SettingsGuard {
    active: std::sync::atomic::AtomicBool,
    refused: Mutex<Option<String>>,
}

impl SettingsGuard {
    fn authorize(&self, context: AuthContext<'_>) -> Authorization {
        match context.action {
            AuthAction::Pragma {
                pragma_name,
                pragma_value: Some(_),
            } if self.active.load(Ordering::SeqCst)
                && !crate::db::tx::is_introspection_pragma(pragma_name)
                && !SETTABLE_PRAGMAS
                    .iter()
                    .any(|settable| settable.eq_ignore_ascii_case(pragma_name)) =>
            {
                *lock(&self.refused) = Some(format!(
                    "PRAGMA {pragma_name} cannot be set in replicated SQL: the settings of a database connection are not replicated"
                ));
                Authorization::Deny
            }
            _ => Authorization::Allow,
        }
    }
}

/// Applies an SQL text entry (DDL: schema updates and the SQL API) in a savepoint, so a failing
/// statement undoes the statements before it.
///
/// The database connection's settings are not replicated state: a member that restarts, or
/// that installs a snapshot, opens a new connection with the defaults, and the entries that
/// share one SQLite transaction differ between members. So SQL text may not set them (except
/// [`SETTABLE_PRAGMAS`]), and the ones it may set end with the entry. Foreign keys that the
/// entry leaves dangling fail it, as they would fail a `COMMIT`.
fn apply_sql(
    tx: &Connection,
    applier: &mut ChangesetApplier,
    guard: &SettingsGuard,
    sql: &str,
) -> Res<CommandResult> {
    applier.before_sql(tx).or_fail(WRITE_SM)?;
    tx.execute_batch("SAVEPOINT entry").or_fail(WRITE_SM)?;
    let before = tx.total_changes();
    guard.active.store(true, Ordering::SeqCst);
    let ran = tx.execute_batch(sql);
    guard.active.store(false, Ordering::SeqCst);
    let refused = lock(&guard.refused).take();
    let outcome = match (ran, refused) {
        (_, Some(message)) => CommandResult::Failed { message },
        (Err(err), None) => CommandResult::Failed {
            message: err.to_string(),
        },
        (Ok(()), None) if changeset::foreign_keys_dangling(tx) => CommandResult::Failed {
            message: "FOREIGN KEY constraint failed".to_string(),
        },
        // Changesets address rows by primary key (DESIGN §4.2).
        (Ok(()), None) => match crate::db::sql_text::primary_key_violation(tx).or_fail(WRITE_SM)? {
            Some(message) => CommandResult::Failed { message },
            None => CommandResult::Applied {
                rows_affected: tx.total_changes() - before,
            },
        },
    };
    let finish = match outcome {
        CommandResult::Applied { .. } => "RELEASE entry",
        _ => "ROLLBACK TO entry; RELEASE entry",
    };
    tx.execute_batch(finish).or_fail(WRITE_SM)?;
    tx.execute_batch("PRAGMA defer_foreign_keys = OFF; PRAGMA legacy_alter_table = OFF")
        .or_fail(WRITE_SM)?;
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

/// About the bytes an entry carries.
fn entry_size(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(command) => crate::db::proposer::command_size(command),
        _ => 0,
    }
}

/// Coordinates the users of the state machine database inside this process.
///
/// - Writers take turns ([`WriteGate::turn`]): the apply thread, and transaction closures
///   from their first write on. They wait on each other here rather than polling SQLite's lock
///   with sleeps. Closures that only read never take a turn, so they never hold up the apply
///   (SQLite's WAL lets them read while it commits).
/// - Connections other than the apply thread's share the database file
///   ([`WriteGate::share_file`]): installing a snapshot, which replaces the file, waits until
///   none is in use.
/// - The current snapshot is built, read and replaced by one at a time
///   ([`WriteGate::snapshot_file`]). Whoever needs both takes the database file first.
#[derive(Clone, Default)]
pub struct WriteGate(Arc<Gate>);

#[derive(Default)]
struct Gate {
    /// Whether a writer has the turn.
    taken: Mutex<bool>,
    /// Signalled when the turn is given back.
    given_back: Condvar,
    /// Shared by the connections in use, held alone while a snapshot replaces the file.
    file: RwLock<()>,
    /// Bumped each time the database file is replaced: connections opened before point at
    /// the old file.
    generation: AtomicU64,
    /// Held while the current snapshot is built, read or replaced.
    snapshot: Mutex<()>,
}

/// A writer's turn; it ends when this is dropped.
pub struct Turn(WriteGate);

impl Drop for Turn {
    fn drop(&mut self) {
        let gate = &self.0.0;
        *lock(&gate.taken) = false;
        gate.given_back.notify_one();
    }
}

impl WriteGate {
    /// Waits for the turn to write.
    pub fn turn(&self) -> Turn {
        let gate = &self.0;
        let mut taken = lock(&gate.taken);
        while *taken {
            taken = sync::wait(&gate.given_back, taken);
        }
        *taken = true;
        Turn(self.clone())
    }

    /// Uses the database file alongside other connections until the guard is dropped.
    pub fn share_file(&self) -> RwLockReadGuard<'_, ()> {
        sync::read(&self.0.file)
    }

    /// Waits until no other connection uses the database file, and keeps it so until the
    /// guard is dropped. Connections opened before are outdated from now on, whether the
    /// file is then replaced or not.
    fn replace_file(&self) -> RwLockWriteGuard<'_, ()> {
        let guard = sync::write(&self.0.file);
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        guard
    }

    /// Builds, reads or replaces the current snapshot alone until the guard is dropped.
    pub(super) fn snapshot_file(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.0.snapshot)
    }

    /// The number of times the database file was replaced since it was opened.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::SeqCst)
    }
}

/// How long entries proposed by other members may wait to be applied, for more to join them
/// in one database transaction.
const DEFER_LINGER: Duration = Duration::from_millis(5);

/// The most entries, and about the most bytes of commands, that wait to be applied.
const DEFER_MAX_ENTRIES: usize = 256;
const DEFER_MAX_BYTES: usize = 8 << 20;

/// Entries handed to the state machine and not yet queued to the writer thread.
#[derive(Default)]
struct Deferred {
    /// The entries; a timer queues them [`DEFER_LINGER`] after the first one came.
    entries: Vec<openraft::Entry<TypeConfig>>,
    /// About the bytes they carry.
    bytes: usize,
    /// The highest index someone on this member waits for: entries up to it are not deferred.
    wanted: u64,
    /// The index of the last entry handed to the state machine.
    accepted: u64,
    /// Why a background apply failed: the state machine then fails every call.
    failure: Option<String>,
}

impl Deferred {
    /// Fails with the storage error of the subject `kind` once a background apply failed.
    fn check(&self, kind: Kind) -> Res<()> {
        match &self.failure {
            Some(failure) => Err(kind(openraft::AnyError::error(failure)).into()),
            None => Ok(()),
        }
    }

    /// Takes the entries, to queue them to the writer thread.
    fn take(&mut self) -> Vec<openraft::Entry<TypeConfig>> {
        self.bytes = 0;
        std::mem::take(&mut self.entries)
    }
}

/// The state machine handed to openraft. Cloning shares the writer thread.
#[derive(Clone)]
pub struct StateMachine {
    db: Worker<Db>,
    dir: PathBuf,
    gate: WriteGate,
    /// The member whose proposals are applied at once, and answered directly; `None` applies
    /// every entry at once.
    proposer: Option<Answers>,
    deferred: Arc<Mutex<Deferred>>,
    /// The index of the last entry applied to the database.
    applied: watch::Receiver<u64>,
}

impl StateMachine {
    /// Opens (or creates) the state machine database in `dir` and starts its writer thread.
    /// Every entry is applied before [`RaftStateMachine::apply`] returns.
    pub fn open(dir: &Path) -> crate::Result<StateMachine> {
        let failed = |err: &dyn std::fmt::Display| {
            crate::Error::internal(format!("Failed to open the database in {dir:?}: {err}"))
        };
        let gate = WriteGate::default();
        let db = Db::open(dir, gate.clone()).map_err(|err| failed(&err))?;
        let applied = db.applied.subscribe();
        let db = Worker::spawn("microcluster-db", db).map_err(|err| failed(&err))?;
        Ok(StateMachine {
            db,
            dir: dir.to_path_buf(),
            gate,
            proposer: None,
            deferred: Arc::default(),
            applied,
        })
    }

    /// Applies the entries that member `node` did not propose in the background (see
    /// [`RaftStateMachine::apply`]), and answers those it proposed through `answers`.
    pub(crate) fn proposing_as(
        mut self,
        node: NodeId,
        answers: Arc<DirectAnswers>,
    ) -> StateMachine {
        self.proposer = Some((node, answers));
        self
    }

    /// Applies the entries deferred so far, then writes the database back durably and marks
    /// it closed (see [`UnsyncedMarker`]), for a member that stops. A later write marks it
    /// unsynced again.
    pub async fn close(&self) -> crate::Result<()> {
        self.call(WRITE_SM, Db::close).await.map_err(|err| {
            crate::Error::internal(format!(
                "Failed to close the database in {:?}: {err}",
                self.dir
            ))
        })
    }

    /// The gate users of the database pass (see [`WriteGate`]).
    pub fn write_gate(&self) -> WriteGate {
        self.gate.clone()
    }

    fn deferred(&self) -> std::sync::MutexGuard<'_, Deferred> {
        lock(&self.deferred)
    }

    /// Runs `f` on the writer thread, after the entries deferred so far.
    async fn call<T, F>(&self, kind: Kind, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Res<T> + Send + 'static,
    {
        let answer = {
            let mut deferred = self.deferred();
            deferred.check(kind)?;
            let entries = deferred.take();
            // Queued under the lock, so jobs reach the thread in the order of the log.
            self.db.queue(kind, move |db| {
                if !entries.is_empty() {
                    db.apply(entries, None)?;
                }
                f(db)
            })?
        };
        answer.await
    }

    /// Queues the deferred entries to the writer thread, without waiting for them.
    fn flush(&self) {
        let mut deferred = self.deferred();
        if deferred.entries.is_empty() || deferred.failure.is_some() {
            return;
        }
        let entries = deferred.take();
        let shared = self.deferred.clone();
        let queued = self.db.submit(WRITE_SM, move |db| {
            db.apply(entries, None).map(drop).inspect_err(|err| {
                lock(&shared).failure = Some(format!("applying entries failed: {err}"));
            })
        });
        if let Err(err) = queued {
            deferred.failure = Some(format!("applying entries failed: {err}"));
        }
    }

    /// Adds `entries`, the first of which is `first`, to those deferred: they are queued at
    /// once if someone waits for one of them or if too many wait, else when the timer started
    /// by the first deferred entry fires.
    fn defer(&self, first: u64, entries: Vec<openraft::Entry<TypeConfig>>) -> Res<()> {
        let mut deferred = self.deferred();
        deferred.check(WRITE_SM)?;
        // A timer left from entries that another call queued early may fire sooner: that only
        // queues these early too.
        let timer = deferred.entries.is_empty();
        deferred.bytes += entries.iter().map(entry_size).sum::<usize>();
        deferred.entries.extend(entries);
        let now = deferred.wanted >= first
            || deferred.entries.len() >= DEFER_MAX_ENTRIES
            || deferred.bytes >= DEFER_MAX_BYTES;
        drop(deferred);
        if now {
            self.flush();
        } else if timer {
            let state_machine = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DEFER_LINGER).await;
                state_machine.flush();
            });
        }
        Ok(())
    }

    /// Waits at most `timeout` until this member's database holds entry `index`, applying
    /// what was deferred up to it now; a `Timeout` error if it does not.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> crate::Result<()> {
        let mut applied = self.applied.clone();
        if *applied.borrow() >= index {
            return Ok(());
        }
        {
            let mut deferred = self.deferred();
            deferred.wanted = deferred.wanted.max(index);
        }
        self.flush();
        match tokio::time::timeout(timeout, applied.wait_for(|&at| at >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(crate::Error::new(
                crate::ErrorKind::Timeout,
                format!(
                    "Timed out after {timeout:?} waiting for this member to apply entry {index}"
                ),
            )),
        }
    }

    /// Waits at most `timeout` until this member's database holds every entry handed to the
    /// state machine so far (see [`StateMachine::wait_applied`]).
    pub async fn catch_up(&self, timeout: Duration) -> crate::Result<()> {
        let accepted = self.deferred().accepted;
        self.wait_applied(accepted, timeout).await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Builds a snapshot holding what was handed to the state machine so far (see
    /// [`build_snapshot`]). The copy is made beside the writer thread, which goes on applying:
    /// a build of a large database would otherwise hold up every write on this member.
    async fn build_snapshot(&mut self) -> Res<Snapshot<TypeConfig>> {
        self.call(WRITE_SNAPSHOT, |_| Ok(())).await?;
        let (dir, gate) = (self.dir.clone(), self.gate.clone());
        let built = tokio::task::spawn_blocking(move || {
            let _file = gate.share_file();
            let _snapshot = gate.snapshot_file();
            build_snapshot(&dir)?;
            open_current_snapshot(&dir)
        })
        .await
        .or_fail(WRITE_SNAPSHOT)??;
        built.ok_or_else(|| {
            let missing = std::io::Error::other("the snapshot just built is missing");
            StorageIOError::write_snapshot(None, openraft::AnyError::new(&missing)).into()
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Res<AppliedState> {
        self.call(READ_SM, |db| read_applied_state(&db.conn, READ_SM))
            .await
    }

    async fn apply<I>(&mut self, entries: I) -> Res<Vec<CommandResult>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Vec::new());
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        let proposed_here = |entry: &openraft::Entry<TypeConfig>| {
            self.proposer
                .as_ref()
                .is_none_or(|(node, _)| entry.log_id.leader_id.node_id == *node)
        };
        self.deferred().accepted = last;
        if entries.iter().any(proposed_here) {
            let answers = self.proposer.clone();
            return self
                .call(WRITE_SM, move |db| db.apply(entries, answers.as_ref()))
                .await;
        }
        // Entries another member proposed: their results go nowhere (openraft answers a
        // proposal only on the leader that proposed it), so they can wait for more to be
        // applied with them in one transaction, which spares a commit per entry.
        let count = entries.len();
        self.defer(first, entries)?;
        Ok(vec![CommandResult::Applied { rows_affected: 0 }; count])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Res<Box<tokio::fs::File>> {
        // Readable too: install_snapshot reads the received data back from this handle.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(RECEIVING_FILE))
            .await
            .or_fail(WRITE_SNAPSHOT)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<tokio::fs::File>) -> Res<()> {
        // The data may come in any file handle (openraft's own tests hand over another
        // member's snapshot file): copy it from its start into a file of our own.
        let mut source = *snapshot;
        let received = self.dir.join(RECEIVED_FILE);
        let copied = async {
            tokio::io::AsyncWriteExt::flush(&mut source).await?;
            tokio::io::AsyncSeekExt::seek(&mut source, std::io::SeekFrom::Start(0)).await?;
            let mut target = tokio::fs::File::create(&received).await?;
            tokio::io::copy(&mut source, &mut target).await?;
            tokio::io::AsyncWriteExt::flush(&mut target).await
        };
        copied.await.or_fail(WRITE_SNAPSHOT)?;
        drop(source);
        let receiving = self.dir.join(RECEIVING_FILE);
        if let Err(err) = tokio::fs::remove_file(&receiving).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("Failed to remove {receiving:?}: {err}");
        }
        let meta = meta.clone();
        self.call(WRITE_SNAPSHOT, move |db| db.install_snapshot(&meta))
            .await
    }

    async fn get_current_snapshot(&mut self) -> Res<Option<Snapshot<TypeConfig>>> {
        let (dir, gate) = (self.dir.clone(), self.gate.clone());
        tokio::task::spawn_blocking(move || {
            let _snapshot = gate.snapshot_file();
            open_current_snapshot(&dir)
        })
        .await
        .or_fail(READ_SNAPSHOT)?
    }
}
