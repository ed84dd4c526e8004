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
