//! [`Database`]: this member's Raft node and its SQLite state machine, and the two operations
//! everything else is built on — proposing a command to the leader (from any member) and
//! waiting until the local state machine is at least as fresh as the leader's commit
//! (read index).

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::RaftError;
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use rusqlite::Connection;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::proposer::{self, Proposer};
use super::raft::log_store::LogStore;
use super::raft::network::{self, Network, PeerCredentials, RpcReply};
use super::raft::state_machine::{self, StateMachine, WriteGate};
use super::raft::{Command, CommandResult, MemberNode, NodeId, TypeConfig};
use crate::client::Client;
use crate::error::panic_message;
use crate::sync;
use crate::{Error, ErrorKind, Result};

/// Path of the RPC that proposes a command on the leader (SPEC §5.9: "any further endpoints
/// the design needs").
pub const PROPOSE_PATH: &str = "/core/internal/raft/propose";
/// Path of the RPC that asks the leader for a read index.
pub const READ_INDEX_PATH: &str = "/core/internal/raft/read-index";
/// Path of the RPC that asks the leader to update a member's Raft metadata.
pub const SET_NODE_PATH: &str = "/core/internal/raft/set-node";

/// How long a proposal or read index may wait for a leader to be known.
const LEADER_WAIT_POLL: Duration = Duration::from_millis(20);

/// The most jobs of [`Database::on_connection`] (transactions, reads) that run at once on a
/// member, each on a pooled connection of its own; later ones wait for a connection. More at
/// once would add threads and connections, not speed, on a machine of few cores: 64 writers
/// that each opened a connection when all pooled ones were taken made fewer writes per second
/// than 16 (docs/benchmarks.md).
pub const MAX_CONNECTIONS: usize = 16;

/// Raft timings and log compaction (DESIGN §4.3). The defaults replace a lost leader in about
/// a second.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// Interval between leader heartbeats.
    pub heartbeat_interval: Duration,
    /// The election timeout is drawn from this range.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built after this many entries since the last one; the log is purged
    /// behind it.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging members catch up from the
    /// log rather than by snapshot.
    pub keep_after_snapshot: u64,
    /// How long the leader holds back telling followers that entries are committed when no new
    /// entries carry the news, so the next ones can (whole milliseconds). Followers apply
    /// others' entries up to this much later; their linearizable reads and writes do not
    /// wait for it.
    pub commit_notify_delay: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 8192,
            keep_after_snapshot: 1024,
            commit_notify_delay: Duration::from_millis(2),
        }
    }
}

impl RaftSettings {
    fn to_config(&self) -> Result<Config> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            cluster_name: "microcluster".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout.0),
            election_timeout_max: millis(self.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            commit_notify_delay: millis(self.commit_notify_delay),
            ..Config::default()
        }
        .validate()
        .map_err(|err| Error::invalid(format!("Invalid Raft settings: {err}")))
    }

    /// How long without a quorum acknowledgement a leader still accepts work: beyond this it
    /// has most likely lost its quorum and callers get `Unavailable` instead of waiting.
    pub(crate) fn quorum_lease(&self) -> Duration {
        self.election_timeout.1 * 3
    }

    /// How long a caller waits for a leader to be known before giving up.
    fn leader_wait(&self) -> Duration {
        self.election_timeout.1 * 5
    }
}

/// The replicated database of one member.
pub struct Database {
    raft: Raft<TypeConfig>,
    id: NodeId,
    dir: PathBuf,
    network: Network,
    settings: RaftSettings,
    /// Connections for transactions, with the state machine generation they were opened in.
    pool: Mutex<Vec<(u64, Connection)>>,
    /// One permit per job of [`Database::on_connection`] running now, each on a connection
    /// of its own ([`MAX_CONNECTIONS`]). A job holds its permit until it ends, even when its
    /// caller stopped waiting for it.
    connection_permits: Arc<tokio::sync::Semaphore>,
    state_machine: StateMachine,
    /// Group commit of proposals while this member leads.
    proposer: Proposer,
    /// Clients of the leaders this member forwarded to, by address.
    leaders: Mutex<HashMap<String, Client>>,
    /// Signalled when a peer announces that its database came online (SPEC §11.5).
    peer_started: tokio::sync::Notify,
}

impl Database {
    /// Opens the log and the state machine in `dir` and starts the Raft node `id`.
    pub async fn open(
        dir: &Path,
        id: NodeId,
        credentials: PeerCredentials,
        settings: RaftSettings,
    ) -> Result<Database> {
        let config = Arc::new(settings.to_config()?);
        // Opening reads the log's segments (moving an earlier version's `raft.db` into them) and
        // may rebuild the state machine after a machine crash: file work, off the runtime.
        let opening = dir.to_path_buf();
        let (log, state_machine) = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>((LogStore::open(&opening)?, StateMachine::open(&opening)?))
        })
        .await
        .map_err(|err| Error::internal(format!("Opening the database failed: {err}")))??;
        let answers = Arc::new(proposer::DirectAnswers::default());
        let state_machine = state_machine.proposing_as(id, answers.clone());
        let network = Network::new(credentials);
        let raft = Raft::new(id, config, network.clone(), log, state_machine.clone())
            .await
            .map_err(|err| Error::internal(format!("Failed to start Raft: {err}")))?;
        let proposer = Proposer::start(raft.clone(), settings.clone(), answers);
        Ok(Database {
            proposer,
            raft,
            id,
            dir: dir.to_path_buf(),
            network,
            settings,
            pool: Mutex::new(Vec::new()),
            connection_permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            state_machine,
            leaders: Mutex::new(HashMap::new()),
            peer_started: tokio::sync::Notify::new(),
        })
    }

    /// This member's Raft node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft node, for the transport handlers and membership changes.
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Makes this node the single voter of a new Raft group (bootstrap).
    pub async fn initialize(&self, node: MemberNode) -> Result<()> {
        let members = BTreeMap::from([(self.id, node)]);
        self.raft
            .initialize(members)
            .await
            .map_err(|err| Error::internal(format!("Failed to bootstrap Raft: {err}")))
    }

    /// The members of the Raft group as the latest membership config has them, with whether
    /// each is a voter.
    pub fn members(&self) -> Vec<(NodeId, MemberNode, bool)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.clone(), membership.voter_ids().any(|v| v == *id)))
            .collect()
    }

    /// Replaces this member's metadata in the Raft membership (its failure domain, SPEC
    /// §13.6) through the leader.
    pub async fn set_own_node(&self, node: MemberNode, deadline: Instant) -> Result<()> {
        let body = Bytes::from(network::encode(&(self.id, node.clone()))?);
        self.on_leader(
            deadline,
            "update this member's Raft metadata",
            |_| {
                let node = node.clone();
                async move { self.set_node_local(self.id, node).await }
            },
            SET_NODE_PATH,
            body,
        )
        .await
    }

    /// Replaces member `id`'s metadata on this node; `None` when it is not the leader.
    pub(crate) async fn set_node_local(&self, id: NodeId, node: MemberNode) -> Result<Option<()>> {
        let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
        match self.raft.change_membership(change, true).await {
            Ok(_) => Ok(Some(())),
            Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_))) => {
                Ok(None)
            }
            Err(err) => Err(Error::unavailable(format!(
                "Failed to update the Raft metadata of member {id}: {err}"
            ))),
        }
    }

    /// Pins `cluster_cert_pem` for every later connection to a member (after a rotation of
    /// the cluster certificate).
    pub fn set_cluster_certificate(&self, cluster_cert_pem: String) {
        self.network.set_cluster_certificate(cluster_cert_pem);
        sync::lock(&self.leaders).clear();
    }

    /// The current leader's id and node, if one is known.
    pub fn leader(&self) -> Option<(NodeId, MemberNode)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, node.clone()))
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Appends `command` to the log through the leader (forwarding to it from a follower) and
    /// returns its index and outcome once the leader has applied it. Fails with `Unavailable`
    /// when no leader with a quorum answers before `deadline`.
    pub async fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(u64, CommandResult)> {
        proposer::check_command_size(&command)?;
        let body = Bytes::from(network::encode(&command)?);
        self.on_leader(
            deadline,
            "commit the change",
            |timeout| {
                let command = command.clone();
                async move { self.propose_local(command, timeout).await }
            },
            PROPOSE_PATH,
            body,
        )
        .await
    }

    /// The commit index of the leader, confirmed by a quorum: a read at or after it is
    /// linearizable.
    pub async fn read_index(&self, deadline: Instant) -> Result<u64> {
        self.on_leader(
            deadline,
            "confirm the read index",
            |timeout| async move { self.read_index_local(timeout).await },
            READ_INDEX_PATH,
            Bytes::new(),
        )
        .await
    }

    /// Waits until the local database holds entry `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.state_machine.wait_applied(index, timeout).await
    }

    /// Runs `local` if this member is the leader, else sends `path` with `body` to the leader;
    /// retries while leadership moves, until `deadline`.
    async fn on_leader<T, F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        local: F,
        path: &str,
        body: Bytes,
    ) -> Result<T>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let leader_deadline = deadline.min(Instant::now() + self.settings.leader_wait());
        let mut last_error = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || Instant::now() >= leader_deadline && last_error.is_some() {
                let reason = last_error
                    .map(|err: Error| err.message().to_string())
                    .unwrap_or_else(|| "no leader is known".to_string());
                return Err(Error::unavailable(format!(
                    "Failed to {what}: the cluster has no leader with a quorum ({reason})"
                )));
            }
            match self.leader() {
                Some((leader, _)) if leader == self.id => match local(remaining).await {
                    Ok(Some(value)) => return Ok(value),
                    Ok(None) => {}
                    Err(err) => return Err(err),
                },
                Some((_, node)) => match self
                    .forward(&node.address, path, body.clone(), remaining)
                    .await
                {
                    Ok(value) => return Ok(value),
                    Err(err)
                        if err.kind() == ErrorKind::Unavailable
                            || err.kind() == ErrorKind::Timeout =>
                    {
                        tracing::debug!(
                            "Forwarding to the leader at {} failed: {err}",
                            node.address
                        );
                        last_error = Some(err);
                    }
                    Err(err) => return Err(err),
                },
                None => {
                    if last_error.is_none() && Instant::now() >= leader_deadline {
                        last_error = Some(Error::unavailable("no leader is known"));
                    }
                }
            }
            tokio::time::sleep(LEADER_WAIT_POLL).await;
        }
    }

    async fn forward<T: serde::de::DeserializeOwned>(
        &self,
        address: &str,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<T> {
        let client = {
            let mut leaders = sync::lock(&self.leaders);
            match leaders.get(address) {
                Some(client) => client.clone(),
                None => {
                    let client = self.network.credentials().client(address)?;
                    leaders.insert(address.to_string(), client.clone());
                    client
                }
            }
        };
        let answer = client.post_binary(path, body, timeout).await?;
        network::decode(&answer)
    }

    /// Proposes on this node; `None` when it is not (or no longer) the leader.
    pub(crate) async fn propose_local(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<Option<(u64, CommandResult)>> {
        self.proposer.propose(command, timeout).await
    }

    /// Proposes a command another member forwarded, on this node; `None` when it is not (or
    /// no longer) the leader. That member waits until its own copy of the entry is applied,
    /// so the followers hear at once that it is committed, not after
    /// [`RaftSettings::commit_notify_delay`].
    pub(crate) async fn propose_forwarded(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<Option<(u64, CommandResult)>> {
        let proposed = self.propose_local(command, timeout).await?;
        if proposed.is_some()
            && let Err(err) = self.raft.trigger().heartbeat().await
        {
            tracing::debug!("Could not send the commit to the followers at once: {err}");
        }
        Ok(proposed)
    }

    /// The read index on this node; `None` when it is not (or no longer) the leader.
    pub(crate) async fn read_index_local(&self, timeout: Duration) -> Result<Option<u64>> {
        let read = self
            .proposer
            .quorum()
            .while_quorum(timeout, "confirm the leader", self.raft.get_read_log_id())
            .await;
        match read {
            Err(err) => Err(err),
            Ok(Ok((read_log_id, _))) => Ok(Some(read_log_id.map_or(0, |log_id| log_id.index))),
            Ok(Err(RaftError::APIError(_))) => Ok(None),
            Ok(Err(err)) => Err(Error::unavailable(format!("Database is offline: {err}"))),
        }
    }

    /// Answers a forwarded proposal or read index: the value, or "not the leader".
    pub(crate) fn leader_reply<T: serde::Serialize>(result: Result<Option<T>>) -> Result<Vec<u8>> {
        match result? {
            Some(value) => network::encode(&value),
            None => Err(Error::unavailable("This member is not the leader")),
        }
    }

    /// Encodes the result of a local Raft call as a transport reply.
    pub(crate) fn rpc_reply<T: serde::Serialize, E: serde::Serialize>(
        result: std::result::Result<T, E>,
    ) -> Result<Vec<u8>> {
        RpcReply::encode(result)
    }

    /// Runs `f` on a pooled connection to the local state machine database once the database
    /// holds every entry handed to the state machine (some are applied in the background),
    /// waiting for that until `deadline`. `f` gets the write gate and must take its turn
    /// before it writes ([`WriteGate`]). Connections are reopened after a snapshot replaced
    /// the database file.
    ///
    /// SQLite never blocks the executor. When no other job runs, on a multi-threaded runtime
    /// (the library's), `f` runs on this thread after its other tasks were handed to another
    /// thread (`block_in_place`): that saves the two thread hops of `spawn_blocking`, which
    /// is most of the gain at one writer. Otherwise it runs on a blocking thread: with many
    /// jobs at once, handing the worker's tasks over for each costs more than the hops (64
    /// writers lost 14 %). A panic in `f` is an `Internal` error either way.
    pub(crate) async fn on_connection<T, F>(self: &Arc<Self>, deadline: Instant, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &WriteGate) -> T + Send + 'static,
    {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.state_machine.catch_up(timeout).await?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let permits = self.connection_permits.clone();
        let permit = tokio::time::timeout(timeout, permits.acquire_owned()).await;
        let Ok(Ok(permit)) = permit else {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "Timed out waiting for a database connection: {MAX_CONNECTIONS} jobs are running"
                ),
            ));
        };
        let alone = self.connection_permits.available_permits() == MAX_CONNECTIONS - 1;
        let db = self.clone();
        let job = move || {
            let _permit = permit;
            let gate = db.state_machine.write_gate();
            let _file = gate.share_file();
            // No snapshot replaces the file while it is shared, so the generation stays this
            // one until the connection is back in the pool.
            let generation = gate.generation();
            let mut conn = db.take_connection(generation)?;
            let done = f(&mut conn, &gate);
            db.return_connection(generation, conn);
            Ok(done)
        };
        let panicked = |what: String| Error::internal(format!("A database job panicked: {what}"));
        if alone && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| catch_unwind(AssertUnwindSafe(job)))
                .map_err(|payload| panicked(panic_message(payload.as_ref())))?
        } else {
            let done = tokio::task::spawn_blocking(job).await;
            done.map_err(|err| panicked(err.to_string()))?
        }
    }

    /// A pooled connection opened in `generation`, or a new one.
    fn take_connection(&self, generation: u64) -> Result<Connection> {
        let pooled = {
            let mut pool = sync::lock(&self.pool);
            pool.retain(|(opened_in, _)| *opened_in == generation);
            pool.pop()
        };
        match pooled {
            Some((_, conn)) => Ok(conn),
            None => state_machine::open_reader(&self.dir)
                .and_then(|mut conn| super::tx::install_authorizer(&mut conn).map(|()| conn))
                .map_err(|err| Error::internal(format!("Failed to open the database: {err}"))),
        }
    }

    /// Puts a connection back in the pool. A connection is opened only when the pool has none,
    /// and each job holds one permit, so the pool never holds more than [`MAX_CONNECTIONS`].
    fn return_connection(&self, generation: u64, conn: Connection) {
        sync::lock(&self.pool).push((generation, conn));
    }

    /// Records that a peer's database came online (`PATCH /core/internal/database`), waking
    /// a member that waits for the others to be upgraded; remembered until the next wait when
    /// nobody waits.
    pub(crate) fn announce_peer_started(&self) {
        self.peer_started.notify_one();
    }

    /// Resolves at the next (or a remembered) [`Database::announce_peer_started`].
    pub(crate) async fn peer_started(&self) {
        self.peer_started.notified().await;
    }

    /// Stops the Raft node, and closes the state machine database.
    pub async fn shutdown(&self) {
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!("Raft did not stop cleanly: {err}");
        }
        if let Err(err) = self.state_machine.close().await {
            tracing::warn!("{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::test_support::{Member, free_address};

    /// Polls `done` until it holds, for at most a minute.
    async fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_keeps_its_connection_after_its_caller_stopped_waiting() {
        let member = Member::start(tempfile::tempdir().unwrap()).await;
        let app = member.app.clone();
        app.new_cluster("c1", &free_address(), BTreeMap::new())
            .await
            .unwrap();
        let db = app.daemon().unwrap().database().unwrap();

        // MAX_CONNECTIONS jobs that hold their connection until released; their callers give
        // up after 100 ms (except one that may run on its caller's thread and cannot).
        let started = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((Mutex::new(false), Condvar::new()));
        let callers: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let (db, started, released) = (db.clone(), started.clone(), released.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let job = db.on_connection(deadline, move |_, _| {
                        started.fetch_add(1, Ordering::SeqCst);
                        let (flag, signal) = &*released;
                        let guard = sync::lock(flag);
                        drop(signal.wait_while(guard, |released| !*released).unwrap());
                    });
                    tokio::time::timeout(Duration::from_millis(100), job).await
                })
            })
            .collect();
        wait_for("every job runs", || {
            started.load(Ordering::SeqCst) == MAX_CONNECTIONS
        })
        .await;
        wait_for("the callers that can give up have", || {
            callers.iter().filter(|caller| caller.is_finished()).count() >= MAX_CONNECTIONS - 1
        })
        .await;

        // Their jobs still hold every connection.
        let late = db
            .on_connection(Instant::now() + Duration::from_millis(300), |_, _| ())
            .await;
        // Released before asserting, so that a failure does not leave the jobs blocked.
        let (flag, signal) = &*released;
        *sync::lock(flag) = true;
        signal.notify_all();
        for caller in callers {
            caller.await.unwrap().ok();
        }
        let err = late.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(
            err.to_string()
                .contains("waiting for a database connection"),
            "{err}"
        );
        drop((db, app));
        member.stop().await;
    }
}
