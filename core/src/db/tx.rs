//! Serializable transactions from any member (DESIGN §4.2).
//!
//! The caller's closure runs against the local state machine database inside `BEGIN …
//! ROLLBACK`, with the SQLite session extension recording its changes and an authorizer
//! recording the tables it reads (and refusing schema changes). A closure that changed
//! nothing is a read: in the default linearizable mode its result stands only if the state it
//! read was at least the leader's read index, else it runs again on fresher state. A closure
//! that changed rows yields a changeset, proposed with its base index and read tables; every
//! member applies it, or turns it into the same no-op if a table it read was written after its
//! base. A conflicted transaction runs again, a bounded number of times.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::session::Session;
use rusqlite::types::Value;
use rusqlite::{Connection, Params};

use super::node::Database;
use super::raft::sqlite::run_cached;
use super::raft::state_machine::{self, INTERNAL_TABLE_PREFIX, Turn, WriteGate};
use super::raft::{Command, CommandResult};
use super::sql_text;
use crate::{Error, ErrorKind, Result, sync};

/// The default time a transaction may take, retries included (SPEC §11.1).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a conflicted transaction runs before `Conflict` is returned.
const MAX_ATTEMPTS: u32 = 20;

/// The error a closure gets for DDL (SPEC §12).
pub const SCHEMA_CHANGE_REFUSED: &str =
    "Schema changes are only allowed through schema updates or the SQL API";

/// Pragmas whose argument names a table or index to describe (the session extension uses
/// them too): allowed in transactions, unlike pragmas that change settings.
const INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// Whether `name` is one of [`INTROSPECTION_PRAGMAS`], in any case.
pub(crate) fn is_introspection_pragma(name: &str) -> bool {
    INTROSPECTION_PRAGMAS
        .iter()
        .any(|pragma| pragma.eq_ignore_ascii_case(name))
}

/// How fresh the reads of a transaction are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Reads see every write acknowledged before the transaction began (read index).
    #[default]
    Linearizable,
    /// Reads see this member's local state, which may lag the leader. Writes are still
    /// serializable.
    Local,
}

/// The rows of a query: column names and values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    /// The column names.
    pub columns: Vec<String>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// The handle a transaction closure works with.
pub struct Tx<'c> {
    conn: &'c Connection,
}

impl Tx<'_> {
    /// Runs a query and returns all its rows.
    pub fn query(&mut self, sql: &str, params: impl Params) -> Result<Rows> {
        let mut stmt = self.conn.prepare(sql).map_err(sql_error)?;
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let width = columns.len();
        let rows = stmt
            .query_map(params, |row| {
                (0..width).map(|i| row.get::<_, Value>(i)).collect()
            })
            .map_err(sql_error)?
            .collect::<rusqlite::Result<Vec<Vec<Value>>>>()
            .map_err(sql_error)?;
        Ok(Rows { columns, rows })
    }

    /// Runs a statement that returns no rows and returns how many rows it changed.
    pub fn execute(&mut self, sql: &str, params: impl Params) -> Result<usize> {
        self.conn.execute(sql, params).map_err(sql_error)
    }

    /// The underlying connection, for the library's own statement runners (SQL API).
    pub(crate) fn connection(&self) -> &Connection {
        self.conn
    }
}

/// A SQLite error met by a statement of the caller: bad input, except lock contention, which
/// is `Unavailable` (and makes the transaction run again holding the write lock from `BEGIN`).
pub(crate) fn sql_error(err: rusqlite::Error) -> Error {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Error::unavailable(format!("Database is busy: {err}"))
        }
        _ => Error::invalid(err.to_string()),
    }
}

/// What one run of the closure produced.
struct Run<T> {
    result: Result<T>,
    base: u64,
    read_tables: Vec<String>,
    changeset: Vec<u8>,
}

/// What the authorizer saw during one run, and the write turn it took.
struct Observed {
    read_tables: Mutex<BTreeSet<String>>,
    refused: Mutex<Option<&'static str>>,
    /// Set once the closure has returned: the session extension's own queries (it reads the
    /// changed rows to build the changeset) are not reads of the transaction.
    closure_done: AtomicBool,
    gate: WriteGate,
    /// The run's write turn, once it has one: taken before its first write, given back after
    /// its `ROLLBACK`.
    turn: Mutex<Option<Turn>>,
}

impl Observed {
    /// What a run sees; with `turn`, it writes from the start.
    fn new(gate: &WriteGate, turn: Option<Turn>) -> Observed {
        Observed {
            read_tables: Mutex::default(),
            refused: Mutex::default(),
            closure_done: AtomicBool::new(false),
            gate: gate.clone(),
            turn: Mutex::new(turn),
        }
    }

    /// Waits for the write turn, unless the run has it already. A statement that writes asks
    /// the authorizer when it is prepared, so before it writes.
    fn take_turn(&self) {
        let mut turn = sync::lock(&self.turn);
        if turn.is_none() {
            *turn = Some(self.gate.turn());
        }
    }

    /// Gives the write turn back, if the run took it.
    fn give_turn_back(&self) {
        drop(sync::lock(&self.turn).take());
    }

    fn refuse(&self, why: &'static str) -> Authorization {
        *sync::lock(&self.refused) = Some(why);
        Authorization::Deny
    }

    /// The authorizer: records table reads, refuses DDL, transaction control, attached
    /// databases, pragma writes and writes to the library's bookkeeping tables.
    fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        let internal = |table: &str| table.starts_with(INTERNAL_TABLE_PREFIX);
        match ctx.action {
            AuthAction::Read { table_name, .. } => {
                if !table_name.starts_with("sqlite_")
                    && !internal(table_name)
                    && !self.closure_done.load(Ordering::SeqCst)
                {
                    sync::lock(&self.read_tables).insert(table_name.to_string());
                }
                Authorization::Allow
            }
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::Update { table_name, .. }
                if internal(table_name) =>
            {
                self.refuse("The library's internal tables cannot be written")
            }
            AuthAction::Insert { .. } | AuthAction::Delete { .. } | AuthAction::Update { .. } => {
                self.take_turn();
                Authorization::Allow
            }
            AuthAction::Select
            | AuthAction::Function { .. }
            | AuthAction::Recursive
            | AuthAction::Savepoint { .. } => Authorization::Allow,
            AuthAction::Pragma {
                pragma_name,
                pragma_value,
            } => {
                if pragma_value.is_none() || is_introspection_pragma(pragma_name) {
                    Authorization::Allow
                } else {
                    self.refuse("Pragmas that change settings are not allowed in a transaction")
                }
            }
            AuthAction::Transaction { .. } => {
                self.refuse("Transaction control statements are not allowed inside a transaction")
            }
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                self.refuse("Attaching databases is not allowed in a transaction")
            }
            _ => self.refuse(SCHEMA_CHANGE_REFUSED),
        }
    }
}

thread_local! {
    /// The run whose statements this thread prepares, if any: the authorizer of every
    /// transaction connection reports to it. SQLite calls the authorizer on the thread that
    /// prepares, and a [`Tx`] cannot leave the thread its closure runs on.
    static OBSERVER: RefCell<Option<Arc<Observed>>> = const { RefCell::new(None) };
}

/// Installs the authorizer of transaction runs on a new transaction connection: it reports
/// to the run on the current thread ([`OBSERVER`]) and allows everything outside runs.
///
/// It is installed once per connection because setting an authorizer expires every statement
/// prepared on the connection: installed for each run, the statements the library caches
/// (`BEGIN`, `ROLLBACK`, the applied index) were compiled again at every run. Measured in
/// isolation, a run of a 1 KiB insert took 25–27 µs of SQLite work that way, 21–22 µs now.
pub(crate) fn install_authorizer(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.authorizer(Some(|ctx: AuthContext<'_>| {
        OBSERVER.with(|observer| match &*observer.borrow() {
            Some(observed) => observed.authorize(ctx),
            None => Authorization::Allow,
        })
    }))
}

/// Makes a run the authorizer's on this thread until dropped; then the one before it (a
/// closure may run a transaction of another database) is again.
struct Observing(Option<Arc<Observed>>);

impl Observing {
    fn start(observed: &Arc<Observed>) -> Observing {
        Observing(OBSERVER.with(|observer| observer.replace(Some(observed.clone()))))
    }
}

impl Drop for Observing {
    fn drop(&mut self) {
        let before = self.0.take();
        OBSERVER.with(|observer| *observer.borrow_mut() = before);
    }
}

/// Runs `f` once on `conn` inside `BEGIN … ROLLBACK` and captures what it did. The run takes
/// its write turn at its first write, or with `immediate` from the start, together with
/// SQLite's write lock (used after an optimistic run lost the race for it).
fn run_once<T, F>(
    conn: &mut Connection,
    gate: &WriteGate,
    f: &mut F,
    immediate: bool,
) -> Result<Run<T>>
where
    F: FnMut(&mut Tx<'_>) -> Result<T>,
{
    let internal = |err: rusqlite::Error| Error::internal(format!("Transaction failed: {err}"));
    let observed = Arc::new(Observed::new(gate, immediate.then(|| gate.turn())));
    let begin = if immediate {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    };
    run_cached(conn, begin).map_err(internal)?;
    let observing = Observing::start(&observed);
    let run = capture(conn, &observed, f);
    drop(observing);
    let rolled_back = run_cached(conn, "ROLLBACK");
    observed.give_turn_back();
    let run = run?;
    rolled_back.map_err(internal)?;
    Ok(run)
}

fn capture<T, F>(conn: &Connection, observed: &Observed, f: &mut F) -> Result<Run<T>>
where
    F: FnMut(&mut Tx<'_>) -> Result<T>,
{
    let internal = |err: rusqlite::Error| Error::internal(format!("Transaction failed: {err}"));
    let mut session = Session::new(conn).map_err(internal)?;
    session.attach::<&str>(None).map_err(internal)?;
    let mut result = f(&mut Tx { conn });
    observed.closure_done.store(true, Ordering::SeqCst);
    // Read after the closure, in the snapshot its first statement began: read before, it would
    // begin the snapshot itself, which a write would then more often find outdated by the time
    // it gets its turn (the apply commits meanwhile).
    let base = state_machine::applied_index(conn)?;
    let mut changeset = Vec::new();
    session.changeset_strm(&mut changeset).map_err(internal)?;
    drop(session);
    if let Some(why) = *sync::lock(&observed.refused) {
        result = Err(Error::invalid(why));
    }
    let read_tables = std::mem::take(&mut *sync::lock(&observed.read_tables));
    Ok(Run {
        result,
        base,
        read_tables: read_tables.into_iter().collect(),
        changeset,
    })
}

/// Whether a run failed on lock contention, typically `SQLITE_BUSY_SNAPSHOT`: the state it
/// started reading from became stale before its first write.
fn lost_write_race<T>(run: &Result<T>) -> bool {
    matches!(run, Err(err) if err.kind() == ErrorKind::Unavailable)
}

impl Database {
    /// Runs `f` as a serializable transaction on the replicated database (SPEC §11.1) and
    /// returns its result once its changes, if any, are committed through the Raft log.
    ///
    /// `f` may run several times (after conflicts); nothing it does is kept unless it returns
    /// `Ok`. Schema changes inside `f` are refused.
    pub async fn transaction<T, F>(
        self: &Arc<Self>,
        mode: ReadMode,
        timeout: Duration,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        let deadline = Instant::now() + timeout;
        let mut f = f;
        let mut conflicts = 0;
        let mut immediate = false;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("Transaction timed out after {timeout:?}"),
                ));
            }
            let (returned_f, run) = self
                .on_connection(deadline, move |conn, gate| {
                    let run = run_once(conn, gate, &mut f, immediate);
                    (f, run)
                })
                .await?;
            f = returned_f;
            let run = run?;
            if lost_write_race(&run.result) && !immediate {
                immediate = true;
                continue;
            }
            match (run.result, run.changeset.is_empty()) {
                (Ok(value), false) => {
                    let command = Command::Changeset {
                        base: run.base,
                        read_tables: run.read_tables,
                        changeset: run.changeset,
                    };
                    let (index, outcome) = self.propose(command, deadline).await?;
                    match outcome {
                        CommandResult::Applied { .. } => {
                            // Read-your-writes on this member.
                            self.wait_applied(index, deadline).await?;
                            return Ok(value);
                        }
                        CommandResult::Conflict { reason } => {
                            conflicts += 1;
                            if conflicts >= MAX_ATTEMPTS {
                                return Err(Error::new(
                                    ErrorKind::Conflict,
                                    format!(
                                        "Transaction conflicted with concurrent writes {conflicts} times; last: {reason}"
                                    ),
                                ));
                            }
                            tracing::debug!("Transaction conflict, running it again: {reason}");
                            // Run again on state that has the writes we lost to: on a follower,
                            // the local database may not have applied them yet, and a rerun on
                            // the same stale state would conflict again, every time.
                            self.wait_applied(index, deadline).await?;
                            tokio::time::sleep(backoff(conflicts)).await;
                        }
                        CommandResult::Failed { message } => return Err(Error::invalid(message)),
                        CommandResult::Batch { .. } => return Err(unexpected_batch()),
                    }
                }
                (result, _) => {
                    if mode == ReadMode::Local {
                        return result;
                    }
                    let read_index = self.read_index(deadline).await?;
                    if run.base >= read_index {
                        return result;
                    }
                    self.wait_applied(read_index, deadline).await?;
                }
            }
        }
    }
}

/// The error for a batch result where one command was proposed (the proposer splits batch
/// results, so this would be a bug).
pub(crate) fn unexpected_batch() -> Error {
    Error::internal("A single proposal got the result of a batch")
}

/// A short random pause before running a conflicted transaction again, growing with the
/// number of conflicts so contending members spread out.
fn backoff(conflicts: u32) -> Duration {
    let cap_micros = 500u64 << conflicts.min(6);
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    Duration::from_micros(u64::from_le_bytes(bytes) % cap_micros)
}

impl Database {
    /// Runs the statements of `query` for the SQL API (SPEC §12), each in its own transaction,
    /// stopping at the first error: DDL is replicated as SQL text, everything else runs as a
    /// transaction (so `random()` or `datetime('now')` are evaluated once, by this member).
    /// Returns `{"Results":[…]}`.
    pub async fn sql(self: &Arc<Self>, query: &str) -> Result<serde_json::Value> {
        let statements = sql_text::split_statements(query);
        if statements.is_empty() {
            return Err(Error::invalid("No query provided"));
        }
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        let mut results = Vec::with_capacity(statements.len());
        for statement in statements {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = if sql_text::is_schema_change(&statement) {
                let (index, outcome) = self
                    .propose(Command::Sql { sql: statement }, deadline)
                    .await?;
                match outcome {
                    CommandResult::Applied { .. } => {
                        self.wait_applied(index, deadline).await?;
                        serde_json::json!({"type": "exec", "columns": [], "rows": [], "rows_affected": 0})
                    }
                    CommandResult::Failed { message }
                    | CommandResult::Conflict { reason: message } => {
                        return Err(Error::invalid(sql_text::error_text(false, &message)));
                    }
                    CommandResult::Batch { .. } => return Err(unexpected_batch()),
                }
            } else {
                self.transaction(ReadMode::Linearizable, remaining, move |tx| {
                    let conn = tx.connection();
                    sql_text::run_query(conn, &statement).map_err(|err| {
                        let returns_rows =
                            sql_text::returns_rows(conn, &statement).unwrap_or(false);
                        match sql_error(err) {
                            busy if busy.kind() == ErrorKind::Unavailable => busy,
                            err => {
                                Error::invalid(sql_text::error_text(returns_rows, &err.message()))
                            }
                        }
                    })
                })
                .await?
            };
            results.push(result);
        }
        Ok(serde_json::json!({ "Results": results }))
    }

    /// The SQL dump of the database (SPEC §12), without the library's bookkeeping tables;
    /// only the schema with `schema_only`.
    pub async fn dump(self: &Arc<Self>, schema_only: bool) -> Result<String> {
        self.transaction(ReadMode::Linearizable, DEFAULT_TIMEOUT, move |tx| {
            sql_text::dump(tx.connection(), schema_only, INTERNAL_TABLE_PREFIX)
                .map_err(|err| Error::internal(format!("Failed to dump the database: {err}")))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Option<Arc<Observed>> {
        OBSERVER.with(|observer| observer.borrow().clone())
    }

    #[test]
    fn the_authorizer_reports_to_the_innermost_run_and_then_to_the_one_before() {
        let gate = WriteGate::default();
        let outer = Arc::new(Observed::new(&gate, None));
        let inner = Arc::new(Observed::new(&gate, None));
        assert!(current().is_none());
        let outer_observing = Observing::start(&outer);
        {
            let _inner_observing = Observing::start(&inner);
            assert!(current().is_some_and(|now| Arc::ptr_eq(&now, &inner)));
        }
        assert!(current().is_some_and(|now| Arc::ptr_eq(&now, &outer)));
        drop(outer_observing);
        assert!(current().is_none());
    }

    #[test]
    fn statements_are_authorized_for_the_run_on_this_thread_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .unwrap();
        install_authorizer(&mut conn).unwrap();
        let gate = WriteGate::default();
        let observed = Arc::new(Observed::new(&gate, None));
        {
            let _observing = Observing::start(&observed);
            conn.prepare("SELECT id FROM t").unwrap();
            let refused = conn.prepare("CREATE TABLE u (id INTEGER PRIMARY KEY)");
            assert!(refused.is_err());
        }
        assert_eq!(
            *sync::lock(&observed.read_tables),
            BTreeSet::from(["t".to_string()])
        );
        assert_eq!(*sync::lock(&observed.refused), Some(SCHEMA_CHANGE_REFUSED));
        // Outside a run, the same connection allows everything and records nothing.
        conn.execute_batch("CREATE TABLE u (id INTEGER PRIMARY KEY); SELECT * FROM u")
            .unwrap();
        assert_eq!(sync::lock(&observed.read_tables).len(), 1);
    }
}
