//! The member's persisted Raft identity (`database/raft_identity.yaml`): its Raft node id,
//! drawn at random when the member bootstraps or joins. Its presence is half of what makes a
//! member initialised (SPEC §2.3).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::raft::NodeId;
use crate::state_dir::write_atomic;
use crate::{Error, Result};

#[derive(Serialize, Deserialize)]
struct RaftIdentity {
    id: NodeId,
}

/// Draws a new node id and persists it at `path`.
pub fn create(path: &Path) -> Result<NodeId> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::internal("Failed to draw a Raft node id"))?;
    // Non-zero, and within SQLite's signed integers.
    let id = (u64::from_le_bytes(bytes) >> 1).max(1);
    let yaml = serde_yaml_ng::to_string(&RaftIdentity { id })
        .map_err(|err| Error::internal(format!("Failed to encode the Raft identity: {err}")))?;
    write_atomic(path, yaml.as_bytes(), 0o600)?;
    Ok(id)
}

/// The node id persisted at `path`.
pub fn load(path: &Path) -> Result<NodeId> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| Error::from(err).context(format!("Failed to read {}: ", path.display())))?;
    let identity: RaftIdentity = serde_yaml_ng::from_str(&text).map_err(|err| {
        Error::internal(format!(
            "Invalid Raft identity in {}: {err}",
            path.display()
        ))
    })?;
    Ok(identity.id)
}
