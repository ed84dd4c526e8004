//! The patch of `vendor/openraft` (PATCHED.md):
//! - a leader replicates its new entries while it flushes them, and counts itself towards the
//!   quorum only once they are flushed;
//! - a leader holds back a committed index that no entries carry for `commit_notify_delay`.
//!
//! Three Raft nodes run in this process over our log store and state machine, connected by an
//! in-process network that can cut a node off. The leader's log writes are held back with the
//! log store's test gate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, Raft};

use super::log_store::LogStore;
use super::log_store::tests::FlushGate;
use super::state_machine::StateMachine;
use super::{Command, MemberNode, NodeId, TypeConfig};

/// A generous bound for anything that should happen.
const PATIENCE: Duration = Duration::from_secs(30);

/// The nodes, the ones cut off from the others, the ones whose incoming requests are held
/// back (in flight) until released, and every AppendEntries request delivered.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>>,
    down: Arc<Mutex<BTreeSet<NodeId>>>,
    held: Arc<tokio::sync::watch::Sender<BTreeSet<NodeId>>>,
    appends: Arc<Mutex<Vec<Append>>>,
}

/// An AppendEntries request as delivered: to whom, how many entries, and the committed index
/// it carried.
#[derive(Clone, Copy, Debug)]
struct Append {
    target: NodeId,
    entries: usize,
    leader_commit: Option<u64>,
}

/// The network of one node.
#[derive(Clone)]
struct NodeNetwork {
    from: NodeId,
    router: Router,
}

/// A connection from one node to another.
struct Connection {
    from: NodeId,
    target: NodeId,
    router: Router,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>>;

impl Connection {
    /// Delivers an RPC with `call` to the target, unless either end is cut off.
    async fn deliver<T, E, F>(&self, call: impl FnOnce(Raft<TypeConfig>) -> F) -> RpcResult<T, E>
    where
        E: std::error::Error,
        F: std::future::Future<Output = Result<T, RaftError<NodeId, E>>>,
    {
        let mut held = self.router.held.subscribe();
        let released = held.wait_for(|held| !held.contains(&self.target)).await;
        released.expect("the router outlives its connections");
        let node = {
            let down = self.router.down.lock().unwrap();
            let node = self.router.nodes.lock().unwrap().get(&self.target).cloned();
            node.filter(|_| !down.contains(&self.from) && !down.contains(&self.target))
        };
        let Some(raft) = node else {
            let cut = std::io::Error::other(format!("node {} is cut off", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&cut)));
        };
        call(raft)
            .await
            .map_err(|err| RPCError::RemoteError(RemoteError::new(self.target, err)))
    }
}

impl RaftNetworkFactory<TypeConfig> for NodeNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &MemberNode) -> Connection {
        Connection {
            from: self.from,
            target,
            router: self.router.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let append = Append {
            target: self.target,
            entries: rpc.entries.len(),
            leader_commit: rpc.leader_commit.map(|id| id.index),
        };
        let router = self.router.clone();
        self.deliver(|raft| async move {
            router.appends.lock().unwrap().push(append);
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.deliver(|raft| async move { raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.deliver(|raft| async move { raft.vote(rpc).await })
            .await
    }
}

/// Three nodes that formed a cluster, with the flush gate of each node's log.
struct Cluster {
    router: Router,
    gates: BTreeMap<NodeId, FlushGate>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Timings for the tests of the leader's flush.
fn flush_test_config() -> Config {
    Config {
        heartbeat_interval: 50,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        ..Config::default()
    }
}

/// Timings for the tests of the committed index: no heartbeat and no election within a test,
/// so only AppendEntries requests and the delayed notice tell followers what is committed.
fn commit_test_config(commit_notify_delay: Duration) -> Config {
    let hour = 3_600_000;
    Config {
        heartbeat_interval: hour,
        election_timeout_min: 2 * hour,
        election_timeout_max: 4 * hour,
        enable_heartbeat: false,
        commit_notify_delay: u64::try_from(commit_notify_delay.as_millis()).unwrap(),
        ..Config::default()
    }
}

impl Cluster {
    async fn start(config: Config) -> Cluster {
        let config = Arc::new(config.validate().unwrap());
        let router = Router::default();
        let (mut gates, mut dirs, mut members) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
        for id in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(dir.path()).unwrap();
            gates.insert(id, log.flush_gate.clone());
            let state_machine = StateMachine::open(dir.path()).unwrap();
            let network = NodeNetwork {
                from: id,
                router: router.clone(),
            };
            let raft = Raft::new(id, config.clone(), network, log, state_machine)
                .await
                .unwrap();
            router.nodes.lock().unwrap().insert(id, raft);
            members.insert(id, MemberNode::default());
            dirs.push(dir);
        }
        router.node(1).initialize(members).await.unwrap();
        Cluster {
            router,
            gates,
            _dirs: dirs,
        }
    }

    /// The leader once every node knows it.
    async fn leader(&self) -> NodeId {
        let leader = self
            .router
            .node(1)
            .wait(Some(PATIENCE))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .unwrap()
            .current_leader
            .unwrap();
        for id in 1..=3 {
            self.router
                .node(id)
                .wait(Some(PATIENCE))
                .current_leader(leader, "the leader known")
                .await
                .unwrap();
        }
        leader
    }

    async fn shutdown(self) {
        let nodes: Vec<Raft<TypeConfig>> = self
            .router
            .nodes
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for gate in self.gates.values() {
            gate.open();
        }
        for raft in nodes {
            raft.shutdown().await.unwrap();
        }
    }
}

impl Router {
    fn node(&self, id: NodeId) -> Raft<TypeConfig> {
        self.nodes.lock().unwrap()[&id].clone()
    }
}

/// A write with nothing to apply.
fn empty_write() -> Command {
    Command::Batch {
        commands: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_commits_on_the_followers_while_the_leader_is_still_flushing() {
    let cluster = Cluster::start(flush_test_config()).await;
    let leader = cluster.leader().await;
    cluster.gates[&leader].close();
    // The leader's copy cannot reach its disk; the two followers' copies make the majority.
    let written = tokio::time::timeout(
        PATIENCE,
        cluster.router.node(leader).client_write(empty_write()),
    )
    .await
    .expect("the write committed without the leader's flush")
    .unwrap();
    assert!(written.log_id.index > 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_itself_only_once_its_log_is_flushed() {
    let cluster = Cluster::start(flush_test_config()).await;
    let leader = cluster.leader().await;
    let cut_off = (1..=3).find(|id| *id != leader).unwrap();
    cluster.router.down.lock().unwrap().insert(cut_off);
    cluster.gates[&leader].close();
    let raft = cluster.router.node(leader);
    let mut write = Box::pin(raft.client_write(empty_write()));
    // One follower has the entry on disk, the leader only in memory: no majority holds it.
    let early = tokio::time::timeout(Duration::from_secs(2), &mut write).await;
    assert!(
        early.is_err(),
        "committed before the leader's flush: {early:?}"
    );
    cluster.gates[&leader].open();
    let written = tokio::time::timeout(PATIENCE, write)
        .await
        .expect("the write committed once the leader flushed")
        .unwrap();
    assert!(written.log_id.index > 0);
    cluster.router.down.lock().unwrap().clear();
    cluster.shutdown().await;
}

/// Waits until node `id` has applied entry `index`.
async fn applied(cluster: &Cluster, id: NodeId, index: u64) {
    cluster
        .router
        .node(id)
        .wait(Some(PATIENCE))
        .applied_index_at_least(Some(index), "the entry applied")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_index_no_entries_carry_reaches_the_followers_after_the_delay() {
    let cluster = Cluster::start(commit_test_config(Duration::from_millis(50))).await;
    let leader = cluster.leader().await;
    let written = cluster
        .router
        .node(leader)
        .client_write(empty_write())
        .await
        .unwrap();
    // Nothing else is sent: without the delayed notice the followers would never apply it.
    for id in (1..=3).filter(|id| *id != leader) {
        applied(&cluster, id, written.log_id.index).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_entries_carry_a_held_back_committed_index() {
    let cluster = Cluster::start(commit_test_config(Duration::from_secs(3600))).await;
    let leader = cluster.leader().await;
    let raft = cluster.router.node(leader);
    let first = raft.client_write(empty_write()).await.unwrap().log_id.index;
    let appends_before_second = cluster.router.appends.lock().unwrap().len();
    let second = raft.client_write(empty_write()).await.unwrap().log_id.index;
    let mut told_only_first = 0;
    for id in (1..=3).filter(|id| *id != leader) {
        // The second entry's request told them the first is committed.
        applied(&cluster, id, first).await;
        let metrics = cluster.router.node(id).metrics().borrow().clone();
        assert_eq!(metrics.last_log_index, Some(second));
        // What a follower applied is what the requests carrying entries told it: a follower
        // whose request for the second entry left after that entry committed (it was still
        // busy with the first) learns so from that request; no other request is sent within
        // the hour.
        let told = (cluster.router.appends.lock().unwrap().iter())
            .filter(|append| append.target == id && append.entries > 0)
            .filter_map(|append| append.leader_commit)
            .max();
        assert_eq!(metrics.last_applied.map(|id| id.index), told);
        if told == Some(first) {
            told_only_first += 1;
        }
    }
    // The second entry committed on the ack of a follower whose request left before that, so
    // at least one follower holds the second entry and was not told it is committed.
    assert!(
        told_only_first >= 1,
        "every follower was told the second entry is committed"
    );
    let appends = cluster.router.appends.lock().unwrap().clone();
    let notices: Vec<_> = (appends[appends_before_second..].iter())
        .filter(|append| append.entries == 0)
        .collect();
    assert!(
        notices.is_empty(),
        "requests without entries were sent: {notices:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_asked_for_while_entries_are_in_flight_follows_them() {
    let cluster = Cluster::start(commit_test_config(Duration::from_secs(3600))).await;
    let leader = cluster.leader().await;
    let slow = (1..=3).find(|id| *id != leader).unwrap();
    cluster.router.held.send_modify(|held| {
        held.insert(slow);
    });
    // The write commits with the other follower; the slow one's request is in flight.
    let raft = cluster.router.node(leader);
    let index = raft.client_write(empty_write()).await.unwrap().log_id.index;
    raft.trigger().heartbeat().await.unwrap();
    cluster.router.held.send_modify(|held| {
        held.remove(&slow);
    });
    // The entries' request was sent before the commit; only the heartbeat tells.
    applied(&cluster, slow, index).await;
    cluster.shutdown().await;
}
