//! The core REST resources, one file each, declaring their routes, access rules and handlers.

mod control;
mod ready;
mod root;
mod status;

use super::router::Endpoint;

/// Every core endpoint, in the order the router tries them.
pub(crate) fn all() -> Vec<Endpoint> {
    vec![
        root::endpoint(),
        status::endpoint(),
        ready::endpoint(),
        control::shutdown(),
    ]
}
