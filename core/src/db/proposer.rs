//! The leader's side of writes and reads: group commit of concurrent proposals, and the
//! quorum lease that turns "no quorum" into a prompt `Unavailable`.
//!
//! openraft 0.9 appends (and fsyncs) every `client_write` on its own. To share one log
//! append — one fsync, one replication round trip, one state machine transaction on every
//! member — between concurrent transactions, proposals are queued and a background task sends
//! whatever has gathered as one `Command::Batch` entry. Under load the batches grow by
//! themselves while the previous one is being committed.

use std::time::Duration;

use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::node::RaftSettings;
use super::raft::{Command, CommandResult, TypeConfig};
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
    pub fn start(raft: Raft<TypeConfig>, settings: RaftSettings) -> Proposer {
        let quorum = Quorum { raft, settings };
        let (queue, proposals) = mpsc::unbounded_channel();
        tokio::spawn(run_batches(quorum.clone(), proposals));
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
async fn run_batches(quorum: Quorum, mut proposals: mpsc::UnboundedReceiver<Proposal>) {
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
        commit(&quorum, batch).await;
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

/// Commits one batch and answers each of its proposers.
async fn commit(quorum: &Quorum, batch: Vec<Proposal>) {
    let (commands, replies): (Vec<Command>, Vec<_>) = batch
        .into_iter()
        .map(|proposal| (proposal.command, proposal.reply))
        .unzip();
    let (single, command) = match <[Command; 1]>::try_from(commands) {
        Ok([one]) => (true, one),
        Err(commands) => (false, Command::Batch { commands }),
    };
    let written = quorum
        .while_quorum(
            BATCH_TIMEOUT,
            "commit the change",
            quorum.raft.client_write(command),
        )
        .await;
    let outcomes: Vec<Proposed> = match written {
        Err(err) => {
            let err = err.context("The change may still be applied later: ");
            replies.iter().map(|_| Err(err.clone())).collect()
        }
        Ok(Ok(response)) => {
            let index = response.log_id.index;
            match (single, response.data) {
                (true, result) => vec![Ok(Some((index, result)))],
                (false, CommandResult::Batch { results }) if results.len() == replies.len() => {
                    results.into_iter().map(|r| Ok(Some((index, r)))).collect()
                }
                (false, other) => {
                    let err = Error::internal(format!("Unexpected result of a batch: {other:?}"));
                    replies.iter().map(|_| Err(err.clone())).collect()
                }
            }
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            replies.iter().map(|_| Ok(None)).collect()
        }
        Ok(Err(err)) => {
            let err = Error::unavailable(format!("Database is offline: {err}"));
            replies.iter().map(|_| Err(err.clone())).collect()
        }
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
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
