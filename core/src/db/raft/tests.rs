//! The state machine on its own (apply, conflicts, determinism, crash safety, snapshots), and
//! openraft's storage conformance suite against our log store and state machine together.

use std::collections::BTreeMap;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use rusqlite::Connection;
use rusqlite::session::Session;
use rusqlite::types::FromSql;

use super::state_machine::StateMachine;
use super::{Command, CommandResult, MemberNode, TypeConfig};
use crate::db::proposer::DirectAnswers;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn sql(text: &str) -> Command {
    Command::Sql { sql: text.into() }
}

const KV: &str = "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL);";

/// The changeset of `statements` run on a scratch database made with `schema`.
fn changeset_on(schema: &str, statements: &str) -> Vec<u8> {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(schema).unwrap();
    let mut session = Session::new(&conn).unwrap();
    session.attach(None::<&str>).unwrap();
    conn.execute_batch(statements).unwrap();
    let mut out = Vec::new();
    session.changeset_strm(&mut out).unwrap();
    out
}

/// Runs `statements` on a scratch database holding `kv` as `rows`, and returns the changeset.
fn changeset(rows: &[(&str, &str)], statements: &str) -> Vec<u8> {
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let inserts: String = rows
        .iter()
        .map(|(k, v)| format!("INSERT INTO kv VALUES ({}, {});", literal(k), literal(v)))
        .collect();
    changeset_on(&format!("{KV}{inserts}"), statements)
}

/// A state machine in a fresh temporary directory.
fn open_state_machine() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachine::open(dir.path()).unwrap();
    (dir, sm)
}

fn is_applied(result: &CommandResult) -> bool {
    matches!(result, CommandResult::Applied { .. })
}

/// The two columns of the rows `query` selects from the state machine database in `dir`.
fn pairs<A: FromSql, B: FromSql>(dir: &std::path::Path, query: &str) -> Vec<(A, B)> {
    let conn = Connection::open(dir.join("db.sqlite3")).unwrap();
    let mut statement = conn.prepare(query).unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn dump(dir: &std::path::Path) -> BTreeMap<String, String> {
    pairs(dir, "SELECT k, v FROM kv").into_iter().collect()
}

#[tokio::test]
async fn changesets_apply_and_conflicts_are_deterministic_no_ops() {
    let (dir, mut sm) = open_state_machine();
    let results = sm
        .apply(vec![
            entry(1, sql(KV)),
            entry(
                2,
                Command::Changeset {
                    base: 1,
                    read_tables: vec![],
                    changeset: changeset(&[], "INSERT INTO kv VALUES ('a', '1')"),
                },
            ),
        ])
        .await
        .unwrap();
    assert!(results.iter().all(is_applied), "{results:?}");

    // A transaction that read kv at base 1 conflicts: kv was written at 2.
    let stale = Command::Changeset {
        base: 1,
        read_tables: vec!["kv".into()],
        changeset: changeset(&[("a", "1")], "UPDATE kv SET v = '2' WHERE k = 'a'"),
    };
    // A blind write whose old row no longer matches conflicts too.
    let blind = Command::Changeset {
        base: 2,
        read_tables: vec![],
        changeset: changeset(&[("a", "0")], "UPDATE kv SET v = '3' WHERE k = 'a'"),
    };
    // A failing SQL statement is answered, not raised, and leaves nothing behind.
    let failing = sql("INSERT INTO kv VALUES ('b', '1'); INSERT INTO kv VALUES ('b', '2');");
    let fresh = Command::Changeset {
        base: 2,
        read_tables: vec!["kv".into()],
        changeset: changeset(&[("a", "1")], "UPDATE kv SET v = '4' WHERE k = 'a'"),
    };
    let results = sm
        .apply(vec![
            entry(3, stale),
            entry(4, blind),
            entry(5, failing),
            entry(6, fresh),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&results[0], CommandResult::Conflict { reason } if reason.contains("\"kv\"")),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], CommandResult::Conflict { reason } if reason.contains("row changed")),
        "{results:?}"
    );
    assert!(
        matches!(&results[2], CommandResult::Failed { message } if message.contains("UNIQUE")),
        "{results:?}"
    );
    assert_eq!(results[3], CommandResult::Applied { rows_affected: 0 });
    assert_eq!(
        dump(dir.path()),
        BTreeMap::from([("a".to_string(), "4".to_string())])
    );

    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(6)));
}

#[tokio::test]
async fn applied_state_survives_reopen_and_snapshots_install_elsewhere() {
    let (dir, mut sm) = open_state_machine();
    let members = std::collections::BTreeMap::from([(
        1u64,
        MemberNode {
            name: "c1".into(),
            ..Default::default()
        },
    )]);
    let membership = Entry::<TypeConfig> {
        log_id: log_id(1),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], members)),
    };
    sm.apply(vec![
        membership,
        entry(2, sql(KV)),
        entry(3, sql("INSERT INTO kv VALUES ('x', 'y')")),
    ])
    .await
    .unwrap();
    drop(sm);

    let mut reopened = StateMachine::open(dir.path()).unwrap();
    let (applied, membership) = reopened.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(3)));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    assert_eq!(membership.nodes().next().unwrap().1.name, "c1");

    let mut builder = reopened.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(3)));

    // Ship the snapshot file to a fresh member and install it there.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = StateMachine::open(other_dir.path()).unwrap();
    let mut incoming = other.begin_receiving_snapshot().await.unwrap();
    let mut source = snapshot.snapshot;
    tokio::io::copy(&mut source, &mut *incoming).await.unwrap();
    other
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .unwrap();
    let (applied, membership) = other.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(3)));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    assert_eq!(dump(other_dir.path()), dump(dir.path()));
    let current = other.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, snapshot.meta.snapshot_id);

    // It keeps applying after the install.
    let results = other
        .apply(vec![entry(4, sql("INSERT INTO kv VALUES ('z', 'w')"))])
        .await
        .unwrap();
    assert_eq!(results, vec![CommandResult::Applied { rows_affected: 1 }]);
    assert_eq!(dump(other_dir.path()).len(), 2);
}

/// Builds a fresh log store and state machine in a temporary directory for each suite case.
struct SuiteBuilder;

impl
    openraft::testing::StoreBuilder<
        TypeConfig,
        super::log_store::LogStore,
        StateMachine,
        tempfile::TempDir,
    > for SuiteBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, super::log_store::LogStore, StateMachine), super::StorageError>
    {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = super::log_store::LogStore::open(dir.path()).expect("open the log store");
        let state_machine = StateMachine::open(dir.path()).expect("open the state machine");
        Ok((dir, log, state_machine))
    }
}

#[tokio::test]
async fn a_batch_applies_each_command_on_its_own_and_in_order() {
    let (dir, mut sm) = open_state_machine();
    sm.apply(vec![entry(1, sql(KV))]).await.unwrap();
    let insert = |k: &str, read_tables: Vec<String>| Command::Changeset {
        base: 1,
        read_tables,
        changeset: changeset(&[], &format!("INSERT INTO kv VALUES ('{k}', 'x')")),
    };
    let batch = Command::Batch {
        commands: vec![
            insert("a", vec![]),
            // Read kv at base 1; the first command of this batch wrote kv since: a conflict.
            insert("b", vec!["kv".into()]),
            // Inserts the row the first command inserted: a changeset conflict.
            insert("a", vec![]),
            insert("c", vec![]),
            Command::Batch { commands: vec![] },
        ],
    };
    let results = sm.apply(vec![entry(2, batch)]).await.unwrap();
    let CommandResult::Batch { results } = &results[0] else {
        panic!("{results:?}");
    };
    assert!(is_applied(&results[0]), "{results:?}");
    assert!(
        matches!(results[1], CommandResult::Conflict { .. }),
        "{results:?}"
    );
    assert!(
        matches!(results[2], CommandResult::Conflict { .. }),
        "{results:?}"
    );
    assert!(is_applied(&results[3]), "{results:?}");
    assert!(
        matches!(results[4], CommandResult::Failed { .. }),
        "{results:?}"
    );
    let rows = dump(dir.path());
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["a", "c"]);
}

/// The message of a failed command, or a panic naming what it was instead.
fn failure(result: &CommandResult) -> &str {
    match result {
        CommandResult::Failed { message } => message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn sql_text_cannot_set_connection_settings_that_are_not_replicated() {
    let (dir, mut sm) = open_state_machine();
    let results = sm
        .apply(vec![
            entry(1, sql(KV)),
            entry(2, sql("PRAGMA recursive_triggers = ON")),
            entry(
                3,
                sql("INSERT INTO kv VALUES ('a', '1'); PRAGMA query_only = 1"),
            ),
            entry(4, sql("PRAGMA user_version = 7; PRAGMA table_info(kv)")),
            entry(5, sql("INSERT INTO kv VALUES ('b', '2')")),
        ])
        .await
        .unwrap();
    assert!(
        failure(&results[1]).contains("PRAGMA recursive_triggers cannot be set"),
        "{results:?}"
    );
    // The statements before the refused one are undone with it.
    assert!(failure(&results[2]).contains("PRAGMA query_only cannot be set"));
    // Settings stored in the database file, and pragmas that only read, are allowed.
    assert!(is_applied(&results[3]), "{results:?}");
    assert!(is_applied(&results[4]), "{results:?}");
    assert_eq!(dump(dir.path()), BTreeMap::from([("b".into(), "2".into())]));
    let version: i64 = Connection::open(dir.path().join("db.sqlite3"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 7);
}

#[tokio::test]
async fn deferred_foreign_keys_end_with_their_sql_entry() {
    let (dir, mut sm) = open_state_machine();
    let schema = "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                  CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id));";
    // One batch: the entries share one SQLite transaction here, but not on a member that
    // applies them in other batches, so nothing may carry over from one entry to the next.
    let results = sm
        .apply(vec![
            entry(1, sql(schema)),
            entry(2, sql("PRAGMA defer_foreign_keys = ON")),
            // Foreign keys are immediate again: the first statement fails.
            entry(
                3,
                sql("INSERT INTO child VALUES (1, 99); INSERT INTO parent VALUES (99)"),
            ),
            entry(
                4,
                sql("PRAGMA defer_foreign_keys = ON; INSERT INTO child VALUES (2, 98)"),
            ),
            entry(
                5,
                sql(
                    "PRAGMA defer_foreign_keys = ON; INSERT INTO child VALUES (3, 97);
                     INSERT INTO parent VALUES (97)",
                ),
            ),
        ])
        .await
        .unwrap();
    assert!(is_applied(&results[1]), "{results:?}");
    assert!(failure(&results[2]).contains("FOREIGN KEY"), "{results:?}");
    // Dangling at the end of its own entry: failed, as a COMMIT would fail.
    assert_eq!(failure(&results[3]), "FOREIGN KEY constraint failed");
    assert!(is_applied(&results[4]), "{results:?}");
    let children: Vec<(i64, i64)> = pairs(dir.path(), "SELECT id, parent FROM child ORDER BY id");
    assert_eq!(children, [(3, 97)]);
}

#[test]
fn openraft_storage_suite_passes() {
    openraft::testing::Suite::test_all(SuiteBuilder).unwrap();
}

#[tokio::test]
async fn writes_to_without_rowid_tables_make_stale_readers_conflict() {
    let (_dir, mut sm) = open_state_machine();
    let schema = "CREATE TABLE flags (name TEXT PRIMARY KEY, enabled INTEGER) WITHOUT ROWID;
                  CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL);";
    let flag_on = Command::Changeset {
        base: 1,
        read_tables: vec![],
        changeset: changeset_on(schema, "INSERT INTO flags VALUES ('x', 1)"),
    };
    // Read `flags` at base 1 (before the flag was set) and wrote `kv`: write skew unless it
    // conflicts.
    let skewed = Command::Changeset {
        base: 1,
        read_tables: vec!["flags".into()],
        changeset: changeset_on(schema, "INSERT INTO kv VALUES ('a', 'flag was off')"),
    };
    let results = sm
        .apply(vec![
            entry(1, sql(schema)),
            entry(2, flag_on),
            entry(3, skewed),
        ])
        .await
        .unwrap();
    assert!(is_applied(&results[1]), "{results:?}");
    assert!(
        matches!(&results[2], CommandResult::Conflict { reason } if reason.contains("\"flags\"")),
        "{results:?}"
    );
}

#[tokio::test]
async fn a_delete_that_cascades_applies() {
    let (dir, mut sm) = open_state_machine();
    let schema = "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                  CREATE TABLE child (id INTEGER PRIMARY KEY,
                                      parent INTEGER REFERENCES parent(id) ON DELETE CASCADE);";
    let rows = "INSERT INTO parent VALUES (1); INSERT INTO child VALUES (10, 1), (11, 1);";
    let delete = Command::Changeset {
        base: 2,
        read_tables: vec![],
        changeset: changeset_on(
            &format!("{schema}{rows}"),
            "DELETE FROM parent WHERE id = 1",
        ),
    };
    let results = sm
        .apply(vec![
            entry(1, sql(schema)),
            entry(2, sql(rows)),
            entry(3, delete),
        ])
        .await
        .unwrap();
    assert!(is_applied(&results[2]), "{results:?}");
    let left: Vec<(i64, i64)> = pairs(
        dir.path(),
        "SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)",
    );
    assert_eq!(left, [(0, 0)]);
}

#[tokio::test]
async fn triggers_do_not_run_again_when_a_changeset_applies() {
    let (dir, mut sm) = open_state_machine();
    let schema = "CREATE TABLE kv (k TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL);
                  CREATE TABLE audit (k TEXT PRIMARY KEY NOT NULL, times INTEGER NOT NULL);
                  CREATE TRIGGER audited AFTER INSERT ON kv
                  BEGIN INSERT INTO audit VALUES (NEW.k, 1)
                        ON CONFLICT (k) DO UPDATE SET times = times + 1; END;";
    // The changeset holds the trigger's row too.
    let insert = Command::Changeset {
        base: 1,
        read_tables: vec![],
        changeset: changeset_on(schema, "INSERT INTO kv VALUES ('a', '1')"),
    };
    let results = sm
        .apply(vec![
            entry(1, sql(schema)),
            entry(2, insert),
            // SQL text runs triggers, as anywhere else.
            entry(3, sql("INSERT INTO kv VALUES ('b', '2')")),
        ])
        .await
        .unwrap();
    assert!(results.iter().all(is_applied), "{results:?}");
    let audit: Vec<(String, i64)> = pairs(dir.path(), "SELECT k, times FROM audit ORDER BY k");
    assert_eq!(audit, [("a".to_string(), 1), ("b".to_string(), 1)]);
}

/// An entry that member `node` proposed as leader.
fn entry_of(node: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, node), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Waits (at most 30 s) until the state machine database in `dir` holds `expected` in kv.
async fn wait_for_kv(dir: &std::path::Path, expected: &[(&str, &str)]) {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let holds = || {
        let conn = Connection::open(dir.join("db.sqlite3")).unwrap();
        let kv_exists: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'kv'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        kv_exists && dump(dir) == expected
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !holds() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kv does not hold {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_state_machine_answers_this_members_proposal_itself() {
    const ME: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    let answers = std::sync::Arc::new(DirectAnswers::default());
    let mut sm = StateMachine::open(dir.path())
        .unwrap()
        .proposing_as(ME, answers.clone());
    let command = sql(KV);
    let mut answer = answers.expect(&command);
    let results = sm.apply(vec![entry_of(ME, 1, command)]).await.unwrap();
    assert_eq!(results, vec![CommandResult::Applied { rows_affected: 0 }]);
    assert!(matches!(
        answer.try_recv(),
        Ok(Ok(Some((1, CommandResult::Applied { .. }))))
    ));
}

#[tokio::test]
async fn entries_other_members_proposed_apply_in_the_background_and_in_order() {
    const ME: u64 = 2;
    const OTHER: u64 = 1;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path())
        .unwrap()
        .proposing_as(ME, Default::default());
    // Based after the schema entry, which makes every transaction based before it conflict.
    let insert = |rows: &[(&str, &str)], statements: &str| Command::Changeset {
        base: 1,
        read_tables: vec![],
        changeset: changeset(rows, statements),
    };

    // Another member's entries: answered at once, applied shortly after without anyone asking.
    sm.apply(vec![
        entry_of(OTHER, 1, sql(KV)),
        entry_of(OTHER, 2, insert(&[], "INSERT INTO kv VALUES ('a', '1')")),
    ])
    .await
    .unwrap();
    wait_for_kv(dir.path(), &[("a", "1")]).await;

    // Someone waiting for an entry has it applied now, not after the linger.
    sm.apply(vec![entry_of(
        OTHER,
        3,
        insert(&[], "INSERT INTO kv VALUES ('b', '1')"),
    )])
    .await
    .unwrap();
    sm.wait_applied(3, std::time::Duration::from_secs(30))
        .await
        .expect("entry 3 was not applied");
    assert_eq!(dump(dir.path()).get("b").map(String::as_str), Some("1"));

    // This member's own entry waits for the deferred ones before it, and gets its real result:
    // it changes the row as entry 4 left it, so it would conflict if applied first.
    sm.apply(vec![entry_of(
        OTHER,
        4,
        insert(&[("b", "1")], "UPDATE kv SET v = '2' WHERE k = 'b'"),
    )])
    .await
    .unwrap();
    let own = sm
        .apply(vec![entry_of(
            ME,
            5,
            insert(&[("b", "2")], "UPDATE kv SET v = '3' WHERE k = 'b'"),
        )])
        .await
        .unwrap();
    assert_eq!(own, vec![CommandResult::Applied { rows_affected: 0 }]);
    assert_eq!(dump(dir.path()).get("b").map(String::as_str), Some("3"));

    // The applied state and a snapshot include what was deferred.
    sm.apply(vec![entry_of(
        OTHER,
        6,
        insert(&[], "INSERT INTO kv VALUES ('c', '1')"),
    )])
    .await
    .unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(6));
    sm.apply(vec![entry_of(
        OTHER,
        7,
        insert(&[], "INSERT INTO kv VALUES ('d', '1')"),
    )])
    .await
    .unwrap();
    let snapshot = sm.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(7));

    // catch_up waits for everything handed over so far.
    sm.apply(vec![entry_of(
        OTHER,
        8,
        insert(&[], "INSERT INTO kv VALUES ('e', '1')"),
    )])
    .await
    .unwrap();
    sm.catch_up(std::time::Duration::from_secs(30))
        .await
        .expect("the entries handed over were not applied");
    assert_eq!(dump(dir.path()).len(), 5);
}

/// Copies the files of the database directory `dir`, in use, to a new directory: what a
/// process killed now leaves on disk (the kernel holds every write it made). SQLite's
/// shared-memory index is left behind; the next opener rebuilds it.
fn crash_copy(dir: &std::path::Path) -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for item in std::fs::read_dir(from).unwrap() {
            let item = item.unwrap();
            let name = item.file_name();
            if item.file_type().unwrap().is_dir() {
                copy(&item.path(), &to.join(&name));
            } else if !name.to_string_lossy().ends_with("-shm") {
                std::fs::copy(item.path(), to.join(&name)).unwrap();
            }
        }
    }
    let copied = tempfile::tempdir().unwrap();
    copy(dir, copied.path());
    copied
}

/// The log store and the state machine of a member in `dir`.
fn open_member(dir: &std::path::Path) -> (super::log_store::LogStore, StateMachine) {
    let log = super::log_store::LogStore::open(dir).unwrap();
    (log, StateMachine::open(dir).unwrap())
}

/// A member that committed and applied a blank entry (index 0, where a cluster's first
/// membership is), `kv` and `rows` inserts, with a snapshot taken after the first
/// `snapshot_after` of them (none if 0): its directory, with the member running.
async fn member_with_rows(
    rows: u64,
    snapshot_after: u64,
) -> (tempfile::TempDir, super::log_store::LogStore, StateMachine) {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = open_member(dir.path());
    let insert = |row: u64| {
        entry(
            row + 1,
            Command::Changeset {
                base: 1,
                read_tables: vec![],
                changeset: changeset(&[], &format!("INSERT INTO kv VALUES ('k{row}', 'v')")),
            },
        )
    };
    let first = Entry {
        log_id: log_id(0),
        payload: EntryPayload::Blank,
    };
    let entries: Vec<_> = [first, entry(1, sql(KV))]
        .into_iter()
        .chain((1..=rows).map(insert))
        .collect();
    log.blocking_append(entries.clone()).await.unwrap();
    log.save_committed(Some(log_id(rows + 1))).await.unwrap();
    // The committed id is written with the next write transaction.
    log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
    let (before, after) = entries.split_at(snapshot_after as usize + 2);
    sm.apply(before.to_vec()).await.unwrap();
    if snapshot_after > 0 {
        sm.build_snapshot().await.unwrap();
    }
    sm.apply(after.to_vec()).await.unwrap();
    (dir, log, sm)
}

/// The applied index of a state machine.
async fn applied(sm: &mut StateMachine) -> Option<u64> {
    sm.applied_state().await.unwrap().0.map(|id| id.index)
}

/// Opens the member in `dir` as openraft starts it (re-applying the committed log after what
/// the state machine holds), and returns the index it starts from as applied and committed.
async fn start_member(dir: &std::path::Path) -> Option<u64> {
    let (mut log, mut sm) = open_member(dir);
    let state = openraft::storage::StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap();
    state.committed.map(|id| id.index)
}

#[tokio::test]
async fn a_process_crash_keeps_the_unsynced_database() {
    let (dir, _log, _sm) = member_with_rows(20, 10).await;
    assert!(super::unsynced::tests::marker_present(dir.path()));
    let crashed = crash_copy(dir.path());
    let (_log, mut reopened) = open_member(crashed.path());
    assert_eq!(applied(&mut reopened).await, Some(21));
    assert_eq!(dump(crashed.path()), dump(dir.path()));
    assert_eq!(dump(crashed.path()).len(), 20);
}

/// What the machine running the member in `dir` leaves after a crash while the database ran
/// unsynced: a copy of its files and the marker of a boot that is not the next one.
fn machine_crash_copy(dir: &std::path::Path) -> tempfile::TempDir {
    let crashed = crash_copy(dir);
    super::unsynced::tests::leave_marker_of_another_boot(crashed.path());
    crashed
}

#[tokio::test]
async fn a_machine_crash_rebuilds_the_database_from_the_snapshot_and_the_log() {
    let (dir, _log, _sm) = member_with_rows(20, 10).await;
    let expected = dump(dir.path());
    let crashed = machine_crash_copy(dir.path());
    // Torn by the crash: the write-ahead log lost, the file garbage from its second page on.
    std::fs::remove_file(crashed.path().join("db.sqlite3-wal")).unwrap();
    let db_file = crashed.path().join("db.sqlite3");
    let length = std::fs::metadata(&db_file).unwrap().len() as usize;
    let mut bytes = std::fs::read(&db_file).unwrap();
    bytes[4096..length].fill(0xA5);
    std::fs::write(&db_file, bytes).unwrap();

    // The state machine alone holds the snapshot (the schema entry and 10 rows)...
    {
        let (_log, mut rebuilt) = open_member(crashed.path());
        assert_eq!(applied(&mut rebuilt).await, Some(11));
        assert_eq!(dump(crashed.path()).len(), 10);
        assert!(super::unsynced::tests::marker_present(crashed.path()));
    }
    // ...and the start applies the log after it: nothing committed is lost.
    assert_eq!(start_member(crashed.path()).await, Some(21));
    assert_eq!(dump(crashed.path()), expected);
}

#[tokio::test]
async fn a_machine_crash_without_a_snapshot_rebuilds_the_database_from_the_whole_log() {
    let (dir, _log, _sm) = member_with_rows(5, 0).await;
    let expected = dump(dir.path());
    let crashed = machine_crash_copy(dir.path());
    {
        let (_log, mut rebuilt) = open_member(crashed.path());
        assert_eq!(applied(&mut rebuilt).await, None);
    }
    assert_eq!(start_member(crashed.path()).await, Some(6));
    assert_eq!(dump(crashed.path()), expected);
}

#[tokio::test]
async fn closing_writes_the_database_back_and_removes_the_marker() {
    use openraft::storage::RaftStateMachine;
    let (dir, _log, mut sm) = member_with_rows(5, 0).await;
    sm.close().await.unwrap();
    assert!(!super::unsynced::tests::marker_present(dir.path()));
    let wal = std::fs::metadata(dir.path().join("db.sqlite3-wal")).unwrap();
    assert_eq!(wal.len(), 0, "the write-ahead log was not written back");

    // Closed cleanly, the database is kept whatever happened to the machine after.
    let stopped = crash_copy(dir.path());
    let (_log, mut reopened) = open_member(stopped.path());
    assert_eq!(applied(&mut reopened).await, Some(6));
    assert_eq!(dump(stopped.path()).len(), 5);

    // A write after the close marks the database unsynced again.
    sm.apply(vec![entry(7, sql("INSERT INTO kv VALUES ('late', 'v')"))])
        .await
        .unwrap();
    assert!(super::unsynced::tests::marker_present(dir.path()));
}

#[tokio::test]
async fn the_local_membership_after_a_machine_crash_comes_from_the_snapshot() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut sm) = open_member(dir.path());
    let node = MemberNode {
        name: "c1".into(),
        ..Default::default()
    };
    let members = BTreeMap::from([(1u64, node.clone())]);
    let membership = Entry::<TypeConfig> {
        log_id: log_id(0),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], members)),
    };
    log.blocking_append([membership.clone()]).await.unwrap();
    sm.apply([membership]).await.unwrap();
    sm.build_snapshot().await.unwrap();

    let crashed = machine_crash_copy(dir.path());
    // Torn beyond reading: the write-ahead log lost, and not even SQLite's header left.
    std::fs::remove_file(crashed.path().join("db.sqlite3-wal")).unwrap();
    std::fs::write(crashed.path().join("db.sqlite3"), vec![0xA5; 8192]).unwrap();
    let view = super::local_view::local_membership(crashed.path()).unwrap();
    assert_eq!(view, vec![(1, node, true)]);
}

#[tokio::test]
async fn entries_apply_while_a_snapshot_is_built() {
    let (dir, mut sm) = open_state_machine();
    sm.apply(vec![
        entry(1, sql(KV)),
        entry(2, sql("INSERT INTO kv VALUES ('a', '1')")),
    ])
    .await
    .unwrap();
    // Hold the snapshot back: another thread has the current snapshot until told.
    let gate = sm.write_gate();
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _snapshot = gate.snapshot_file();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    held.recv().unwrap();
    let mut builder = sm.clone();
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    // Let the build start: it first waits for the writer thread to apply what was handed
    // over, so a call queued after that (and answered after it) lets it go on.
    tokio::task::yield_now().await;
    sm.applied_state().await.unwrap();
    tokio::task::yield_now().await;

    // The writer thread is not taken by the build: the next entry applies meanwhile.
    let applied = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sm.apply(vec![entry(3, sql("INSERT INTO kv VALUES ('b', '1')"))]),
    )
    .await
    .expect("an apply waited for the snapshot build");
    assert_eq!(
        applied.unwrap(),
        vec![CommandResult::Applied { rows_affected: 1 }]
    );
    assert!(!build.is_finished());

    release.send(()).unwrap();
    holder.join().unwrap();
    let snapshot = build.await.unwrap().unwrap();
    // The snapshot holds what was handed over before the build (2), maybe more, and exactly
    // the state its metadata names.
    let index = snapshot.meta.last_log_id.unwrap().index;
    assert!((2..=3).contains(&index), "snapshot at {index}");
    let snapshot_file = Connection::open(dir.path().join("snapshots/current.db")).unwrap();
    let rows: i64 = snapshot_file
        .query_row("SELECT count(*) FROM kv", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows as u64, index - 1);
}
