//! The library's log events as a C callback: `mc_log_set`.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use microcluster_core::logging::{self, LogLevel, LogSink};

use crate::boundary::{self, string_lossy};
use crate::error::{Failure, mc_error, mc_result};

/// A log callback. `level` is 1 (error), 2 (warn), 3 (info), 4 (debug) or 5 (trace); `target`
/// names the module that logged (for example `microcluster::daemon`); `message` is the text.
/// Both strings are NUL-terminated UTF-8 valid during the call only. It runs on the library
/// thread that logged, possibly on several threads at once: it must be thread-safe, return
/// quickly and call no `mc_*` function.
pub type mc_log_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        level: c_int,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// The application's pointer, handed back to its own thread-safe callback.
struct Userdata(*mut c_void);

// SAFETY: `mc_log_set` requires the callback (the only user of the pointer) to be thread-safe.
unsafe impl Send for Userdata {}
// SAFETY: as above.
unsafe impl Sync for Userdata {}

impl Userdata {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Sends the library's log events of `max_level` (1 error … 5 trace) and more severe to
/// `callback` with `userdata`, replacing any callback set before; a NULL `callback` stops
/// sending them (nothing is printed then). Without a call, the library logs nothing.
///
/// The first call installs the process's `tracing` subscriber: it fails with `MC_ERR_CONFLICT`
/// if Rust code in the process installed another one. An invalid level is
/// `MC_ERR_INVALID_ARGUMENT`. `userdata` must stay valid until the callback is replaced or
/// removed and no event is being delivered (after `mc_log_set(NULL, …)` returns, events already
/// being delivered may still finish).
///
/// Thread-safety: any thread.
///
/// # Safety
/// `callback` is NULL or a function with the contract above; `err` as for `mc_app_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_log_set(
    callback: mc_log_fn,
    userdata: *mut c_void,
    max_level: c_int,
    err: *mut *mut mc_error,
) -> mc_result {
    let body = || {
        let level = LogLevel::from_number(i64::from(max_level)).map_err(Failure::from)?;
        let sink = callback.map(|callback| -> LogSink {
            let userdata = Userdata(userdata);
            Arc::new(move |level: LogLevel, target: &str, message: &str| {
                let target = string_lossy(target);
                let message = string_lossy(message);
                // SAFETY: the contract of `mc_log_set`; the strings live across the call.
                unsafe {
                    callback(
                        userdata.get(),
                        level as c_int,
                        target.as_ptr(),
                        message.as_ptr(),
                    )
                };
            })
        });
        logging::set_log_sink(sink, level).map_err(Failure::from)
    };
    // SAFETY: `err` is NULL or valid for a write, per the contract.
    unsafe { boundary::call(err, body) }
}
