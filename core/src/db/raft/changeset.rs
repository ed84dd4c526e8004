//! Applies a transaction's changeset to the state machine database.
//!
//! The outcome is always the one `sqlite3changeset_apply` gives with a conflict handler that
//! aborts at the first conflict (with triggers and foreign key actions off, see below), but
//! most changesets take a faster road.
//! `sqlite3changeset_apply` reads the table's columns and prepares its statements again at
//! every call, and the `PRAGMA defer_foreign_keys` it runs expires every statement prepared on
//! the connection: every changeset cost about eight statement compilations.
//!
//! The fast road makes the changes one by one with statements prepared once per connection.
//! It defers foreign keys once per transaction, and only when a change touches a table that
//! takes part in a foreign key: the pragma expires every prepared statement, so deferring
//! them for every transaction compiled the apply's statements again each time (about a fifth
//! of the state machine thread's time with one writer). A change to any other table cannot
//! leave a foreign key dangling, deferred or not. It decides the outcomes that are simple:
//! - a deleted or updated row that is missing, or no longer holds the values the transaction
//!   saw, is a conflict, and so is an inserted row whose primary key exists;
//! - a foreign key left dangling once all the changes are made is a conflict.
//!
//! When a change breaks a constraint (`NOT NULL`, `CHECK`, `UNIQUE`, a trigger's `RAISE`),
//! `sqlite3changeset_apply` retries it after the table's other changes, and even tries
//! reordering updates. When a table is missing or its columns differ from the changeset's, it
//! skips that table's changes. The fast road does not reproduce these rules. In these cases
//! it undoes what it did and hands the changeset to `sqlite3changeset_apply` itself.
//! `tests` checks the outcomes of both roads against `sqlite3changeset_apply`.
//!
//! A changeset is replayed as it is: triggers and foreign key actions (`ON DELETE CASCADE`
//! and the like) already ran where the transaction ran, and the session extension recorded
//! what they did along with the rest. Running them again would make their changes twice (and
//! conflict with the recorded ones every time). So while changesets apply, the connection's
//! triggers are off, and foreign key actions act as `NO ACTION`: a deleted or updated parent
//! row that still has children leaves them dangling, which is a conflict unless the changeset
//! also changes them. The fast road hands deletes and updates of a table that foreign key
//! actions refer to over to `sqlite3changeset_apply_v2`, whose `FKNOACTION` flag does this.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, c_int, c_void};
use std::io::Read;

use rusqlite::config::DbConfig;
use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::hooks::Action;
use rusqlite::session::{ChangesetItem, ChangesetIter, ConflictType};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, ffi};

use crate::db::sql_text::quoted;

/// What became of a changeset. Nothing of it was written unless it was applied.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// Every change was made.
    Applied,
    /// A change conflicted, of this kind.
    Conflict(ConflictType),
    /// `sqlite3changeset_apply` refused the changeset (for example, it is malformed); why.
    Unusable(String),
}

/// Where the fast road got to with a change, or with a whole changeset.
#[derive(Debug, PartialEq)]
enum Step {
    /// Made.
    Done,
    /// A conflict of this kind.
    Conflict(ConflictType),
    /// Only `sqlite3changeset_apply` knows the outcome.
    Exact,
}

/// Applies changesets on one connection, with statements prepared once.
#[derive(Default)]
pub(super) struct ChangesetApplier {
    /// The tables changesets touched, as the schema of version `schema_version` has them.
    tables: HashMap<String, Table>,
    schema_version: i64,
    /// Whether foreign keys are deferred in the current transaction.
    deferred: bool,
    /// Whether the connection's triggers are off (they stay off from one transaction to the
    /// next, until SQL text runs).
    triggers_off: bool,
}

impl ChangesetApplier {
    /// Prepares for a new transaction on `conn`: foreign keys are immediate, as each `COMMIT`
    /// leaves them, and the tables are read again if the schema changed.
    pub(super) fn begin(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.deferred = false;
        let version = conn
            .prepare_cached("PRAGMA main.schema_version")?
            .query_row([], |row| row.get(0))?;
        if version != self.schema_version {
            self.tables.clear();
            self.schema_version = version;
        }
        Ok(())
    }

    /// Prepares for SQL text in the current transaction: it runs with triggers and immediate
    /// foreign keys as it would anywhere else, and it may change the schema.
    pub(super) fn before_sql(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.tables.clear();
        if self.deferred {
            conn.execute_batch("PRAGMA defer_foreign_keys = OFF")?;
            self.deferred = false;
        }
        if self.triggers_off {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
            self.triggers_off = false;
        }
        Ok(())
    }

    /// Sets the connection up to replay changesets: triggers off. The setting expires the
    /// connection's prepared statements, so it is changed only when needed.
    fn replaying(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.triggers_off {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
            self.triggers_off = true;
        }
        Ok(())
    }

    /// Applies `changeset` inside the current transaction. An error is returned only when the
    /// database itself failed (I/O, memory): that outcome could differ between members.
    pub(super) fn apply(
        &mut self,
        conn: &Connection,
        changeset: &[u8],
    ) -> rusqlite::Result<Outcome> {
        self.replaying(conn)?;
        conn.prepare_cached("SAVEPOINT changeset")?.execute([])?;
        let step = match self.apply_changes(conn, changeset) {
            Ok(Step::Done) if foreign_keys_dangling(conn) => {
                Step::Conflict(ConflictType::SQLITE_CHANGESET_FOREIGN_KEY)
            }
            Ok(step) => step,
            Err(err) if depends_on_machine(&err) => {
                conn.execute_batch("ROLLBACK TO changeset; RELEASE changeset")?;
                return Err(err);
            }
            // A value the changeset holds could not be read or bound: let SQLite judge it.
            Err(_) => Step::Exact,
        };
        if step != Step::Done {
            conn.prepare_cached("ROLLBACK TO changeset")?.execute([])?;
        }
        conn.prepare_cached("RELEASE changeset")?.execute([])?;
        match step {
            Step::Done => Ok(Outcome::Applied),
            Step::Conflict(kind) => Ok(Outcome::Conflict(kind)),
            Step::Exact => {
                // It turns foreign keys back to immediate when it is done.
                self.deferred = false;
                apply_exactly(conn, changeset)
            }
        }
    }

    /// Makes the changes of `changeset` in order, stopping at the first conflict or at the
    /// first change only `sqlite3changeset_apply` can judge.
    fn apply_changes(&mut self, conn: &Connection, changeset: &[u8]) -> rusqlite::Result<Step> {
        let mut input = changeset;
        let reader: &mut dyn Read = &mut input;
        let mut changes = ChangesetIter::start_strm(&reader)?;
        while let Some(change) = changes.next()? {
            let op = change.op()?;
            let table = match self.tables.entry(op.table_name().to_string()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(unknown) => match Table::read(conn, op.table_name())? {
                    Some(table) => unknown.insert(table),
                    None => return Ok(Step::Exact),
                },
            };
            let action = op.code();
            if !table.matches(change.pk()?)
                || (table.has_actions && action != Action::SQLITE_INSERT)
            {
                return Ok(Step::Exact);
            }
            if table.in_foreign_key && !self.deferred {
                // For the rest of the transaction: its `COMMIT` resets the setting.
                conn.execute_batch("PRAGMA defer_foreign_keys = ON")?;
                self.deferred = true;
            }
            let step = table.apply(conn, change, action)?;
            if step != Step::Done {
                return Ok(step);
            }
        }
        Ok(Step::Done)
    }
}

/// The tables `changeset` changes.
pub(super) fn tables(changeset: &[u8]) -> rusqlite::Result<BTreeSet<String>> {
    let mut input = changeset;
    let reader: &mut dyn Read = &mut input;
    let mut changes = ChangesetIter::start_strm(&reader)?;
    let mut tables = BTreeSet::new();
    while let Some(change) = changes.next()? {
        let op = change.op()?;
        if !tables.contains(op.table_name()) {
            tables.insert(op.table_name().to_string());
        }
    }
    Ok(tables)
}

/// Applies `changeset` with `sqlite3changeset_apply_v2`, aborting at the first conflict, with
/// foreign key actions acting as `NO ACTION` (the connection's triggers must be off).
fn apply_exactly(conn: &Connection, changeset: &[u8]) -> rusqlite::Result<Outcome> {
    /// Records the kind of the conflict in the `Option<c_int>` `context` points to, and
    /// aborts.
    unsafe extern "C" fn abort_on_conflict(
        context: *mut c_void,
        kind: c_int,
        _: *mut ffi::sqlite3_changeset_iter,
    ) -> c_int {
        // SAFETY: `context` is the `seen` of the call below, which outlives it.
        unsafe { *context.cast::<Option<c_int>>() = Some(kind) };
        ffi::SQLITE_CHANGESET_ABORT
    }
    let Ok(size) = c_int::try_from(changeset.len()) else {
        return Ok(Outcome::Unusable("the changeset is too large".to_string()));
    };
    let mut seen: Option<c_int> = None;
    // SAFETY: the handle is the live connection `conn` borrows, used on this thread only.
    // SQLite only reads the changeset (the pointer is not const in its signature), and the
    // handler writes only to `seen`, which outlives the call. No rebase buffer is asked for.
    let rc = unsafe {
        ffi::sqlite3changeset_apply_v2(
            conn.handle(),
            size,
            changeset.as_ptr().cast_mut().cast(),
            None,
            Some(abort_on_conflict),
            (&raw mut seen).cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            ffi::SQLITE_CHANGESETAPPLY_FKNOACTION,
        )
    };
    if let Some(kind) = seen {
        return Ok(Outcome::Conflict(ConflictType::from(kind)));
    }
    if rc == ffi::SQLITE_OK {
        return Ok(Outcome::Applied);
    }
    // SAFETY: as above; the message is copied before the connection is used again.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(conn.handle())) }
        .to_string_lossy()
        .into_owned();
    let err = rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(message));
    if depends_on_machine(&err) {
        Err(err)
    } else {
        Ok(Outcome::Unusable(err.to_string()))
    }
}

/// A table as the changes address it: `?N` stands for the value of column N-1.
struct Table {
    /// Whether each column is part of the primary key.
    primary_key: Vec<bool>,
    /// Whether foreign key actions (`ON DELETE CASCADE` …) of some table refer to this one.
    has_actions: bool,
    /// Whether a foreign key refers to this table or from it: only then can a change to it
    /// leave one dangling.
    in_foreign_key: bool,
    insert: String,
    delete: String,
    /// Selects the row with the primary key.
    find: String,
    /// The table's quoted name and columns, to build the update of a set of columns.
    name: String,
    columns: Vec<String>,
    /// The update statement of each set of updated columns met so far.
    updates: HashMap<Vec<bool>, String>,
}

impl Table {
    /// The table `name` of the main database, if it exists.
    fn read(conn: &Connection, name: &str) -> rusqlite::Result<Option<Table>> {
        let mut statement =
            conn.prepare_cached("SELECT name, pk FROM pragma_table_info(?1, 'main')")?;
        let described = statement
            .query_map([name], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? > 0))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if described.is_empty() {
            return Ok(None);
        }
        let has_actions = conn
            .prepare_cached(
                "SELECT 1 FROM sqlite_schema AS s, pragma_foreign_key_list(s.name) AS f
                 WHERE s.type = 'table' AND f.\"table\" = ?1 COLLATE NOCASE
                   AND (f.on_delete NOT IN ('NO ACTION', 'RESTRICT')
                        OR f.on_update NOT IN ('NO ACTION', 'RESTRICT'))
                 LIMIT 1",
            )?
            .exists([name])?;
        let in_foreign_key = conn
            .prepare_cached(
                "SELECT 1 FROM sqlite_schema AS s, pragma_foreign_key_list(s.name) AS f
                 WHERE s.type = 'table'
                   AND (s.name = ?1 COLLATE NOCASE OR f.\"table\" = ?1 COLLATE NOCASE)
                 LIMIT 1",
            )?
            .exists([name])?;
        let name = quoted(name);
        let columns: Vec<String> = described.iter().map(|(column, _)| quoted(column)).collect();
        let primary_key: Vec<bool> = described.iter().map(|(_, key)| *key).collect();
        let placeholders = (1..=columns.len())
            .map(|n| format!("?{n}"))
            .collect::<Vec<_>>();
        let key_condition = condition(&columns, |i| primary_key[i], "=");
        let insert = format!(
            "INSERT INTO main.{name} ({}) VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        );
        let delete = format!(
            "DELETE FROM main.{name} WHERE {key_condition} AND {}",
            condition(&columns, |i| !primary_key[i], "IS")
        );
        let find = format!("SELECT 1 FROM main.{name} WHERE {key_condition}");
        Ok(Some(Table {
            primary_key,
            has_actions,
            in_foreign_key,
            insert,
            delete,
            find,
            name,
            columns,
            updates: HashMap::new(),
        }))
    }

    /// Whether a change with primary key flags `primary_key` fits this table.
    fn matches(&self, primary_key: &[u8]) -> bool {
        primary_key.len() == self.primary_key.len()
            && primary_key
                .iter()
                .zip(&self.primary_key)
                .all(|(&flag, &key)| (flag != 0) == key)
    }

    /// Makes one change.
    fn apply(
        &mut self,
        conn: &Connection,
        change: &ChangesetItem,
        action: Action,
    ) -> rusqlite::Result<Step> {
        let count = self.primary_key.len();
        match action {
            Action::SQLITE_INSERT => {
                let mut insert = conn.prepare_cached(&self.insert)?;
                for column in 0..count {
                    insert.raw_bind_parameter(
                        column + 1,
                        ToSqlOutput::Borrowed(change.new_value(column)?),
                    )?;
                }
                match insert.raw_execute() {
                    Ok(_) => Ok(Step::Done),
                    Err(err) if is_constraint(&err) => {
                        if self.exists(conn, |column| change.new_value(column))? {
                            Ok(Step::Conflict(ConflictType::SQLITE_CHANGESET_CONFLICT))
                        } else {
                            Ok(Step::Exact)
                        }
                    }
                    Err(err) => Err(err),
                }
            }
            Action::SQLITE_DELETE => {
                let mut delete = conn.prepare_cached(&self.delete)?;
                for column in 0..count {
                    delete.raw_bind_parameter(
                        column + 1,
                        ToSqlOutput::Borrowed(change.old_value(column)?),
                    )?;
                }
                self.changed_one_row(conn, change, delete.raw_execute())
            }
            Action::SQLITE_UPDATE => {
                // A changeset's update carries the old and new values of the updated columns
                // only (and the old values of the primary key).
                let updated: Vec<bool> = (0..count)
                    .map(|column| change.new_value(column).is_ok())
                    .collect();
                let sql = self.updates.entry(updated.clone()).or_insert_with(|| {
                    update_sql(&self.name, &self.columns, &self.primary_key, &updated)
                });
                let mut update = conn.prepare_cached(sql)?;
                for (column, (&key, &updated)) in self.primary_key.iter().zip(&updated).enumerate()
                {
                    if key || updated {
                        update.raw_bind_parameter(
                            column + 1,
                            ToSqlOutput::Borrowed(change.old_value(column)?),
                        )?;
                    }
                    if updated {
                        update.raw_bind_parameter(
                            count + column + 1,
                            ToSqlOutput::Borrowed(change.new_value(column)?),
                        )?;
                    }
                }
                self.changed_one_row(conn, change, update.raw_execute())
            }
            _ => Ok(Step::Exact),
        }
    }

    /// The outcome of a delete or update of the row the change addresses.
    fn changed_one_row(
        &self,
        conn: &Connection,
        change: &ChangesetItem,
        changed: rusqlite::Result<usize>,
    ) -> rusqlite::Result<Step> {
        match changed {
            Ok(0) => {
                if self.exists(conn, |column| change.old_value(column))? {
                    Ok(Step::Conflict(ConflictType::SQLITE_CHANGESET_DATA))
                } else {
                    Ok(Step::Conflict(ConflictType::SQLITE_CHANGESET_NOTFOUND))
                }
            }
            Ok(_) => Ok(Step::Done),
            Err(err) if is_constraint(&err) => Ok(Step::Exact),
            Err(err) => Err(err),
        }
    }

    /// Whether the row with the primary key `value` gives exists.
    fn exists<'a>(
        &self,
        conn: &Connection,
        value: impl Fn(usize) -> rusqlite::Result<ValueRef<'a>>,
    ) -> rusqlite::Result<bool> {
        let mut find = conn.prepare_cached(&self.find)?;
        for (column, _) in self.primary_key.iter().enumerate().filter(|(_, key)| **key) {
            find.raw_bind_parameter(column + 1, ToSqlOutput::Borrowed(value(column)?))?;
        }
        Ok(find.raw_query().next()?.is_some())
    }
}

/// The update of the columns flagged in `updated`: `?N` is the old value of column N-1 and
/// `?(count+N)` its new value. It changes the row only if it still holds the old values.
fn update_sql(name: &str, columns: &[String], primary_key: &[bool], updated: &[bool]) -> String {
    let count = columns.len();
    let assignments = (0..count)
        .filter(|&column| updated[column])
        .map(|column| format!("{} = ?{}", columns[column], count + column + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let key_condition = condition(columns, |column| primary_key[column], "=");
    let old_values = condition(
        columns,
        |column| !primary_key[column] && updated[column],
        "IS",
    );
    format!("UPDATE main.{name} SET {assignments} WHERE {key_condition} AND {old_values}")
}

/// `column <operator> ?N` for each selected column N-1, joined by `AND` (`1` for none).
fn condition(columns: &[String], selected: impl Fn(usize) -> bool, operator: &str) -> String {
    let terms: Vec<String> = (0..columns.len())
        .filter(|&column| selected(column))
        .map(|column| format!("{} {operator} ?{}", columns[column], column + 1))
        .collect();
    if terms.is_empty() {
        "1".to_string()
    } else {
        terms.join(" AND ")
    }
}

fn is_constraint(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// Whether the current transaction leaves a foreign key dangling (counted while foreign keys
/// are deferred).
pub(super) fn foreign_keys_dangling(conn: &Connection) -> bool {
    let (mut current, mut highwater) = (0, 0);
    // SAFETY: the handle is the live connection `conn` borrows, used on this thread only, and
    // both outputs are valid for writing.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut current,
            &mut highwater,
            0,
        )
    };
    rc == rusqlite::ffi::SQLITE_OK && current != 0
}

/// Whether `err` comes from the machine (I/O, memory, locks, a corrupt file) rather than from
/// the changeset: such an outcome could differ between members, so it must not be recorded as
/// the entry's result. (The statements here are our own, by primary key, so these codes do not
/// come from the changeset's content.)
fn depends_on_machine(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::InternalMalfunction
                | ErrorCode::PermissionDenied
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::OutOfMemory
                | ErrorCode::ReadOnly
                | ErrorCode::OperationInterrupted
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::NoLargeFileSupport
                | ErrorCode::NotADatabase
        )
    )
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;
    use rusqlite::session::Session;
    use rusqlite::types::Value;

    use super::*;

    const SCHEMA: &str = "
        CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                             score REAL CHECK (score >= 0));
        CREATE TABLE child (a TEXT NOT NULL, b INTEGER NOT NULL,
                            parent INTEGER REFERENCES parent(id), data BLOB,
                            PRIMARY KEY (a, b)) WITHOUT ROWID;
        CREATE TABLE guarded (k TEXT PRIMARY KEY, v INTEGER);
        INSERT INTO parent VALUES (1, 'one', 1.5), (2, 'two', 2.0), (3, 'three', NULL);
        INSERT INTO child VALUES ('x', 1, 1, x'00ff'), ('x', 2, 2, NULL), ('y', 1, NULL, x'');
        INSERT INTO guarded VALUES ('g', 1);
    ";

    /// Transactions whose changesets are applied.
    const TRANSACTIONS: &[&str] = &[
        "INSERT INTO parent VALUES (4, 'four', 4.0)",
        "UPDATE parent SET score = 9.5 WHERE id = 1",
        "DELETE FROM parent WHERE id = 3",
        // The child comes before its parent in the changeset: foreign keys must be deferred.
        "INSERT INTO child VALUES ('z', 1, 4, x'01'); INSERT INTO parent VALUES (4, 'four', 0)",
        "UPDATE child SET data = x'ab', parent = 2 WHERE a = 'x' AND b = 1",
        "DELETE FROM child WHERE a = 'y'",
        "UPDATE guarded SET v = -5",
        "UPDATE parent SET name = 'uno' WHERE id = 1; DELETE FROM child WHERE a = 'x' AND b = 2;
         INSERT INTO guarded VALUES ('h', 2)",
        "INSERT OR REPLACE INTO parent VALUES (2, 'deux', 3.0)",
        "UPDATE parent SET id = 10 WHERE id = 3",
        "UPDATE child SET parent = NULL WHERE a = 'x' AND b = 2; DELETE FROM parent WHERE id = 2",
        // Two unique names swapped: each update alone breaks UNIQUE.
        "UPDATE parent SET name = 'tmp' WHERE id = 1; UPDATE parent SET name = 'one' WHERE id = 2;
         UPDATE parent SET name = 'two' WHERE id = 1",
    ];

    /// What happened to the database a changeset is applied to after it was made.
    const DIVERGENCES: &[&str] = &[
        "",
        "DELETE FROM child WHERE parent = 1; DELETE FROM parent WHERE id = 1",
        "UPDATE parent SET score = 7 WHERE id = 1",
        "INSERT INTO parent VALUES (4, 'vier', 1)",
        "UPDATE parent SET name = 'four' WHERE id = 2",
        "DELETE FROM child WHERE a = 'x' AND b = 2; DELETE FROM parent WHERE id = 2",
        "CREATE TRIGGER guard BEFORE UPDATE ON guarded WHEN NEW.v < 0
         BEGIN SELECT RAISE(ABORT, 'negative'); END",
        "UPDATE child SET data = x'cc' WHERE a = 'x' AND b = 1",
        "DELETE FROM child WHERE a = 'y'",
        "INSERT INTO child VALUES ('w', 1, 3, NULL)",
        "UPDATE parent SET score = 2.0 WHERE id = 2",
    ];

    fn database() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    /// The changeset `sql` makes on the seeded database.
    fn changeset(sql: &str) -> Vec<u8> {
        let conn = database();
        let mut session = Session::new(&conn).unwrap();
        session.attach(None::<&str>).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; PRAGMA defer_foreign_keys = ON; {sql}; COMMIT"
        ))
        .unwrap();
        let mut bytes = Vec::new();
        session.changeset_strm(&mut bytes).unwrap();
        bytes
    }

    /// The rows `query` selects.
    fn rows(conn: &Connection, query: &str) -> Vec<Vec<Value>> {
        let mut statement = conn.prepare(query).unwrap();
        let count = statement.column_count();
        statement
            .query_map([], |row| (0..count).map(|i| row.get(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Every row of every table, in key order.
    fn contents(conn: &Connection) -> Vec<Vec<Value>> {
        [
            "SELECT * FROM parent ORDER BY id",
            "SELECT * FROM child ORDER BY a, b",
            "SELECT * FROM guarded ORDER BY k",
        ]
        .into_iter()
        .flat_map(|query| rows(conn, query))
        .collect()
    }

    /// The outcome of `sqlite3changeset_apply`, replaying: triggers off, foreign key actions
    /// as `NO ACTION`.
    fn apply_with_sqlite(conn: &Connection, changeset: &[u8]) -> Outcome {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .unwrap();
        apply_exactly(conn, changeset).unwrap()
    }

    /// Our outcome, in a transaction of its own.
    fn apply_with_applier(
        conn: &mut Connection,
        applier: &mut ChangesetApplier,
        changeset: &[u8],
    ) -> Outcome {
        let tx = conn.transaction().unwrap();
        applier.begin(&tx).unwrap();
        let outcome = applier.apply(&tx, changeset).unwrap();
        tx.commit().unwrap();
        outcome
    }

    /// The road the applier takes with `changeset` on `conn` (made in a transaction that is
    /// then rolled back).
    fn road(conn: &mut Connection, changeset: &[u8]) -> Step {
        let tx = conn.transaction().unwrap();
        let mut applier = ChangesetApplier::default();
        applier.begin(&tx).unwrap();
        applier.replaying(&tx).unwrap();
        match applier.apply_changes(&tx, changeset).unwrap() {
            Step::Done if foreign_keys_dangling(&tx) => {
                Step::Conflict(ConflictType::SQLITE_CHANGESET_FOREIGN_KEY)
            }
            step => step,
        }
    }

    #[test]
    fn every_outcome_is_the_one_sqlite3changeset_apply_gives() {
        let mut conflicts = std::collections::BTreeSet::new();
        let mut roads = std::collections::BTreeSet::new();
        for transaction in TRANSACTIONS {
            let changeset = changeset(transaction);
            for divergence in DIVERGENCES {
                let expected_db = database();
                expected_db.execute_batch(divergence).unwrap();
                let expected = apply_with_sqlite(&expected_db, &changeset);

                let mut db = database();
                db.execute_batch(divergence).unwrap();
                roads.insert(format!("{:?}", road(&mut db, &changeset)));
                let mut applier = ChangesetApplier::default();
                let outcome = apply_with_applier(&mut db, &mut applier, &changeset);

                let case = format!("{transaction:?} after {divergence:?}");
                assert_eq!(outcome, expected, "{case}");
                assert_eq!(contents(&db), contents(&expected_db), "{case}");
                if let Outcome::Conflict(kind) = outcome {
                    conflicts.insert(format!("{kind:?}"));
                }
            }
        }
        // The cases reach every kind of conflict an aborting handler can see...
        assert_eq!(
            conflicts.into_iter().collect::<Vec<_>>(),
            [
                "SQLITE_CHANGESET_CONFLICT",
                "SQLITE_CHANGESET_CONSTRAINT",
                "SQLITE_CHANGESET_DATA",
                "SQLITE_CHANGESET_FOREIGN_KEY",
                "SQLITE_CHANGESET_NOTFOUND",
            ]
        );
        // ... and the fast road decides all but the constraint cases.
        assert_eq!(
            roads.into_iter().collect::<Vec<_>>(),
            [
                "Conflict(SQLITE_CHANGESET_CONFLICT)",
                "Conflict(SQLITE_CHANGESET_DATA)",
                "Conflict(SQLITE_CHANGESET_FOREIGN_KEY)",
                "Conflict(SQLITE_CHANGESET_NOTFOUND)",
                "Done",
                "Exact",
            ]
        );
    }

    #[test]
    fn changesets_in_one_transaction_match_one_call_each() {
        let expected_db = database();
        let mut db = database();
        let mut applier = ChangesetApplier::default();
        let tx = db.transaction().unwrap();
        applier.begin(&tx).unwrap();
        // Each changeset twice: the second time it conflicts, after the first was applied.
        for transaction in TRANSACTIONS.iter().flat_map(|sql| [sql, sql]) {
            let changeset = changeset(transaction);
            let expected = apply_with_sqlite(&expected_db, &changeset);
            assert_eq!(
                applier.apply(&tx, &changeset).unwrap(),
                expected,
                "{transaction:?}"
            );
            assert_eq!(contents(&tx), contents(&expected_db), "{transaction:?}");
        }
        tx.commit().unwrap();
    }

    #[test]
    fn foreign_keys_are_deferred_only_for_tables_that_take_part_in_one() {
        let mut db = database();
        let mut applier = ChangesetApplier::default();
        for sql in [
            "INSERT INTO guarded VALUES ('h', 2)",
            "INSERT INTO guarded VALUES ('i', 3)",
        ] {
            let outcome = apply_with_applier(&mut db, &mut applier, &changeset(sql));
            assert_eq!(outcome, Outcome::Applied, "{sql}");
        }
        // Deferring foreign keys would have expired the insert after the first transaction.
        let insert = db
            .prepare_cached(&applier.tables["guarded"].insert)
            .unwrap();
        assert_eq!(insert.get_status(StatementStatus::RePrepare), 0);
        drop(insert);
        // A child inserted before its parent still takes the fast road: deferred.
        assert_eq!(road(&mut db, &changeset(TRANSACTIONS[3])), Step::Done);
    }

    #[test]
    fn sql_text_after_a_changeset_has_immediate_foreign_keys() {
        let mut db = database();
        let mut applier = ChangesetApplier::default();
        let tx = db.transaction().unwrap();
        applier.begin(&tx).unwrap();
        let changeset = changeset(TRANSACTIONS[0]);
        assert_eq!(applier.apply(&tx, &changeset).unwrap(), Outcome::Applied);
        applier.before_sql(&tx).unwrap();
        let err = tx
            .execute("INSERT INTO child VALUES ('q', 1, 99, NULL)", [])
            .unwrap_err();
        assert!(is_constraint(&err), "{err}");
    }

    #[test]
    fn changes_to_a_table_whose_schema_changed_are_those_of_sqlite3changeset_apply() {
        let stale = changeset(
            "UPDATE parent SET score = 3 WHERE id = 1; INSERT INTO guarded VALUES ('h', 2)",
        );
        for schema_change in [
            "ALTER TABLE guarded ADD COLUMN extra DEFAULT 'new'",
            "DROP TABLE guarded",
            "DROP TABLE guarded; CREATE TABLE guarded (k TEXT, v INTEGER PRIMARY KEY)",
        ] {
            let expected_db = database();
            expected_db.execute_batch(schema_change).unwrap();
            let expected = apply_with_sqlite(&expected_db, &stale);

            let mut db = database();
            let mut applier = ChangesetApplier::default();
            // The applier learns the table before its schema changes.
            let first = changeset("UPDATE guarded SET v = 1");
            assert_eq!(
                apply_with_applier(&mut db, &mut applier, &first),
                Outcome::Applied
            );
            db.execute_batch(schema_change).unwrap();
            let outcome = apply_with_applier(&mut db, &mut applier, &stale);

            assert_eq!(outcome, expected, "{schema_change}");
            for query in [
                "SELECT * FROM parent ORDER BY id",
                "SELECT * FROM sqlite_schema",
            ] {
                assert_eq!(
                    rows(&db, query),
                    rows(&expected_db, query),
                    "{schema_change}"
                );
            }
            if !schema_change.ends_with("guarded") {
                let query = "SELECT * FROM guarded ORDER BY k";
                assert_eq!(
                    rows(&db, query),
                    rows(&expected_db, query),
                    "{schema_change}"
                );
            }
        }
    }
}
