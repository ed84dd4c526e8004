//! The replicated database across three `microd` processes (issue 3): replication of writes
//! from leader and followers, determinism of non-deterministic SQL, serializable concurrent
//! increments, survival of acknowledged writes when the leader is killed, catch-up by
//! snapshot, a rebuild after a machine crash, and quorum loss.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use microcluster::ErrorKind;
use microcluster::db::raft::local_view::local_log_range;
use microcluster_it::{Cluster, wait_until};

fn count(cluster: &Cluster, i: usize, table: &str) -> i64 {
    cluster.select(i, &format!("SELECT count(*) FROM {table}"))[0][0]
        .as_i64()
        .expect("a count")
}

#[test]
fn writes_on_leader_and_followers_replicate_identically_even_when_non_deterministic() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().expect("a leader");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    cluster
        .sql(
            leader,
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, author TEXT, rnd INTEGER, at TEXT, blob BLOB)",
        )
        .unwrap();
    for (writer, member) in [leader, followers[0], followers[1]].into_iter().enumerate() {
        let query = format!(
            "INSERT INTO notes (author, rnd, at, blob) VALUES ('w{writer}', random(), datetime('now'), randomblob(16)); \
             INSERT INTO notes (author, rnd, at, blob) VALUES ('w{writer};quoted', abs(random()) % 1000, strftime('%f','now'), hex(randomblob(4)))"
        );
        let result = cluster.sql(member, &query).unwrap();
        assert_eq!(result["Results"][0]["rows_affected"], 1, "{result}");
    }

    // Reads are linearizable: every member shows every acknowledged write at once.
    let dumps: Vec<String> = (0..3).map(|i| cluster.dump(i)).collect();
    assert!(dumps[0].contains("'w2;quoted'"), "{}", dumps[0]);
    assert_eq!(dumps[0], dumps[1], "c1 and c2 differ");
    assert_eq!(dumps[0], dumps[2], "c1 and c3 differ");
    for i in 0..3 {
        assert_eq!(count(&cluster, i, "notes"), 6);
    }
}

#[test]
fn bad_sql_is_refused_clearly_and_changes_nothing() {
    let cluster = Cluster::start(3, &[]);
    let before = cluster.dump(0);
    let cases = [
        (
            "SELEC 1",
            "Failed to exec query: near \"SELEC\": syntax error",
        ),
        (
            "SELECT * FROM missing_table",
            "Failed to exec query: no such table: missing_table",
        ),
        (
            "CREATE TABLE nokey (v TEXT)",
            "Failed to exec query: Table \"nokey\" has no PRIMARY KEY",
        ),
        // Rows with a NULL key could not be replicated as changesets.
        (
            "CREATE TABLE nullkey (k TEXT PRIMARY KEY, v TEXT)",
            "Failed to exec query: Table \"nullkey\" has a PRIMARY KEY column \"k\" that may be NULL; declare it NOT NULL",
        ),
        ("", "No query provided"),
        ("  ;  -- nothing\n", "No query provided"),
    ];
    for (query, expected) in cases {
        let err = cluster.sql(1, query).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{query}: {err}");
        assert!(err.message().starts_with(expected), "{query}: {err}");
    }
    // A constraint violation in a batch keeps the statements before it.
    let err = cluster
        .sql(
            2,
            "INSERT INTO extended_table (key, value) VALUES ('k', 'first'); \
             INSERT INTO extended_table (key, value) VALUES ('k', 'again')",
        )
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("Failed to exec query: UNIQUE constraint failed"),
        "{err}"
    );
    let rows = cluster.select(0, "SELECT value FROM extended_table WHERE key = 'k'");
    assert_eq!(rows, vec![serde_json::json!(["first"])]);
    // The library's bookkeeping tables are not writable through the SQL API.
    let err = cluster
        .sql(0, "DELETE FROM _microcluster_table_writes")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(cluster.dump(0).len() > before.len());
    assert_eq!(cluster.dump(0), cluster.dump(1));
}

#[test]
fn concurrent_increments_from_two_members_lose_no_update() {
    let cluster = Arc::new(Cluster::start(3, &[]));
    cluster
        .sql(0, "CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)")
        .unwrap();
    const PER_MEMBER: usize = 40;
    let workers: Vec<_> = [0usize, 2]
        .into_iter()
        .map(|member| {
            let cluster = cluster.clone();
            std::thread::spawn(move || {
                for _ in 0..PER_MEMBER {
                    cluster
                        .sql(member, "UPDATE counter SET v = v + 1 WHERE id = 1")
                        .unwrap_or_else(|err| panic!("increment on c{}: {err}", member + 1));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    for i in 0..3 {
        let rows = cluster.select(i, "SELECT v FROM counter WHERE id = 1");
        assert_eq!(rows[0][0], (2 * PER_MEMBER) as i64, "on c{}", i + 1);
    }
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]);
    cluster
        .sql(0, "CREATE TABLE acked (k INTEGER PRIMARY KEY)")
        .unwrap();
    let leader = cluster.leader().expect("a leader");
    let writer_member = (0..3).find(|&i| i != leader).unwrap();

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let socket = cluster.state_dirs[writer_member].join("control.socket");
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = microcluster::Client::unix(socket);
            let mut k = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let body =
                    serde_json::json!({ "query": format!("INSERT INTO acked (k) VALUES ({k})") });
                let client = client.clone();
                let written = microcluster::runtime::block_on(async move {
                    client
                        .query::<serde_json::Value>(
                            microcluster::client::Method::POST,
                            "/core/internal/sql",
                            Some(&body),
                        )
                        .await
                });
                if written.is_ok() {
                    acknowledged.lock().unwrap().insert(k);
                }
                // A failed write may or may not have been applied; either way use a new key.
                k += 1;
            }
        })
    };
    wait_until("50 writes are acknowledged", || {
        acknowledged.lock().unwrap().len() >= 50
    });
    cluster.kill(leader);
    let acked_at_kill = acknowledged.lock().unwrap().len();
    wait_until("a new leader is elected", || {
        cluster.leader().is_some_and(|new| new != leader)
    });
    wait_until("writes are acknowledged again", || {
        acknowledged.lock().unwrap().len() >= acked_at_kill + 50
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();

    let stored = |cluster: &Cluster, i: usize| -> BTreeSet<u64> {
        cluster
            .select(i, "SELECT k FROM acked")
            .iter()
            .map(|row| row[0].as_u64().unwrap())
            .collect()
    };
    for i in (0..3).filter(|&i| i != leader) {
        let stored = stored(&cluster, i);
        let missing: Vec<_> = acknowledged.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "c{} lost acknowledged writes {missing:?}",
            i + 1
        );
    }
    cluster.restart(leader);
    wait_until("the old leader catches up", || {
        acknowledged.is_subset(&stored(&cluster, leader))
    });
    assert_eq!(cluster.dump(leader), cluster.dump(writer_member));
}

#[test]
fn a_member_behind_a_purged_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "16"]);
    cluster
        .sql(0, "CREATE TABLE rows (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let leader = cluster.leader().expect("a leader");
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    let writer = (0..3).find(|&i| i != leader && i != lagging).unwrap();
    cluster.stop(lagging);
    for i in 0..120 {
        cluster
            .sql(writer, &format!("INSERT INTO rows (v) VALUES ('row {i}')"))
            .unwrap();
    }
    // The leader purged its log far past what the stopped member has.
    let log_range = |member: usize| {
        let dir = cluster.state_dirs[member].join("database");
        local_log_range(&dir).unwrap().expect("a log")
    };
    let (_, lagging_last) = log_range(lagging);
    wait_until("the leader purges its log", || {
        let (leader_first, _) = log_range(leader);
        leader_first > lagging_last + 1
    });

    cluster.restart(lagging);
    assert_eq!(count(&cluster, lagging, "rows"), 120);
    assert_eq!(cluster.dump(lagging), cluster.dump(leader));
    // It keeps following after the snapshot.
    cluster
        .sql(lagging, "INSERT INTO rows (v) VALUES ('after')")
        .unwrap();
    assert_eq!(count(&cluster, leader, "rows"), 121);
}

#[test]
fn quorum_loss_makes_writes_unavailable_until_quorum_returns() {
    let mut cluster = Cluster::start(3, &[]);
    cluster
        .sql(0, "CREATE TABLE q (id INTEGER PRIMARY KEY)")
        .unwrap();
    for survivor_is_leader in [true, false] {
        let leader = cluster.leader().expect("a leader");
        let survivor = match survivor_is_leader {
            true => leader,
            false => (0..3).find(|&i| i != leader).unwrap(),
        };
        let lost: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
        for &i in &lost {
            cluster.kill(i);
        }
        let err = cluster
            .sql(survivor, "INSERT INTO q (id) VALUES (NULL)")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.message().contains("quorum"), "{err}");
        let err = cluster.sql(survivor, "SELECT count(*) FROM q").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

        for &i in &lost {
            cluster.restart(i);
        }
        wait_until("writes succeed again", || {
            cluster
                .sql(survivor, "INSERT INTO q (id) VALUES (NULL)")
                .is_ok()
        });
    }
    let rows = count(&cluster, 0, "q");
    assert!(rows >= 2, "{rows}");
    assert_eq!(cluster.dump(0), cluster.dump(1));
    assert_eq!(cluster.dump(0), cluster.dump(2));
}

#[test]
fn large_changes_are_refused_clearly_or_reach_a_member_that_lagged() {
    let mut cluster = Cluster::start(3, &[]);
    cluster
        .sql(0, "CREATE TABLE blobs (id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();

    // Too large for one transaction (and for one Raft request body): a clear error, nothing
    // written, and the cluster goes on.
    let err = cluster
        .sql(
            0,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9)
             INSERT INTO blobs (v) SELECT randomblob(1000000) FROM n",
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(err.message().contains("at most 4194304 bytes"), "{err}");
    assert_eq!(count(&cluster, 0, "blobs"), 0);

    // A member stopped while 3 MB changes were written is missing more entries than one
    // request body holds.
    let leader = cluster.leader().expect("a leader");
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    cluster.stop(lagging);
    for _ in 0..8 {
        cluster
            .sql(leader, "INSERT INTO blobs (v) VALUES (randomblob(3000000))")
            .unwrap();
    }
    cluster.restart(lagging);
    assert_eq!(count(&cluster, lagging, "blobs"), 8);
    let sizes = "SELECT sum(length(v)) FROM blobs";
    assert_eq!(
        cluster.select(lagging, sizes),
        cluster.select(leader, sizes)
    );
}

#[test]
fn a_member_whose_machine_crashed_rebuilds_its_database_from_the_snapshot_and_the_log() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "16"]);
    cluster
        .sql(0, "CREATE TABLE rows (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let insert = |cluster: &Cluster, from: usize, i: usize| {
        cluster
            .sql(from, &format!("INSERT INTO rows (v) VALUES ('row {i}')"))
            .unwrap();
    };
    for i in 0..60 {
        insert(&cluster, 0, i);
    }
    let leader = cluster.leader().expect("a leader");
    let victim = (0..3).find(|&i| i != leader).unwrap();
    wait_until("the victim holds every row", || {
        count(&cluster, victim, "rows") == 60
    });
    cluster.kill(victim);

    // What a power loss can leave of a database that ran unsynced: the marker of a boot that
    // is over, no write-ahead log, and a file torn beyond reading.
    let database = cluster.state_dirs[victim].join("database");
    let marker = database.join("db.sqlite3.unsynced");
    assert!(
        marker.exists(),
        "a running member's database is marked unsynced"
    );
    std::fs::write(&marker, "00000000-0000-0000-0000-000000000000\n").unwrap();
    let _ = std::fs::remove_file(database.join("db.sqlite3-wal"));
    let length = std::fs::metadata(database.join("db.sqlite3"))
        .unwrap()
        .len();
    std::fs::write(database.join("db.sqlite3"), vec![0xA5; length as usize]).unwrap();
    for i in 60..80 {
        insert(&cluster, leader, i);
    }

    cluster.restart(victim);
    wait_until("the rebuilt member holds every row", || {
        let counted = cluster.sql(victim, "SELECT count(*) FROM rows");
        counted.is_ok_and(|result| result["Results"][0]["rows"][0][0].as_i64() == Some(80))
    });
    assert_eq!(cluster.dump(victim), cluster.dump(leader));
    assert!(
        cluster.log(victim).contains("may be torn"),
        "log:\n{}",
        cluster.log(victim)
    );
}
