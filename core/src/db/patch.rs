//! `patch.global.sql` (SPEC §11.6): statements an operator leaves in the state directory, run
//! once when the database opens, before the schema updates, then deleted.
//!
//! "One transaction" here: the whole file is first run on this member's database inside one
//! transaction that is rolled back, so a failing statement anywhere stops everything before
//! anything is replicated. The statements are then replicated in order as DESIGN §4.2 requires:
//! each run of consecutive row statements as one transaction (one changeset, so non-deterministic
//! SQL is evaluated once), each run of consecutive schema changes as one SQL-text entry. Each of
//! these is atomic on every member; the file as a whole is atomic unless a concurrent write by
//! another member makes a later part fail after an earlier one committed. In that case the
//! error is returned and the file is kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;

use super::node::Database;
use super::raft::{Command, CommandResult};
use super::{ReadMode, sql_text, tx};
use crate::{Error, ErrorKind, Result};

/// Statements of the file replicated together.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// Consecutive schema changes, replicated as one SQL-text entry.
    Schema(String),
    /// Consecutive row statements, run as one transaction.
    Rows(Vec<String>),
}

/// Groups `statements` into [`Part`]s, keeping their order.
fn parts(statements: Vec<String>) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    for statement in statements {
        let schema = sql_text::is_schema_change(&statement);
        match (parts.last_mut(), schema) {
            (Some(Part::Schema(sql)), true) => {
                sql.push_str(";\n");
                sql.push_str(&statement);
            }
            (Some(Part::Rows(rows)), false) => rows.push(statement),
            (_, true) => parts.push(Part::Schema(statement)),
            (_, false) => parts.push(Part::Rows(vec![statement])),
        }
    }
    parts
}

/// Runs every statement on `conn` inside one transaction that is rolled back; the first
/// failure is returned as its SQLite message.
fn dry_run(conn: &Connection, statements: &[String]) -> std::result::Result<(), String> {
    conn.execute_batch("BEGIN").map_err(|err| err.to_string())?;
    let checked = (|| {
        for statement in statements {
            sql_text::run_query(conn, statement).map_err(|err| err.to_string())?;
        }
        match sql_text::primary_key_violation(conn).map_err(|err| err.to_string())? {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    })();
    let rolled_back = conn
        .execute_batch("ROLLBACK")
        .map_err(|err| err.to_string());
    checked.and(rolled_back)
}

impl Database {
    /// Runs `path` (`<state>/patch.global.sql`) if it exists and deletes it once its
    /// statements are committed. A failing statement gives `Failed to execute queries from
    /// %s: %s` (final); an unavailable cluster gives its own error and keeps the file for the
    /// next try.
    pub(crate) async fn apply_global_patch(
        self: &Arc<Self>,
        path: &Path,
        deadline: Instant,
    ) -> Result<()> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => {
                return Err(
                    Error::from(err).context(format!("Failed to read {}: ", path.display()))
                );
            }
        };
        let failed = |message: &str| {
            Error::invalid(format!(
                "Failed to execute queries from {}: {message}",
                path.display()
            ))
        };
        let statements = sql_text::split_statements(&text);
        if !statements.is_empty() {
            let read_index = self.read_index(deadline).await?;
            self.wait_applied(read_index, deadline).await?;
            let checked = statements.clone();
            self.on_connection(deadline, move |conn, gate| {
                let _turn = gate.turn();
                dry_run(conn, &checked)
            })
            .await?
            .map_err(|message| failed(&message))?;
            for part in parts(statements) {
                self.apply_patch_part(part, deadline)
                    .await
                    .map_err(|err| match err.kind() {
                        ErrorKind::InvalidArgument => failed(err.message()),
                        _ => err,
                    })?;
            }
        }
        std::fs::remove_file(path).map_err(|err| {
            Error::from(err).context(format!("Failed to delete {}: ", path.display()))
        })?;
        tracing::info!("Applied and deleted {}", path.display());
        Ok(())
    }

    /// Replicates one part of the patch; a failing statement is `InvalidArgument`.
    async fn apply_patch_part(self: &Arc<Self>, part: Part, deadline: Instant) -> Result<()> {
        match part {
            Part::Schema(sql) => {
                let (index, outcome) = self.propose(Command::Sql { sql }, deadline).await?;
                match outcome {
                    CommandResult::Applied { .. } => self.wait_applied(index, deadline).await,
                    CommandResult::Failed { message }
                    | CommandResult::Conflict { reason: message } => Err(Error::invalid(message)),
                    CommandResult::Batch { .. } => Err(tx::unexpected_batch()),
                }
            }
            Part::Rows(statements) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                self.transaction(ReadMode::Linearizable, timeout, move |tx| {
                    for statement in &statements {
                        sql_text::run_query(tx.connection(), statement).map_err(tx::sql_error)?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_statements_of_a_kind_are_grouped_in_order() {
        let statements = sql_text::split_statements(
            "INSERT INTO a VALUES (1); UPDATE a SET v = 2;
             CREATE TABLE b (id INTEGER PRIMARY KEY); DROP TABLE c;
             DELETE FROM a; create index i on b(id)",
        );
        assert_eq!(
            parts(statements),
            vec![
                Part::Rows(vec![
                    "INSERT INTO a VALUES (1)".into(),
                    "UPDATE a SET v = 2".into()
                ]),
                Part::Schema("CREATE TABLE b (id INTEGER PRIMARY KEY);\nDROP TABLE c".into()),
                Part::Rows(vec!["DELETE FROM a".into()]),
                Part::Schema("create index i on b(id)".into()),
            ]
        );
    }

    #[test]
    fn the_dry_run_reports_the_first_failure_and_changes_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        let statements = sql_text::split_statements(
            "INSERT INTO a (v) VALUES ('x'); CREATE TABLE b (id INTEGER PRIMARY KEY);
             INSERT INTO b VALUES (1); INSERT INTO missing VALUES (1)",
        );
        assert_eq!(
            dry_run(&conn, &statements).unwrap_err(),
            "no such table: missing"
        );
        let count: i64 = conn
            .query_row("SELECT count(*) FROM a", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 0);
        let nokey = sql_text::split_statements("CREATE TABLE nokey (v TEXT)");
        assert_eq!(
            dry_run(&conn, &nokey).unwrap_err(),
            "Table \"nokey\" has no PRIMARY KEY"
        );
        assert!(dry_run(&conn, &statements[..3]).is_ok());
    }
}
