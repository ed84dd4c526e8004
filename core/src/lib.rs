//! microcluster: turn a program into a member of a secure, self-managing cluster.
//!
//! Members talk over one mutually-authenticated HTTPS port each (certificate pinning, no CA) and
//! are administered through a unix control socket in their state directory. [`App`] is the
//! entry point: create it for a state directory, [`App::start`] its daemon, and talk to it with
//! [`App::status`], [`App::ready`] and [`App::local_client`].
//!
//! See `SPEC.md` for the behaviour and `DESIGN.md` for the architecture.

pub mod api_extensions;
mod app;
pub mod certs;
pub mod client;
mod control_socket;
mod daemon;
pub mod db;
pub mod error;
pub mod extensions;
pub mod hooks;
pub mod logging;
pub mod member_config;
pub mod membership;
mod rest;
pub mod runtime;
mod spawned;
pub mod state_dir;
pub mod sync;
pub mod token;
pub mod trust;
pub mod types;
pub mod validate;

#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;

pub use app::{App, Args, DEFAULT_HEARTBEAT_INTERVAL, DaemonArgs};
pub use client::Client;
pub use daemon::DatabaseState;
pub use db::{ReadMode, Rows, Tx, Value};
pub use error::{Error, ErrorKind, Result};
pub use hooks::{
    BlockingHooks, HookEvent, HookFuture, HookGate, HookSet, Hooks, InitConfig, RoleChange, State,
};
pub use spawned::{DaemonSlot, Spawned};
pub use types::{ClusterMember, Server, TokenRecord};
