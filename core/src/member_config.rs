//! `daemon.yaml`: the member's name, address, extension-listener addresses and failure domain
//! (SPEC §2.2). Every key is always written.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state_dir::write_atomic;
use crate::{Error, Result};

/// The listener address of one extension server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// `IP:port`, or empty for "no dedicated listener".
    #[serde(default)]
    pub address: String,
}

/// The content of `daemon.yaml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberConfig {
    /// The member name (an FQDN).
    pub name: String,
    /// The core listener address, `IP:port`.
    pub address: String,
    /// Extension server name → listener.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
    /// Failure domain used for role placement.
    #[serde(rename = "failure-domain", default)]
    pub failure_domain: u64,
}

impl MemberConfig {
    /// Reads `daemon.yaml` at `path`.
    pub fn load(path: &Path) -> Result<MemberConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| Error::from(err).context(format!("Failed to read {path:?}: ")))?;
        serde_yaml_ng::from_str(&text)
            .map_err(|err| Error::internal(format!("Failed to parse {path:?}: {err}")))
    }

    /// Writes `daemon.yaml` at `path` atomically, mode 0644.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_yaml_ng::to_string(self)
            .map_err(|err| Error::internal(format!("Failed to encode daemon.yaml: {err}")))?;
        write_atomic(path, text.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.yaml");
        let mut config = MemberConfig {
            name: "c1".into(),
            address: "127.0.0.1:9001".into(),
            ..Default::default()
        };
        config.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "name: c1\naddress: 127.0.0.1:9001\nservers: {}\nfailure-domain: 0\n"
        );
        config.servers.insert(
            "metrics.example.com".into(),
            ServerConfig {
                address: "127.0.0.1:9443".into(),
            },
        );
        config.failure_domain = 9;
        config.save(&path).unwrap();
        assert_eq!(MemberConfig::load(&path).unwrap(), config);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("failure-domain: 9\n")
        );
    }
}
