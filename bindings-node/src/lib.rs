//! Node binding (napi-rs). The addon arrives with issue 8; until then this crate only links the core.
