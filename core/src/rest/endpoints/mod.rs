//! The core REST resources, one file each, declaring their routes, access rules and handlers.

mod certificates;
mod cluster;
mod control;
mod daemon_config;
mod database;
mod hooks;
mod raft;
mod ready;
mod root;
mod sql;
mod status;

use super::router::Endpoint;

/// Every core endpoint, in the order the router tries them.
pub(crate) fn all() -> Vec<Endpoint> {
    let mut endpoints = vec![
        root::endpoint(),
        status::endpoint(),
        ready::endpoint(),
        control::shutdown(),
        control::init(),
        control::tokens(),
        cluster::members(),
        certificates::endpoint(),
        daemon_config::servers(),
        daemon_config::config(),
        cluster::heartbeat(),
        cluster::member(),
        cluster::reset(),
        cluster::truststore_entry(),
        cluster::token(),
        cluster::admission(),
        cluster::raft_join(),
        cluster::truststore(),
        sql::endpoint(),
        database::endpoint(),
        hooks::endpoint(),
    ];
    endpoints.extend(raft::endpoints());
    endpoints
}
