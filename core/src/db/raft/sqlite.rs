//! SQLite plumbing shared by the log store and the state machine: the thread that owns a
//! connection (SQLite never runs on the async executor), key-value metadata encoded with
//! `postcard`, and the mapping of failures to openraft's storage errors.

use std::sync::mpsc;

use openraft::{AnyError, StorageIOError};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::{NodeId, StorageError};

/// The constructor of the storage error of one subject, such as `StorageIOError::read_logs`.
pub(super) type Kind = fn(AnyError) -> StorageIOError<NodeId>;

/// The result of a storage operation.
pub(super) type Res<T> = Result<T, StorageError>;

/// Turns the error of a result into a storage error of the subject `kind`.
pub(super) trait OrFail<T> {
    /// Maps the error with `kind`.
    fn or_fail(self, kind: Kind) -> Res<T>;
}

impl<T, E: std::error::Error + 'static> OrFail<T> for Result<T, E> {
    fn or_fail(self, kind: Kind) -> Res<T> {
        self.map_err(|e| kind(AnyError::new(&e)).into())
    }
}

/// Encodes a value stored by the library (entries, metadata).
pub(super) fn encode<T: Serialize>(value: &T, kind: Kind) -> Res<Vec<u8>> {
    postcard::to_allocvec(value).or_fail(kind)
}

/// Decodes a value stored by [`encode`].
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], kind: Kind) -> Res<T> {
    postcard::from_bytes(bytes).or_fail(kind)
}

/// Reads `key` of the key-value table `table` (a constant of ours, never user input).
pub(super) fn read_meta<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    key: &str,
    kind: Kind,
) -> Res<Option<T>> {
    let sql = format!("SELECT value FROM {table} WHERE key = ?1");
    let value: Option<Vec<u8>> = conn
        .prepare_cached(&sql)
        .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
        .or_fail(kind)?;
    value.map(|value| decode(&value, kind)).transpose()
}

/// Writes `key` of the key-value table `table` (a constant of ours, never user input).
pub(super) fn write_meta<T: Serialize>(
    conn: &Connection,
    table: &str,
    key: &str,
    value: &T,
    kind: Kind,
) -> Res<()> {
    let sql = format!("INSERT OR REPLACE INTO {table} (key, value) VALUES (?1, ?2)");
    let value = encode(value, kind)?;
    conn.prepare_cached(&sql)
        .and_then(|mut stmt| stmt.execute(params![key, value]))
        .or_fail(kind)?;
    Ok(())
}

/// Runs one of the library's own statements (transaction control) from the connection's
/// statement cache: `execute_batch` would compile it at every use.
pub(crate) fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(drop)
}

/// A write transaction whose `BEGIN` and `COMMIT` come from the statement cache. rusqlite's
/// `Transaction` compiles both at every use: about 7 % of the state machine thread's time with
/// one writer. Rolled back if dropped before [`WriteTx::commit`].
pub(super) struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    /// Begins with `BEGIN IMMEDIATE`: the write lock is taken before the first read, so a
    /// write cannot fail later because another connection wrote in between.
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<WriteTx<'c>> {
        run_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(WriteTx { conn })
    }

    /// Commits.
    pub(super) fn commit(self) -> rusqlite::Result<()> {
        run_cached(self.conn, "COMMIT")
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            // A failure leaves the transaction open; the next BEGIN then reports it.
            let _ = run_cached(self.conn, "ROLLBACK");
        }
    }
}

/// The error of a call to a thread that has stopped.
fn stopped(kind: Kind) -> StorageError {
    StorageError::from(kind(AnyError::error("the database thread stopped")))
}

/// A job for the thread that owns `S`.
type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A handle to a thread that owns `S` (a connection, or a database around one) and runs jobs
/// on it in order. The thread ends when every handle is dropped.
pub(super) struct Worker<S> {
    jobs: mpsc::Sender<Job<S>>,
}

impl<S> Clone for Worker<S> {
    fn clone(&self) -> Self {
        Worker {
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: Send + 'static> Worker<S> {
    /// Starts the thread named `name`, owning `state`.
    pub fn spawn(name: &str, mut state: S) -> std::io::Result<Worker<S>> {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in queue {
                    job(&mut state);
                }
            })?;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the thread and awaits its result without blocking the executor; a stopped
    /// thread is a storage error of the subject `kind`.
    pub async fn call<T, F>(&self, kind: Kind, f: F) -> Res<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Res<T> + Send + 'static,
    {
        self.queue(kind, f)?.await
    }

    /// Queues `f` on the thread now and returns the future of its result, so the caller can
    /// queue it while holding a lock and await it after.
    pub fn queue<T, F>(
        &self,
        kind: Kind,
        f: F,
    ) -> Res<impl std::future::Future<Output = Res<T>> + use<T, F, S>>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Res<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job<S> = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.jobs.send(job).map_err(|_| stopped(kind))?;
        Ok(async move { answer.await.map_err(|_| stopped(kind))? })
    }

    /// Queues `f` on the thread without waiting for it: jobs run in order, so whatever is
    /// called afterwards runs after `f`. A failure of `f` is logged.
    pub fn submit<F>(&self, kind: Kind, f: F) -> Res<()>
    where
        F: FnOnce(&mut S) -> Res<()> + Send + 'static,
    {
        let job: Job<S> = Box::new(move |state| {
            if let Err(err) = f(state) {
                tracing::error!("A queued storage job failed: {err}");
            }
        });
        self.jobs.send(job).map_err(|_| stopped(kind))
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_write_transaction_commits_or_rolls_back_when_dropped() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .unwrap();
        let tx = WriteTx::begin(&conn).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        drop(tx);
        assert!(conn.is_autocommit());
        assert_eq!(rows(&conn), 0);

        for k in [2, 3] {
            let tx = WriteTx::begin(&conn).unwrap();
            tx.execute("INSERT INTO t VALUES (?1)", [k]).unwrap();
            tx.commit().unwrap();
        }
        assert!(conn.is_autocommit());
        assert_eq!(rows(&conn), 2);
        // Both ends come from the statement cache, compiled once.
        for sql in ["BEGIN IMMEDIATE", "COMMIT"] {
            let statement = conn.prepare_cached(sql).unwrap();
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
            assert_eq!(
                statement.get_status(StatementStatus::Run),
                3 - i32::from(sql == "COMMIT")
            );
        }
    }
}
