//! Schema updates (SPEC §11.2–11.3): the library's internal updates and the application's
//! external ones, numbered by their position, recorded in `schemas`, and replicated as one
//! SQL-text log entry so every member runs exactly the same DDL.

use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;

use super::node::Database;
use super::raft::{Command, CommandResult};
use super::sql_text;
use crate::{Error, Result};

/// `schemas`, created before any update runs (SPEC §11.2).
const SCHEMAS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schemas (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, version INTEGER NOT NULL,
  type INTEGER NOT NULL, updated_at DATETIME NOT NULL, UNIQUE (version, type));";

/// Internal update 1: the members and token tables (SPEC §11.2, exact).
const INTERNAL_UPDATE_1: &str = "CREATE TABLE core_cluster_members (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, name TEXT NOT NULL,
  address TEXT NOT NULL, certificate TEXT NOT NULL, schema_internal INTEGER NOT NULL,
  schema_external INTEGER NOT NULL, heartbeat DATETIME NOT NULL, role TEXT NOT NULL,
  api_extensions TEXT NOT NULL DEFAULT '[]', UNIQUE(name), UNIQUE(certificate));
CREATE TABLE core_token_records (id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, name TEXT NOT NULL,
  secret TEXT NOT NULL, expiry_date DATETIME, UNIQUE (name), UNIQUE (secret));";

/// The internal updates of this release, in order.
const INTERNAL_UPDATES: &[&str] = &[INTERNAL_UPDATE_1];

/// The internal schema version of this release.
pub const INTERNAL_VERSION: u64 = INTERNAL_UPDATES.len() as u64;

/// The `schemas.type` of internal and external updates.
const INTERNAL_TYPE: i64 = 0;
const EXTERNAL_TYPE: i64 = 1;

/// The schema versions recorded in a database: `(internal, external)`; `(0, 0)` when
/// `schemas` does not exist yet.
pub fn versions(conn: &Connection) -> Result<(u64, u64)> {
    let failed =
        |err: rusqlite::Error| Error::internal(format!("Failed to read the schema version: {err}"));
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'schemas'",
            [],
            |row| row.get(0),
        )
        .map_err(failed)?;
    if !exists {
        return Ok((0, 0));
    }
    let version = |kind: i64| -> Result<u64> {
        conn.query_row(
            "SELECT coalesce(max(version), 0) FROM schemas WHERE type = ?1",
            [kind],
            |row| row.get::<_, i64>(0),
        )
        .map(|v| u64::try_from(v).unwrap_or(0))
        .map_err(failed)
    };
    Ok((version(INTERNAL_TYPE)?, version(EXTERNAL_TYPE)?))
}

/// One update not yet applied.
struct Pending<'a> {
    kind: i64,
    version: u64,
    sql: &'a str,
}

/// The updates missing from a database at `current` versions, internal ones first.
fn pending<'a>(current: (u64, u64), external: &'a [String]) -> Result<Vec<Pending<'a>>> {
    let expected = (INTERNAL_VERSION, external.len() as u64);
    for (have, want) in [(current.0, expected.0), (current.1, expected.1)] {
        if have > want {
            return Err(Error::invalid(format!(
                "Schema version {have} is more recent than expected {want}"
            )));
        }
    }
    let internal = INTERNAL_UPDATES
        .iter()
        .copied()
        .enumerate()
        .skip(current.0 as usize)
        .map(|(i, sql)| Pending {
            kind: INTERNAL_TYPE,
            version: i as u64 + 1,
            sql,
        });
    let external = external
        .iter()
        .enumerate()
        .skip(current.1 as usize)
        .map(|(i, sql)| Pending {
            kind: EXTERNAL_TYPE,
            version: i as u64 + 1,
            sql: sql.as_str(),
        });
    Ok(internal.chain(external).collect())
}

/// The SQL text of the missing updates, each followed by its `schemas` row, with
/// `updated_at` fixed by the proposer so every member writes the same value.
fn script(updates: &[Pending<'_>], now_unix: i64) -> String {
    let mut sql = format!("PRAGMA legacy_alter_table=ON;\n{SCHEMAS_TABLE}\n");
    for update in updates {
        sql.push_str(update.sql);
        sql.push_str(&format!(
            ";\nINSERT INTO schemas (version, type, updated_at) VALUES ({}, {}, {now_unix});\n",
            update.version, update.kind
        ));
    }
    sql.push_str("PRAGMA legacy_alter_table=OFF;\n");
    sql
}

/// Runs the updates one by one on `conn` inside a transaction that is rolled back, to report
/// the first failing one as SPEC §11.3 says, before anything is proposed.
fn dry_run(conn: &Connection, updates: &[Pending<'_>]) -> Result<()> {
    let internal = |err: rusqlite::Error| {
        Error::internal(format!("Failed to check the schema updates: {err}"))
    };
    conn.execute_batch("BEGIN").map_err(internal)?;
    let checked = (|| {
        conn.execute_batch(SCHEMAS_TABLE).map_err(internal)?;
        for update in updates {
            conn.execute_batch(update.sql).map_err(|err| {
                Error::invalid(format!("Failed to apply update {}: {err}", update.version))
            })?;
            if let Some(violation) = sql_text::primary_key_violation(conn).map_err(internal)? {
                return Err(Error::invalid(format!(
                    "Failed to apply update {}: {violation}",
                    update.version
                )));
            }
        }
        Ok(())
    })();
    let rolled_back = conn.execute_batch("ROLLBACK").map_err(internal);
    checked.and(rolled_back)
}

impl Database {
    /// The schema versions of the local state machine.
    pub async fn schema_versions(self: &Arc<Self>, deadline: Instant) -> Result<(u64, u64)> {
        self.on_connection(deadline, |conn, _| versions(conn))
            .await?
    }

    /// Applies the missing internal and external updates in one replicated entry; all or
    /// nothing. Returns the versions now in place.
    pub async fn apply_schema_updates(
        self: &Arc<Self>,
        external: &[String],
        deadline: Instant,
    ) -> Result<(u64, u64)> {
        let read_index = self.read_index(deadline).await?;
        self.wait_applied(read_index, deadline).await?;
        let updates_text = external.to_vec();
        let prepared = self
            .on_connection(deadline, move |conn, gate| -> Result<Option<String>> {
                let _turn = gate.turn();
                let updates = pending(versions(conn)?, &updates_text)?;
                if updates.is_empty() {
                    return Ok(None);
                }
                dry_run(conn, &updates)?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                Ok(Some(script(&updates, now)))
            })
            .await??;
        let expected = (INTERNAL_VERSION, external.len() as u64);
        let Some(sql) = prepared else {
            return Ok(expected);
        };
        let (index, outcome) = self.propose(Command::Sql { sql }, deadline).await?;
        match outcome {
            CommandResult::Applied { .. } => {
                self.wait_applied(index, deadline).await?;
                Ok(expected)
            }
            // Another member applied them first (their entry is before ours in the log, and
            // the `schemas` row of each update is UNIQUE, so ours failed as a whole): nothing
            // left to do if the versions match once this member has applied that entry too.
            CommandResult::Failed { message } => {
                self.wait_applied(index, deadline).await?;
                let now = self.schema_versions(deadline).await?;
                if now == expected {
                    Ok(expected)
                } else {
                    Err(Error::invalid(format!(
                        "Failed to apply schema updates: {message}"
                    )))
                }
            }
            CommandResult::Conflict { reason } => {
                Err(Error::new(crate::ErrorKind::Conflict, reason))
            }
            CommandResult::Batch { .. } => Err(super::tx::unexpected_batch()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_run_in_order_and_record_their_versions() {
        let conn = Connection::open_in_memory().unwrap();
        let external = vec![
            "CREATE TABLE a (id INTEGER PRIMARY KEY)".to_string(),
            "ALTER TABLE a ADD COLUMN b TEXT".to_string(),
        ];
        let updates = pending((0, 0), &external).unwrap();
        dry_run(&conn, &updates).unwrap();
        conn.execute_batch(&script(&updates, 1_700_000_000))
            .unwrap();
        assert_eq!(versions(&conn).unwrap(), (1, 2));
        let rows: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT version, type, updated_at FROM schemas ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, 0, 1_700_000_000),
                (1, 1, 1_700_000_000),
                (2, 1, 1_700_000_000)
            ]
        );
        assert!(pending((1, 2), &external).unwrap().is_empty());
        let newer = pending((1, 3), &external).err().unwrap();
        assert_eq!(
            newer.message(),
            "Schema version 3 is more recent than expected 2"
        );
    }

    #[test]
    fn a_failing_update_is_named_and_nothing_is_applied() {
        let conn = Connection::open_in_memory().unwrap();
        let external = vec![
            "CREATE TABLE a (id INTEGER PRIMARY KEY)".to_string(),
            "CREATE TABLE oops (".to_string(),
        ];
        let err = dry_run(&conn, &pending((0, 0), &external).unwrap()).unwrap_err();
        assert!(
            err.message().starts_with("Failed to apply update 2: "),
            "{err}"
        );
        assert_eq!(versions(&conn).unwrap(), (0, 0));
    }

    /// Two members that both find the same updates missing propose the same script; the log
    /// orders them, the first applies, and the second fails as a whole and changes nothing,
    /// even when the update itself could run twice (`IF NOT EXISTS`): the `schemas` row of
    /// each update is UNIQUE.
    #[tokio::test]
    async fn racing_proposals_of_the_same_updates_apply_once() {
        use crate::db::raft::state_machine::StateMachine;
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let external = vec![
            "CREATE TABLE IF NOT EXISTS a (id INTEGER PRIMARY KEY)".to_string(),
            "CREATE TABLE IF NOT EXISTS b (id INTEGER PRIMARY KEY)".to_string(),
        ];
        let internal = script(&pending((0, 0), &[]).unwrap(), 1_700_000_000);
        let first = script(&pending((1, 0), &external).unwrap(), 1_700_000_000);
        let second = script(&pending((1, 0), &external).unwrap(), 1_700_000_001);
        let entry = |index: u64, sql: String| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Sql { sql }),
        };
        let results = sm
            .apply(vec![entry(1, internal), entry(2, first), entry(3, second)])
            .await
            .unwrap();
        assert!(
            results[..2]
                .iter()
                .all(|r| matches!(r, CommandResult::Applied { .. })),
            "{results:?}"
        );
        match &results[2] {
            CommandResult::Failed { message } => {
                assert!(message.contains("UNIQUE constraint failed"), "{message}")
            }
            other => panic!("the second proposal applied: {other:?}"),
        }
        let conn = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        assert_eq!(versions(&conn).unwrap(), (1, 2));
        let updated: Vec<i64> = conn
            .prepare("SELECT updated_at FROM schemas ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(updated, vec![1_700_000_000; 3]);
    }

    #[test]
    fn a_table_without_primary_key_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        let external = vec!["CREATE TABLE nokey (v TEXT)".to_string()];
        let err = dry_run(&conn, &pending((0, 0), &external).unwrap()).unwrap_err();
        assert_eq!(
            err.message(),
            "Failed to apply update 1: Table \"nokey\" has no PRIMARY KEY"
        );
    }
}
