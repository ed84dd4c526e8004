//! Raft for the replicated database: the type configuration, the commands carried in the log,
//! the durable log store and the SQLite state machine.

// openraft fixes the error type of the storage traits (`StorageError`), and it is large.
#![allow(clippy::result_large_err)]

use std::fmt;

use serde::{Deserialize, Serialize};

mod changeset;
mod legacy_log;
pub mod local_view;
pub mod log_store;
pub mod network;
pub(crate) mod recovery;
mod segments;
pub(crate) mod sqlite;
pub mod state_machine;
mod unsynced;

#[cfg(test)]
mod openraft_patch_tests;
#[cfg(test)]
mod tests;

/// A member as Raft knows it. Raft membership is the single source of truth of who is in the
/// cluster (SPEC §8.4); the members table and the truststores are derived from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member name.
    pub name: String,
    /// The member address, `IP:port`.
    pub address: String,
    /// The member's server certificate, PEM.
    pub certificate: String,
    /// The failure domain used for role placement.
    pub failure_domain: u64,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.address)
    }
}

/// A write proposed to the log. Applying it is deterministic on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// SQL text (DDL and SQL-API statements), run as it is.
    Sql {
        /// The statements.
        sql: String,
    },
    /// The changes of a transaction executed on some member, captured as a SQLite changeset.
    Changeset {
        /// The applied index the transaction read from.
        base: u64,
        /// The tables the transaction read.
        read_tables: Vec<String>,
        /// The SQLite changeset (session extension format). Encoded as one byte string (the
        /// same `postcard` bytes as a sequence of `u8`, without a call per byte).
        #[serde(with = "serde_bytes")]
        changeset: Vec<u8>,
    },
    /// Commands proposed together (group commit): applied in order, each on its own, as if
    /// each were an entry at the batch's index.
    Batch {
        /// The commands, never batches themselves.
        commands: Vec<Command>,
    },
}

/// The outcome of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The entry was applied (or carried no command).
    Applied {
        /// Rows changed by a `Sql` command.
        rows_affected: u64,
    },
    /// The entry was a no-op because it conflicted with a write after its base; the
    /// proposer's transaction is retried.
    Conflict {
        /// What conflicted.
        reason: String,
    },
    /// The command failed deterministically (for example a constraint violation); nothing of
    /// it was applied.
    Failed {
        /// The SQLite error.
        message: String,
    },
    /// The results of a [`Command::Batch`], in order.
    Batch {
        /// One result per command.
        results: Vec<CommandResult>,
    },
}

openraft::declare_raft_types!(
    /// The Raft types of the replicated database.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        Node = MemberNode,
        SnapshotData = tokio::fs::File,
);

/// The node id of a member in Raft.
pub type NodeId = u64;

/// A storage error of our Raft types.
pub type StorageError = openraft::StorageError<NodeId>;
