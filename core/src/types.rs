//! Bodies of the REST API whose JSON field names are fixed by SPEC §5.5.

use serde::{Deserialize, Serialize};

/// `GET /core/1.0`: what a member says about itself, to anyone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// The member name; the host name before init.
    pub name: String,
    /// The member address; empty before init.
    pub address: String,
    /// The application version given to `start`.
    pub version: String,
    /// Whether start-up has finished.
    pub ready: bool,
    /// The API extension registry (SPEC §11.4).
    pub extensions: Vec<String>,
}

/// The zero time upstream uses for "never" (SPEC §5.5).
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// `POST /core/control`: bootstrap or join this member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Bootstrap a new cluster.
    #[serde(default)]
    pub bootstrap: bool,
    /// Configuration handed to the init hooks.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// The join token, to join an existing cluster.
    #[serde(default)]
    pub join_token: String,
    /// This member's address, `IP:port`.
    #[serde(default)]
    pub address: String,
    /// This member's name.
    #[serde(default)]
    pub name: String,
}

/// `POST /core/control/tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The name of the member the token is for.
    pub name: String,
    /// Validity in nanoseconds; 0 is forever.
    #[serde(default)]
    pub expire_after: i64,
}

/// A join token as listed (the secret is never shown again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The name of the member the token is for.
    pub name: String,
    /// Always empty (SPEC §6.2).
    pub token: String,
    /// RFC 3339, or [`NEVER`].
    pub expires_at: String,
}

/// A member's name, address and certificate (`ClusterMemberLocal`).
pub type ClusterMemberLocal = crate::trust::Remote;

/// A member as `GET /core/1.0/cluster` shows it, and the body of a join request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// The member name.
    pub name: String,
    /// The member address.
    pub address: String,
    /// The member's server certificate, PEM.
    pub certificate: String,
    /// `voter`, `stand-by`, `spare` or `PENDING`.
    #[serde(default)]
    pub role: String,
    /// The internal schema version the member runs.
    #[serde(default)]
    pub schema_internal_version: u64,
    /// The application schema version the member runs.
    #[serde(default)]
    pub schema_external_version: u64,
    /// RFC 3339, or [`NEVER`].
    #[serde(default = "never")]
    pub last_heartbeat: String,
    /// `ONLINE`, `UNREACHABLE`, `UPGRADING` or `NEEDS UPGRADE`.
    #[serde(default)]
    pub status: String,
    /// The member's API extensions.
    #[serde(default, deserialize_with = "string_or_list")]
    pub extensions: Vec<String>,
    /// The join secret; read only in join requests, always empty in answers.
    #[serde(default)]
    pub secret: String,
}

fn never() -> String {
    NEVER.to_string()
}

/// Accepts a bare string as a one-element list (SPEC §5.5).
fn string_or_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null,
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
        OneOrMany::Null => Vec::new(),
    })
}

/// A certificate, its key and an optional CA, PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
    /// The CA, or empty.
    #[serde(default)]
    pub ca: String,
}

/// The admission answer to a joiner (SPEC §7.3 A6).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The cluster certificate.
    pub cluster_cert: String,
    /// The cluster key.
    pub cluster_key: String,
    /// The members the joiner must trust (without itself).
    pub cluster_members: Vec<ClusterMemberLocal>,
    /// Extension server certificates, by server name.
    #[serde(rename = "ClusterAdditionalCerts", default)]
    pub cluster_additional_certs: std::collections::BTreeMap<String, KeyPair>,
    /// The member the joiner continues with (the leader).
    pub trusted_member: ClusterMemberLocal,
}
