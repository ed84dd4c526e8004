//! The replicated database (DESIGN §4): SQLite state machines kept identical by a Raft log.

pub mod raft;
