//! The REST API: listeners, the request pipeline, access control, the envelope and the
//! endpoints (one file per resource under `endpoints/`).

pub(crate) mod access;
pub(crate) mod endpoints;
pub(crate) mod envelope;
pub(crate) mod proxy;
pub(crate) mod router;
pub(crate) mod server;
pub(crate) mod tls;
pub(crate) mod websocket;

#[cfg(test)]
mod tests;
