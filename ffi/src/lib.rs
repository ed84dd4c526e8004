//! The C ABI of microcluster: `libmicrocluster.so` / `libmicrocluster.a` and
//! `include/microcluster.h` (generated from this crate by cbindgen).
//!
//! Conventions (rustls-ffi style, see the header's comments for each function):
//! - opaque handles (`mc_app`, `mc_state`, `mc_tx`, `mc_error`) and `mc_<object>_<verb>`
//!   functions;
//! - every fallible function returns an `mc_result` with fixed numbers, writes its
//!   out-parameters only on success, and on failure stores an `mc_error` (code + message) in
//!   its optional `mc_error **err`;
//! - strings in are NUL-terminated UTF-8 and copied; strings out are freed with
//!   `mc_string_free`; structured results are JSON strings;
//! - a NULL required argument is `MC_ERR_NULL_ARGUMENT`, a panic is `MC_ERR_PANIC`, and a
//!   blocking call from a callback thread is `MC_ERR_WOULD_BLOCK` instead of a deadlock.
//!
//! Callbacks (hooks, transaction functions) run on library threads and take `void *userdata`
//! first. Handles cannot be checked for use after free: once freed, a handle must not be passed
//! again.

#![allow(non_camel_case_types)]

mod app;
mod boundary;
mod error;
mod hooks;
mod log;
mod tx;

use std::ffi::c_char;

pub use app::{
    mc_app, mc_app_cluster_members, mc_app_free, mc_app_join_cluster, mc_app_join_tokens,
    mc_app_local_members, mc_app_new, mc_app_new_cluster, mc_app_new_join_token, mc_app_query,
    mc_app_ready, mc_app_recover, mc_app_remove_cluster_member, mc_app_revoke_join_token,
    mc_app_sql, mc_app_start, mc_app_status, mc_app_stop, mc_app_wait,
};
pub use boundary::{mc_string_free, mc_string_new};
pub use error::{
    mc_error, mc_error_code, mc_error_free, mc_error_message, mc_error_set, mc_result,
};
pub use hooks::{mc_endpoint_fn, mc_hook_fn, mc_hooks, mc_state, mc_state_address, mc_state_name};
pub use log::{mc_log_fn, mc_log_set};
pub use tx::{
    mc_app_transaction, mc_state_transaction, mc_tx, mc_tx_execute, mc_tx_fn, mc_tx_query,
};

/// The library's version, `"MAJOR.MINOR.PATCH"`, static (never freed). Compare with
/// `MC_VERSION` to detect a header/library mismatch.
///
/// Thread-safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn mc_version() -> *const c_char {
    boundary::guard(std::ptr::null(), || {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    })
}

/// The library's version as `(MAJOR << 16) | (MINOR << 8) | PATCH`, like `MC_VERSION_NUMBER`.
///
/// Thread-safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn mc_version_number() -> u32 {
    boundary::guard(0, || {
        let part = |text: &str| text.parse::<u32>().unwrap_or(0);
        (part(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
            | (part(env!("CARGO_PKG_VERSION_MINOR")) << 8)
            | part(env!("CARGO_PKG_VERSION_PATCH"))
    })
}
