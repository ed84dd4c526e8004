//! Node binding of microcluster: the native addon behind the `microcluster` npm package.
//!
//! Thin by design: it converts JavaScript values to core's types and back, and returns a
//! Promise for every call that may touch the network or run a hook. Futures run on core's one
//! runtime ([`microcluster::runtime`]) and settle napi deferreds, so the addon never starts a
//! runtime of its own and never blocks the event loop. The hand-written `index.js` facade wraps
//! this addon into the public API typed by `index.d.ts`.

mod app;
mod endpoints;
mod error;
mod hooks;
/// `setLogHandler`: public so that the function exported to JavaScript counts as used in test
/// builds too.
pub mod log;
mod tx;
