//! The replicated database (DESIGN §4): SQLite state machines kept identical by a Raft log,
//! and serializable transactions on top.

pub mod identity;
mod node;
mod patch;
mod proposer;
pub mod raft;
pub mod schema;
pub mod sql_text;
pub mod tx;
pub(crate) mod upgrade;

pub use node::{
    Database, MAX_CONNECTIONS, PROPOSE_PATH, READ_INDEX_PATH, RaftSettings, SET_NODE_PATH,
};
pub use rusqlite::types::Value;
pub use tx::{ReadMode, Rows, Tx};
