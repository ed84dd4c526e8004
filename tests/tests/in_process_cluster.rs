//! Three members in one process, driven through the Rust API: bootstrap, join, transactions
//! from any member with read-modify-write closures, and what closures may not do.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use microcluster::db::{MAX_CONNECTIONS, RaftSettings};
use microcluster::{App, Args, DaemonArgs, ErrorKind, ReadMode, Value, runtime};
use microcluster_it::{free_address, wait_until};

/// The Raft timings and the membership heartbeat interval of a member (zero: the default).
#[derive(Clone, Default)]
struct Timings {
    raft: RaftSettings,
    heartbeat_interval: Duration,
}

/// A member started in this process; stopped when dropped.
struct Member {
    app: Arc<App>,
    daemon: Option<std::thread::JoinHandle<microcluster::Result<()>>>,
}

impl Member {
    fn start(dir: &Path) -> Member {
        Member::start_with(dir, Timings::default())
    }

    fn start_with(dir: &Path, timings: Timings) -> Member {
        let app = Arc::new(
            App::new(Args {
                state_dir: Some(dir.to_path_buf()),
                ..Args::default()
            })
            .unwrap(),
        );
        let running = app.clone();
        let daemon = std::thread::spawn(move || {
            runtime::block_on(async move {
                running
                    .start(DaemonArgs {
                        version: "1.0".into(),
                        schema_updates: vec![
                            "CREATE TABLE counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)"
                                .into(),
                        ],
                        raft: timings.raft,
                        heartbeat_interval: timings.heartbeat_interval,
                        ..DaemonArgs::default()
                    })
                    .await
            })
        });
        let ready = app.clone();
        runtime::block_on(async move { ready.ready(Some(Duration::from_secs(60))).await }).unwrap();
        Member {
            app,
            daemon: Some(daemon),
        }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            Arc<App>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = microcluster::Result<T>> + Send>>,
    ) -> microcluster::Result<T> {
        runtime::block_on(f(self.app.clone()))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let app = self.app.clone();
        let _ = runtime::block_on(async move { app.stop().await });
        if let Some(daemon) = self.daemon.take() {
            let _ = daemon.join();
        }
    }
}

/// Members that stop in the reverse order of their start. The first member, the leader when
/// no election can happen, stops last: with no voter left to hand leadership to, it does not
/// wait out the (here hours long) election timeout first.
struct StopLeaderLast(Vec<Member>);

impl std::ops::Deref for StopLeaderLast {
    type Target = [Member];

    fn deref(&self) -> &[Member] {
        &self.0
    }
}

impl Drop for StopLeaderLast {
    fn drop(&mut self) {
        while let Some(member) = self.0.pop() {
            drop(member);
        }
    }
}

fn counter(tx: &mut microcluster::Tx<'_>, name: &str) -> microcluster::Result<i64> {
    let rows = tx.query("SELECT value FROM counters WHERE name = ?1", [name])?;
    Ok(match rows.rows.first().map(|row| &row[0]) {
        Some(Value::Integer(value)) => *value,
        _ => 0,
    })
}

fn three_members(dir: &Path) -> Vec<Member> {
    three_members_with(dir, Timings::default())
}

fn three_members_with(dir: &Path, timings: Timings) -> Vec<Member> {
    let members: Vec<Member> = (1..=3)
        .map(|i| Member::start_with(&dir.join(format!("c{i}")), timings.clone()))
        .collect();
    let first = free_address();
    members[0]
        .run(move |app| {
            Box::pin(async move { app.new_cluster("c1", &first, BTreeMap::new()).await })
        })
        .unwrap();
    for (i, member) in members.iter().enumerate().skip(1) {
        let name = format!("c{}", i + 1);
        let token_name = name.clone();
        let token = members[0]
            .run(move |app| {
                Box::pin(async move {
                    app.new_join_token(&token_name, Duration::from_secs(600))
                        .await
                })
            })
            .unwrap();
        let address = free_address();
        member
            .run(move |app| {
                Box::pin(async move {
                    app.join_cluster(&name, &address, &token, BTreeMap::new())
                        .await
                })
            })
            .unwrap();
    }
    members
}

#[test]
fn transactions_beyond_the_connection_limit_wait_for_a_connection_and_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let members = Arc::new(three_members(dir.path()));
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    const TRANSACTIONS: usize = 3 * MAX_CONNECTIONS;
    let workers: Vec<_> = (0..TRANSACTIONS)
        .map(|i| {
            let (members, running, most_running) =
                (members.clone(), running.clone(), most_running.clone());
            std::thread::spawn(move || {
                members[0].run(move |app| {
                    Box::pin(async move {
                        app.transaction(move |tx| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most_running.fetch_max(now, Ordering::SeqCst);
                            // Hold the connection a while, so that the closures overlap.
                            std::thread::sleep(Duration::from_millis(20));
                            let written = tx.execute(
                                "INSERT INTO counters (name, value) VALUES (?1, 1)",
                                [format!("c{i}")],
                            );
                            running.fetch_sub(1, Ordering::SeqCst);
                            written.map(drop)
                        })
                        .await
                    })
                })
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap().unwrap();
    }
    let most = most_running.load(Ordering::SeqCst);
    assert!(
        (1..=MAX_CONNECTIONS).contains(&most),
        "{most} closures ran at once"
    );
    let rows = members[1]
        .run(|app| {
            Box::pin(async move {
                app.transaction(|tx| {
                    let rows = tx.query("SELECT count(*) FROM counters", [])?;
                    Ok(rows.rows[0][0].clone())
                })
                .await
            })
        })
        .unwrap();
    assert_eq!(rows, Value::Integer(TRANSACTIONS as i64));
}

#[test]
fn a_transaction_that_finds_every_connection_taken_until_its_deadline_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let members = Arc::new(three_members(dir.path()));
    let started = Arc::new(AtomicUsize::new(0));
    let released = Arc::new((Mutex::new(false), Condvar::new()));
    let holders: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let (members, started, released) = (members.clone(), started.clone(), released.clone());
            std::thread::spawn(move || {
                members[0].run(move |app| {
                    Box::pin(async move {
                        app.transaction_with(ReadMode::Local, Duration::from_secs(60), move |_| {
                            started.fetch_add(1, Ordering::SeqCst);
                            let (flag, signal) = &*released;
                            let guard = flag.lock().unwrap();
                            drop(signal.wait_while(guard, |released| !*released).unwrap());
                            Ok(())
                        })
                        .await
                    })
                })
            })
        })
        .collect();
    wait_until("every connection is taken", || {
        started.load(Ordering::SeqCst) == MAX_CONNECTIONS
    });
    let err = members[0]
        .run(|app| {
            Box::pin(async move {
                app.transaction_with(ReadMode::Local, Duration::from_millis(300), |_| Ok(()))
                    .await
            })
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.to_string()
            .contains("waiting for a database connection"),
        "{err}"
    );
    let (flag, signal) = &*released;
    *flag.lock().unwrap() = true;
    signal.notify_all();
    for holder in holders {
        holder.join().unwrap().unwrap();
    }
}

#[test]
fn read_modify_write_transactions_from_every_member_are_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let members = Arc::new(three_members(dir.path()));

    let roles = members[2]
        .run(|app| Box::pin(async move { app.cluster_members().await }))
        .unwrap();
    assert_eq!(
        roles
            .iter()
            .map(|m| (m.name.as_str(), m.role.as_str()))
            .collect::<Vec<_>>(),
        vec![("c1", "voter"), ("c2", "voter"), ("c3", "voter")]
    );

    // Read, decide, write — from two members at once.
    const PER_MEMBER: i64 = 25;
    let workers: Vec<_> = [0usize, 2]
        .into_iter()
        .map(|i| {
            let members = members.clone();
            std::thread::spawn(move || {
                for _ in 0..PER_MEMBER {
                    members[i]
                        .run(|app| {
                            Box::pin(async move {
                                app.transaction(|tx| {
                                    let value = counter(tx, "hits")?;
                                    tx.execute(
                                        "INSERT OR REPLACE INTO counters (name, value) VALUES ('hits', ?1)",
                                        [value + 1],
                                    )?;
                                    Ok(())
                                })
                                .await
                            })
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    // Read back on the third member: linearizable, so at once.
    let value = members[1]
        .run(|app| Box::pin(async move { app.transaction(|tx| counter(tx, "hits")).await }))
        .unwrap();
    assert_eq!(value, 2 * PER_MEMBER);
    // A local read on any member converges to the same value.
    let local = members[2]
        .run(|app| {
            Box::pin(async move {
                app.transaction_with(ReadMode::Local, Duration::from_secs(10), |tx| {
                    counter(tx, "hits")
                })
                .await
            })
        })
        .unwrap();
    assert!(local <= 2 * PER_MEMBER);
}

#[test]
fn a_write_from_a_follower_does_not_wait_for_the_leader_to_mention_its_commit() {
    // Within the test the leader sends no Raft heartbeat and holds back every committed index
    // that no entries carry, and no membership heartbeat reads the database: a follower's
    // write returns in time only because the leader tells the followers at once when it
    // answers a forwarded proposal.
    let hour = Duration::from_secs(3600);
    let timings = Timings {
        raft: RaftSettings {
            heartbeat_interval: hour,
            election_timeout: (2 * hour, 4 * hour),
            commit_notify_delay: hour,
            ..RaftSettings::default()
        },
        heartbeat_interval: hour,
    };
    let dir = tempfile::tempdir().unwrap();
    let members = StopLeaderLast(three_members_with(dir.path(), timings));
    for (i, member) in members.iter().enumerate() {
        let written = member.run(move |app| {
            Box::pin(async move {
                let deadline = Duration::from_secs(20);
                app.transaction_with(ReadMode::Linearizable, deadline, move |tx| {
                    tx.execute(
                        "INSERT INTO counters (name, value) VALUES (?1, 1)",
                        [format!("c{}", i + 1)],
                    )?;
                    counter(tx, &format!("c{}", i + 1))
                })
                .await
            })
        });
        assert_eq!(written.unwrap(), 1);
    }
    let sum = members[1]
        .run(|app| {
            Box::pin(async move {
                app.transaction(|tx| {
                    let rows = tx.query("SELECT sum(value) FROM counters", ())?;
                    Ok(rows.rows[0][0].clone())
                })
                .await
            })
        })
        .unwrap();
    assert_eq!(sum, Value::Integer(3));
}

#[test]
fn closures_cannot_change_the_schema_and_failed_closures_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_members(dir.path());

    let err = members[1]
        .run(|app| {
            Box::pin(async move {
                app.transaction(|tx| {
                    tx.execute("CREATE TABLE sneaky (id INTEGER PRIMARY KEY)", [])?;
                    Ok(())
                })
                .await
            })
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        err.message(),
        "Schema changes are only allowed through schema updates or the SQL API"
    );

    let err = members[1]
        .run(|app| {
            Box::pin(async move {
                app.transaction(|tx| {
                    tx.execute("INSERT INTO counters (name, value) VALUES ('ghost', 1)", [])?;
                    Err::<(), _>(microcluster::Error::invalid("changed my mind"))
                })
                .await
            })
        })
        .unwrap_err();
    assert_eq!(err.message(), "changed my mind");

    let err = members[0]
        .run(|app| {
            Box::pin(async move {
                app.transaction(|tx| {
                    tx.execute(
                        "INSERT INTO counters (name, value) VALUES ('nulled', NULL)",
                        [],
                    )?;
                    Ok(())
                })
                .await
            })
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.message().contains("NOT NULL constraint failed"),
        "{err}"
    );

    // A closure that panics fails its transaction, and only that.
    let err = members[1]
        .run(|app| {
            Box::pin(async move {
                app.transaction(|tx| -> microcluster::Result<()> {
                    tx.execute("INSERT INTO counters (name, value) VALUES ('ghost', 2)", [])?;
                    panic!("the closure gave up")
                })
                .await
            })
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(err.message().contains("the closure gave up"), "{err}");

    for member in &members {
        let ghosts = member
            .run(|app| {
                Box::pin(async move {
                    app.transaction(|tx| {
                        Ok(tx.query("SELECT count(*) FROM counters", [])?.rows[0][0].clone())
                    })
                    .await
                })
            })
            .unwrap();
        assert_eq!(ghosts, Value::Integer(0));
    }
    // The schema is untouched on every member.
    let tables = members[2]
        .run(|app| {
            Box::pin(async move {
                app.sql("SELECT name FROM sqlite_schema WHERE name = 'sneaky'")
                    .await
            })
        })
        .unwrap();
    assert_eq!(tables["Results"][0]["rows"], serde_json::json!([]));
}

#[test]
fn transactions_need_a_running_daemon_in_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(Args {
        state_dir: Some(dir.path().join("idle")),
        ..Args::default()
    })
    .unwrap();
    let err = runtime::block_on(async move { app.transaction(|_tx| Ok(())).await }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.message(), "The daemon is not running in this process");
}

#[test]
fn a_slow_read_only_transaction_does_not_hold_up_writes() {
    let dir = tempfile::tempdir().unwrap();
    let member = Member::start(&dir.path().join("c1"));
    let address = free_address();
    member
        .run(move |app| {
            Box::pin(async move { app.new_cluster("c1", &address, BTreeMap::new()).await })
        })
        .unwrap();
    let wait = Duration::from_secs(60);

    // A reader that holds its transaction open until told to finish.
    let (reading, read_started) = std::sync::mpsc::channel();
    let (finish, told_to_finish) = std::sync::mpsc::channel::<()>();
    let app = member.app.clone();
    let reader = std::thread::spawn(move || {
        runtime::block_on(async move {
            app.transaction_with(ReadMode::Local, wait * 2, move |tx| {
                let seen = counter(tx, "hits")?;
                let _ = reading.send(seen);
                let _ = told_to_finish.recv_timeout(wait);
                Ok(seen)
            })
            .await
        })
    });
    assert_eq!(read_started.recv_timeout(wait).unwrap(), 0);

    // Writes commit (and are applied, on this member too) while the reader is still open.
    let (written, write_done) = std::sync::mpsc::channel();
    let app = member.app.clone();
    std::thread::spawn(move || {
        let result = runtime::block_on(async move {
            app.transaction(|tx| {
                let next = counter(tx, "hits")? + 1;
                tx.execute(
                    "INSERT OR REPLACE INTO counters (name, value) VALUES ('hits', ?1)",
                    [next],
                )?;
                Ok(next)
            })
            .await
        });
        let _ = written.send(result);
    });
    let write = write_done.recv_timeout(wait);
    finish.send(()).unwrap();
    assert_eq!(write.expect("the write waited for the reader").unwrap(), 1);
    // The reader kept the snapshot it started with.
    assert_eq!(reader.join().unwrap().unwrap(), 0);
}
