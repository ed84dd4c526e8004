//! The leader's side of writes and reads: group commit of concurrent proposals, and the
//! quorum lease that turns "no quorum" into a prompt `Unavailable`.
//!
//! openraft 0.9 appends (and fsyncs) every `client_write` on its own. To share one log
//! append — one fsync, one replication round trip, one state machine transaction on every
//! member — between concurrent transactions, proposals are queued and a background task sends
//! whatever has gathered as one `Command::Batch` entry. Under load the batches grow by
//! themselves while the previous one is being committed.
//!
//! The state machine answers a batch's proposers itself, as soon as it has committed the
//! batch's entry ([`DirectAnswers`]); openraft's own answer comes three task hand-overs later
//! and then only tells the batching task that it may send the next batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{EntryPayload, Raft};
use tokio::sync::{mpsc, oneshot};

use super::node::RaftSettings;
use super::raft::{Command, CommandResult, NodeId, TypeConfig};
use crate::sync::lock;
use crate::{Error, ErrorKind, Result};

/// How often a leader waiting for a quorum checks that it still has one.
const QUORUM_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The most commands, and about the most bytes of changesets, in one batch.
const MAX_BATCH_COMMANDS: usize = 1024;
const MAX_BATCH_BYTES: usize = 2 << 20;

/// The most bytes of changeset or SQL text one command may carry. A batch is then at most
/// [`MAX_BATCH_BYTES`] plus one command, so every entry fits in one Raft request body and can
/// be replicated.
pub(crate) const MAX_COMMAND_BYTES: usize = 4 << 20;
const _: () =
    assert!(MAX_BATCH_BYTES + MAX_COMMAND_BYTES < crate::rest::server::MAX_BODY_BYTES / 8 * 7);

/// Refuses a command too large to be replicated (see [`MAX_COMMAND_BYTES`]).
pub(crate) fn check_command_size(command: &Command) -> Result<()> {
    let size = command_size(command);
    if size > MAX_COMMAND_BYTES {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "The change is {size} bytes; one transaction or statement may change at most {MAX_COMMAND_BYTES} bytes"
            ),
        ));
    }
    Ok(())
}

/// How long one batch may take to commit before its proposers are told it timed out.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of one proposal: its entry index and result, or `None` when this member is
/// not the leader.
pub(crate) type Proposed = Result<Option<(u64, CommandResult)>>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Proposed>,
}

/// Proposes commands on this member's Raft node (which must lead for them to succeed).
pub(crate) struct Proposer {
    quorum: Quorum,
    queue: mpsc::UnboundedSender<Proposal>,
}

impl Proposer {
    /// Starts the batching task on the current runtime; it ends when the proposer is dropped.
    /// The state machine of `raft` answers proposals through `answers` (see [`DirectAnswers`]).
    pub fn start(
        raft: Raft<TypeConfig>,
        settings: RaftSettings,
        answers: Arc<DirectAnswers>,
    ) -> Proposer {
        let quorum = Quorum { raft, settings };
        let (queue, proposals) = mpsc::unbounded_channel();
        tokio::spawn(run_batches(quorum.clone(), answers, proposals));
        Proposer { quorum, queue }
    }

    /// The quorum checks of this node.
    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// Proposes `command`, waiting at most `timeout` for its result.
    pub async fn propose(&self, command: Command, timeout: Duration) -> Proposed {
        check_command_size(&command)?;
        self.quorum.check_lease()?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .map_err(|_| Error::unavailable("Database is offline"))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(proposed)) => proposed,
            Ok(Err(_)) => Err(Error::unavailable("Database is offline")),
            Err(_) => Err(Error::unavailable(format!(
                "Timed out after {timeout:?} waiting for the change to commit; it may still be applied later"
            ))),
        }
    }
}

/// Collects proposals into batches and commits one batch at a time: what arrives while a batch
/// commits forms the next one.
///
/// One batch in flight, not several: each batch costs every member CPU (an fsync, Raft RPCs, a
/// state machine transaction), so on a busy machine fewer, larger batches commit more writes
/// per second than overlapping ones (measured with 16 writers on 2 cores: 3 640 ops/s with
/// one in flight against 3 150 with two; docs/benchmarks.md).
async fn run_batches(
    quorum: Quorum,
    answers: Arc<DirectAnswers>,
    mut proposals: mpsc::UnboundedReceiver<Proposal>,
) {
    while let Some(first) = proposals.recv().await {
        let mut bytes = command_size(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match proposals.try_recv() {
                Ok(next) => {
                    bytes += command_size(&next.command);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        commit(&quorum, &answers, batch).await;
    }
}

/// About the bytes `command` carries: its changesets and SQL text.
pub(crate) fn command_size(command: &Command) -> usize {
    match command {
        Command::Sql { sql } => sql.len(),
        Command::Changeset { changeset, .. } => changeset.len(),
        Command::Batch { commands } => commands.iter().map(command_size).sum(),
    }
}

/// Commits one batch and answers each of its proposers: through the state machine when it
/// claims the batch's entry, else with what openraft answers.
async fn commit(quorum: &Quorum, answers: &DirectAnswers, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .map(|proposal| (proposal.command, proposal.reply))
        .unzip();
    let command = match <[Command; 1]>::try_from(commands) {
        Ok([one]) => one,
        Err(commands) => Command::Batch { commands },
    };
    answers.wait_for(command.clone(), replies);
    let written = quorum
        .while_quorum(
            BATCH_TIMEOUT,
            "commit the change",
            quorum.raft.client_write(command),
        )
        .await;
    answers.settled(matches!(written, Ok(Ok(_))));
    let Some(waiting) = answers.withdraw() else {
        return; // the state machine claimed the entry and answers (or answered) it
    };
    let outcomes: Vec<Proposed> = match written {
        Err(err) => {
            let err = err.context("The change may still be applied later: ");
            waiting.replies.iter().map(|_| Err(err.clone())).collect()
        }
        Ok(Ok(response)) => waiting.outcomes(response.log_id.index, response.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            waiting.replies.iter().map(|_| Ok(None)).collect()
        }
        Ok(Err(err)) => {
            let err = Error::unavailable(format!("Database is offline: {err}"));
            waiting.replies.iter().map(|_| Err(err.clone())).collect()
        }
    };
    waiting.answer(outcomes);
}

/// The proposers of the batch being committed, for the state machine to answer as soon as it
/// has committed the batch's entry: openraft's answer would reach them only after three more
/// task hand-overs (its state machine task, its core, the batching task).
///
/// The state machine claims the waiting batch with the first entry it applies that this member
/// created as leader and that carries the batch's command. That entry is the batch's as long
/// as no other entry this member created can still be applied. The batching task has one batch
/// in flight, so that holds once openraft has answered a batch with its result: its entry is
/// applied, and with it every entry before it (an entry of this member after it would be a
/// later batch's). It stops holding when a batch ends any other way (timed out, the quorum
/// lost, no longer the leader): its entry may still be applied later. Until the next batch
/// that openraft answers, and at first (entries of before a restart may still be applied),
/// batches are answered through openraft only.
#[derive(Default)]
pub(crate) struct DirectAnswers {
    waiting: Mutex<Option<Waiting>>,
    /// Whether no entry this member created, but the waiting batch's, can still be applied.
    settled: AtomicBool,
}

/// A batch whose entry is not applied yet, and its proposers: one, or one per command of a
/// [`Command::Batch`] (proposers never propose batches themselves).
pub(crate) struct Waiting {
    command: Command,
    replies: Vec<oneshot::Sender<Proposed>>,
}

/// A waiting batch claimed by the state machine, answered once its entry is committed.
pub(crate) struct Claimed {
    /// The position of the batch's entry among those being applied.
    pub position: usize,
    index: u64,
    waiting: Waiting,
}

impl DirectAnswers {
    /// Registers the batch being proposed: `command`, and the proposers' `replies`.
    fn wait_for(&self, command: Command, replies: Vec<oneshot::Sender<Proposed>>) {
        *lock(&self.waiting) = Some(Waiting { command, replies });
    }

    /// Takes the batch back unless the state machine claimed it.
    fn withdraw(&self) -> Option<Waiting> {
        lock(&self.waiting).take()
    }

    /// Records how the batch's proposal ended: answered by openraft with its result, or not.
    fn settled(&self, answered: bool) {
        self.settled.store(answered, Ordering::SeqCst);
    }

    /// Waits for `command`, proposed alone, after a batch openraft answered.
    #[cfg(test)]
    pub fn expect(&self, command: &Command) -> oneshot::Receiver<Proposed> {
        let (reply, answer) = oneshot::channel();
        self.settled(true);
        self.wait_for(command.clone(), vec![reply]);
        answer
    }

    /// Claims the waiting batch if its entry is among `entries`, which the state machine of
    /// member `node` is about to apply; never while the last batch that ended was not
    /// answered by openraft (see [`DirectAnswers`]).
    pub fn claim(&self, node: NodeId, entries: &[openraft::Entry<TypeConfig>]) -> Option<Claimed> {
        if !self.settled.load(Ordering::SeqCst) {
            return None;
        }
        let mut waiting = lock(&self.waiting);
        let wanted = waiting.as_ref()?;
        let position = entries.iter().position(|entry| {
            entry.log_id.leader_id.node_id == node
                && matches!(&entry.payload, EntryPayload::Normal(command) if *command == wanted.command)
        })?;
        Some(Claimed {
            position,
            index: entries[position].log_id.index,
            waiting: waiting.take()?,
        })
    }
}

impl Claimed {
    /// Answers the proposers with `result`, the result of the batch's entry, once committed.
    pub fn answer(self, result: CommandResult) {
        let outcomes = self.waiting.outcomes(self.index, result);
        self.waiting.answer(outcomes);
    }
}

impl Waiting {
    /// Each proposer's outcome when the batch's entry `index` had `result`.
    fn outcomes(&self, index: u64, result: CommandResult) -> Vec<Proposed> {
        let batch = matches!(self.command, Command::Batch { .. });
        match (batch, result) {
            (false, result) => vec![Ok(Some((index, result)))],
            (true, CommandResult::Batch { results }) if results.len() == self.replies.len() => {
                results.into_iter().map(|r| Ok(Some((index, r)))).collect()
            }
            (true, other) => {
                let err = Error::internal(format!("Unexpected result of a batch: {other:?}"));
                self.replies.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }

    fn answer(self, outcomes: Vec<Proposed>) {
        for (reply, outcome) in self.replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// The quorum lease of a leader.
#[derive(Clone)]
pub(crate) struct Quorum {
    raft: Raft<TypeConfig>,
    settings: RaftSettings,
}

impl Quorum {
    /// Fails with `Unavailable` when this leader has not heard from a quorum for longer than
    /// the lease.
    pub fn check_lease(&self) -> Result<()> {
        let since_ack = self.raft.metrics().borrow().millis_since_quorum_ack;
        match since_ack {
            Some(millis) if Duration::from_millis(millis) > self.settings.quorum_lease() => {
                Err(Error::unavailable(format!(
                    "The cluster has lost its quorum: no majority of voters answered the leader for {millis} ms"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Awaits `work` (a Raft call that needs a quorum) for at most `timeout`, giving up with
    /// `Unavailable` as soon as the lease runs out: without a quorum the call would wait
    /// forever.
    pub async fn while_quorum<T>(
        &self,
        timeout: Duration,
        what: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        self.check_lease()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                _ = tokio::time::sleep(QUORUM_CHECK_INTERVAL) => {
                    self.check_lease()?;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::unavailable(format!(
                            "Timed out after {timeout:?} waiting for a quorum to {what}"
                        )));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, LogId};

    use super::*;

    const ME: NodeId = 1;
    const OTHER: NodeId = 2;

    fn sql(text: &str) -> Command {
        Command::Sql {
            sql: text.to_string(),
        }
    }

    fn entry(term: u64, node: NodeId, index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, node), index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// Registers a batch of `proposals` (one: `command` itself), after `settled`.
    fn propose(
        answers: &DirectAnswers,
        command: &Command,
        settled: bool,
        proposals: usize,
    ) -> Vec<oneshot::Receiver<Proposed>> {
        answers.settled(settled);
        let (replies, receivers) = (0..proposals).map(|_| oneshot::channel()).unzip();
        answers.wait_for(command.clone(), replies);
        receivers
    }

    fn applied() -> CommandResult {
        CommandResult::Applied { rows_affected: 0 }
    }

    #[test]
    fn the_state_machine_claims_a_batch_only_with_its_own_entry() {
        let answers = DirectAnswers::default();
        let command = sql("INSERT INTO t VALUES (1)");
        let mut replies = propose(&answers, &command, true, 1);

        // Another member's entry, or another command: not the batch.
        assert!(
            answers
                .claim(ME, &[entry(5, OTHER, 10, command.clone())])
                .is_none()
        );
        assert!(
            answers
                .claim(ME, &[entry(5, ME, 10, sql("SELECT 1"))])
                .is_none()
        );

        // Its entry, behind another one.
        let entries = [
            entry(6, ME, 11, sql("SELECT 1")),
            entry(6, ME, 12, command.clone()),
        ];
        let claimed = answers.claim(ME, &entries).expect("the batch's entry");
        assert_eq!(claimed.position, 1);
        assert!(
            answers.withdraw().is_none(),
            "claimed batches are not answered twice"
        );
        claimed.answer(applied());
        assert!(matches!(
            replies[0].try_recv(),
            Ok(Ok(Some((12, CommandResult::Applied { .. }))))
        ));
    }

    #[test]
    fn each_proposer_of_a_batch_gets_its_own_result() {
        let answers = DirectAnswers::default();
        let command = Command::Batch {
            commands: vec![
                sql("INSERT INTO t VALUES (1)"),
                sql("INSERT INTO t VALUES (2)"),
            ],
        };
        let mut replies = propose(&answers, &command, true, 2);
        let claimed = answers.claim(ME, &[entry(1, ME, 3, command)]).unwrap();
        let conflict = CommandResult::Conflict {
            reason: "row changed".to_string(),
        };
        claimed.answer(CommandResult::Batch {
            results: vec![applied(), conflict],
        });
        assert!(matches!(
            replies[0].try_recv(),
            Ok(Ok(Some((3, CommandResult::Applied { .. }))))
        ));
        assert!(matches!(
            replies[1].try_recv(),
            Ok(Ok(Some((3, CommandResult::Conflict { .. }))))
        ));
    }

    #[test]
    fn batches_are_claimed_only_after_one_that_openraft_answered() {
        let command = sql("INSERT INTO t VALUES (1)");
        let mine = [entry(5, ME, 7, command.clone())];
        // At first, entries from before a restart may still be applied, and one could carry
        // the same command (a transaction run again).
        let answers = DirectAnswers::default();
        answers.wait_for(command.clone(), vec![oneshot::channel().0]);
        assert!(answers.claim(ME, &mine).is_none());
        assert!(answers.withdraw().is_some(), "left to openraft's answer");

        // After a batch openraft answered, the next one is claimed.
        propose(&answers, &command, true, 1);
        assert!(answers.claim(ME, &mine).is_some());

        // After one given up on (timed out, quorum lost, not the leader), it is not.
        propose(&answers, &command, false, 1);
        assert!(answers.claim(ME, &mine).is_none());
    }
}
