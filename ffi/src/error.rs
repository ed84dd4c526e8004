//! Result codes and `mc_error`: the one table from core's `ErrorKind` to C codes, and the error
//! objects handed to C through `mc_error **err` out-parameters.

use std::ffi::{CString, c_char};

use microcluster_core::{Error, ErrorKind};

use crate::boundary::{self, string_lossy};

/// The result of every fallible `mc_*` function. The numbers are fixed: new codes are only ever
/// added, and a retired code stays reserved.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mc_result {
    /// Success.
    MC_OK = 0,
    /// A required pointer argument was NULL.
    MC_ERR_NULL_ARGUMENT = 1,
    /// A string argument was not valid UTF-8.
    MC_ERR_INVALID_UTF8 = 2,
    /// Bad input: invalid JSON, failed validation, an SQL error (HTTP 400).
    MC_ERR_INVALID_ARGUMENT = 3,
    /// Unknown record, path or method (HTTP 404).
    MC_ERR_NOT_FOUND = 4,
    /// The caller is not trusted for this operation (HTTP 403).
    MC_ERR_FORBIDDEN = 5,
    /// A transaction conflict that persisted after the library's retries, or a state that
    /// conflicts with the request such as a daemon already running (HTTP 409).
    MC_ERR_CONFLICT = 6,
    /// The daemon or database is not available: not started, not ready, shutting down
    /// (HTTP 503).
    MC_ERR_UNAVAILABLE = 7,
    /// An operation did not finish within its deadline (HTTP 504).
    MC_ERR_TIMEOUT = 8,
    /// A blocking function was called from a library thread (a hook or transaction
    /// callback), where waiting would deadlock.
    MC_ERR_WOULD_BLOCK = 9,
    /// Anything else (HTTP 500).
    MC_ERR_INTERNAL = 10,
    /// The library panicked; the call had no effect that can be relied upon.
    MC_ERR_PANIC = 11,
    /// A request body was larger than the endpoint accepts (HTTP 413).
    MC_ERR_PAYLOAD_TOO_LARGE = 12,
    /// The endpoint has no handler for this method (HTTP 501).
    MC_ERR_NOT_IMPLEMENTED = 13,
}

/// The one table between core's error kinds and C codes. `MC_ERR_NULL_ARGUMENT`,
/// `MC_ERR_INVALID_UTF8` and `MC_ERR_PANIC` are produced by this crate only.
const KINDS: [(ErrorKind, mc_result); 10] = [
    (
        ErrorKind::InvalidArgument,
        mc_result::MC_ERR_INVALID_ARGUMENT,
    ),
    (ErrorKind::NotFound, mc_result::MC_ERR_NOT_FOUND),
    (ErrorKind::Forbidden, mc_result::MC_ERR_FORBIDDEN),
    (ErrorKind::Conflict, mc_result::MC_ERR_CONFLICT),
    (ErrorKind::Unavailable, mc_result::MC_ERR_UNAVAILABLE),
    (ErrorKind::Timeout, mc_result::MC_ERR_TIMEOUT),
    (ErrorKind::WouldBlock, mc_result::MC_ERR_WOULD_BLOCK),
    (ErrorKind::Internal, mc_result::MC_ERR_INTERNAL),
    (
        ErrorKind::PayloadTooLarge,
        mc_result::MC_ERR_PAYLOAD_TOO_LARGE,
    ),
    (ErrorKind::NotImplemented, mc_result::MC_ERR_NOT_IMPLEMENTED),
];

impl mc_result {
    /// The code of a core error kind (`MC_ERR_INTERNAL` for kinds newer than this table).
    pub(crate) fn of_kind(kind: ErrorKind) -> mc_result {
        KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(mc_result::MC_ERR_INTERNAL, |(_, code)| *code)
    }

    /// The core error kind a code stands for when a C callback reports it.
    fn kind(self) -> ErrorKind {
        match self {
            mc_result::MC_ERR_NULL_ARGUMENT | mc_result::MC_ERR_INVALID_UTF8 => {
                ErrorKind::InvalidArgument
            }
            code => KINDS
                .iter()
                .find(|(_, c)| *c == code)
                .map_or(ErrorKind::Internal, |(kind, _)| *kind),
        }
    }

    /// The error code with the number `code`, if there is one (`MC_OK` is not an error).
    fn error_from_raw(code: i32) -> Option<mc_result> {
        use mc_result::*;
        [
            MC_ERR_NULL_ARGUMENT,
            MC_ERR_INVALID_UTF8,
            MC_ERR_INVALID_ARGUMENT,
            MC_ERR_NOT_FOUND,
            MC_ERR_FORBIDDEN,
            MC_ERR_CONFLICT,
            MC_ERR_UNAVAILABLE,
            MC_ERR_TIMEOUT,
            MC_ERR_WOULD_BLOCK,
            MC_ERR_INTERNAL,
            MC_ERR_PANIC,
            MC_ERR_PAYLOAD_TOO_LARGE,
            MC_ERR_NOT_IMPLEMENTED,
        ]
        .into_iter()
        .find(|c| u32::try_from(code) == Ok(*c as u32))
    }
}

/// Why an `mc_*` call failed: its code and the core error behind it (whose kind and HTTP status
/// travel on when a callback's error goes back into core).
#[derive(Debug)]
pub(crate) struct Failure {
    code: mc_result,
    error: Error,
}

impl Failure {
    /// A failure with `code`, the core kind that code stands for, and `message`.
    pub(crate) fn new(code: mc_result, message: impl Into<String>) -> Failure {
        Failure {
            code,
            error: Error::new(code.kind(), message),
        }
    }

    /// The code of this failure.
    pub(crate) fn code(&self) -> mc_result {
        self.code
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            code: mc_result::of_kind(error.kind()),
            error,
        }
    }
}

/// An error reported by the library or by a callback: a code and a message. Free it with
/// `mc_error_free`.
pub struct mc_error {
    failure: Failure,
    message: CString,
}

impl mc_error {
    /// Boxes `failure` for C.
    pub(crate) fn boxed(failure: Failure) -> *mut mc_error {
        let message = string_lossy(failure.error.message());
        Box::into_raw(Box::new(mc_error { failure, message }))
    }

    /// Takes back an error a callback left in its `err` slot, or makes one up from the
    /// callback's return value `returned` when it left none. `what` names the callback.
    ///
    /// # Safety
    /// `slot` is NULL or an `mc_error` of this library that nothing else owns.
    pub(crate) unsafe fn into_core(slot: *mut mc_error, returned: i32, what: &str) -> Error {
        if slot.is_null() {
            return Error::internal(format!(
                "{what} failed (returned {returned}) without setting an error"
            ));
        }
        // SAFETY: per the contract, `slot` came from `mc_error::boxed` and is owned by us now.
        let error = unsafe { Box::from_raw(slot) };
        error.failure.error
    }
}

/// Writes a failure to an optional `mc_error **err` out-parameter (nothing when `err` is NULL).
///
/// # Safety
/// `err` is NULL or valid for a write of one pointer.
pub(crate) unsafe fn write_error(err: *mut *mut mc_error, failure: Failure) {
    if !err.is_null() {
        // SAFETY: checked non-NULL; valid for writes per the contract.
        unsafe { err.write(mc_error::boxed(failure)) };
    }
}

/// The code of `error`; `MC_ERR_NULL_ARGUMENT` when `error` is NULL.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_error_code(error: *const mc_error) -> mc_result {
    boundary::guard(mc_result::MC_ERR_PANIC, || {
        // SAFETY: per the contract.
        match unsafe { error.as_ref() } {
            Some(error) => error.failure.code(),
            None => mc_result::MC_ERR_NULL_ARGUMENT,
        }
    })
}

/// The message of `error`, NUL-terminated UTF-8, owned by `error`: valid until
/// `mc_error_free(error)`. Returns NULL when `error` is NULL.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_error_message(error: *const mc_error) -> *const c_char {
    boundary::guard(std::ptr::null(), || {
        // SAFETY: per the contract.
        unsafe { error.as_ref() }.map_or(std::ptr::null(), |error| error.message.as_ptr())
    })
}

/// Frees an error. NULL is ignored. The error must not be used afterwards (the library cannot
/// detect a use after free).
///
/// Thread-safety: any thread.
///
/// # Safety
/// `error` is NULL or an error from this library that has not been freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_error_free(error: *mut mc_error) {
    boundary::guard((), || {
        if !error.is_null() {
            // SAFETY: per the contract, `error` came from `mc_error::boxed`.
            drop(unsafe { Box::from_raw(error) });
        }
    })
}

/// For callbacks (hooks, transaction functions): stores an error with `code` and `message` in
/// the callback's `err` out-parameter, replacing (and freeing) an error already there. The
/// callback then returns non-zero, and the error reaches the caller of the operation that ran
/// the callback — with a hook that runs in another member, through that member's REST API, so
/// the caller sees the message and the code's HTTP class.
///
/// `code` is one of the `MC_ERR_*` values; any other number (including `MC_OK`) is stored as
/// `MC_ERR_INTERNAL`. `message` is NUL-terminated UTF-8 (invalid bytes are replaced) and is
/// copied; NULL stores an empty message. Does nothing when `err` is NULL.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `err` is NULL or points to NULL or to an error from this library; `message` is NULL or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_error_set(err: *mut *mut mc_error, code: i32, message: *const c_char) {
    boundary::guard((), || {
        if err.is_null() {
            return;
        }
        let code = mc_result::error_from_raw(code).unwrap_or(mc_result::MC_ERR_INTERNAL);
        // SAFETY: per the contract.
        let message = unsafe { boundary::str_lossy(message) };
        // SAFETY: `err` is non-NULL and points to NULL or to one of our errors.
        unsafe {
            mc_error_free(err.read());
            write_error(err, Failure::new(code, message));
        }
    })
}

/// Runs `f` with a fresh `mc_error *` slot for a C callback and turns the callback's return
/// value and slot into a core result. `what` names the callback in made-up messages.
pub(crate) fn callback_result(
    what: &str,
    f: impl FnOnce(*mut *mut mc_error) -> i32,
) -> Result<(), Error> {
    let mut slot: *mut mc_error = std::ptr::null_mut();
    let returned = f(&mut slot);
    if returned == 0 {
        // SAFETY: the slot holds NULL or an error the callback set; we own it.
        unsafe { mc_error_free(slot) };
        return Ok(());
    }
    // SAFETY: as above.
    Err(unsafe { mc_error::into_core(slot, returned, what) })
}
