//! Core errors as Python exceptions: the one table from `ErrorKind` to the classes of
//! `microcluster.errors`, and the exceptions of Python hooks carried through core.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use microcluster::{Error, ErrorKind, sync};
use pyo3::exceptions::{PyBaseException, PyRuntimeError};
use pyo3::prelude::*;

/// The pure-Python module defining the exception classes.
const ERRORS_MODULE: &str = "microcluster.errors";

/// Marks a core error that a Python hook raised: `[hook-error:<pid>:<id>]`.
const HOOK_MARK: &str = "[hook-error:";

/// How many hook exceptions are kept for their callers to pick up as `__cause__`.
const KEPT_HOOK_EXCEPTIONS: usize = 32;

/// Hook exceptions by id, awaiting the caller the error reaches (oldest dropped first).
static HOOK_EXCEPTIONS: Mutex<VecDeque<(u64, Py<PyBaseException>)>> = Mutex::new(VecDeque::new());

/// The exception class that stands for `kind` (the one mapping table).
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "InvalidArgumentError",
        ErrorKind::PayloadTooLarge => "PayloadTooLargeError",
        ErrorKind::NotImplemented => "NotImplementedError",
        ErrorKind::Forbidden => "ForbiddenError",
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::Conflict => "ConflictError",
        ErrorKind::Unavailable => "UnavailableError",
        ErrorKind::Timeout => "TimeoutError",
        ErrorKind::WouldBlock => "WouldBlockError",
        ErrorKind::Internal => "InternalError",
        _ => "Error",
    }
}

/// Splits a hook mark off `message`: the message without it and the mark's `(pid, id)`.
fn split_hook_mark(message: &str) -> Option<(String, Option<(u32, u64)>)> {
    let start = message.find(HOOK_MARK)?;
    let rest = &message[start + HOOK_MARK.len()..];
    let end = rest.find(']')?;
    let ids = rest[..end]
        .split_once(':')
        .and_then(|(pid, id)| Some((pid.parse().ok()?, id.parse().ok()?)));
    let cleaned = format!("{}{}", &message[..start], &rest[end + 1..]);
    Some((cleaned.trim_end().to_string(), ids))
}

/// The exception the hook with this mark raised in this process, if still kept.
fn take_hook_exception(py: Python<'_>, ids: Option<(u32, u64)>) -> Option<Bound<'_, PyAny>> {
    let (pid, id) = ids?;
    if pid != std::process::id() {
        return None;
    }
    let mut kept = sync::lock(&HOOK_EXCEPTIONS);
    let at = kept.iter().position(|(kept_id, _)| *kept_id == id)?;
    kept.remove(at)
        .map(|(_, exception)| exception.into_bound(py).into_any())
}

/// Converts a core error into the matching `microcluster` exception, with `.code` set; a
/// Python hook's failure becomes `HookError` whose `__cause__` is the hook's exception when
/// that hook ran in this process.
pub(crate) fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let (class, message, cause) = match split_hook_mark(err.message()) {
        Some((message, ids)) => ("HookError", message, take_hook_exception(py, ids)),
        None => (class_name(err.kind()), err.message().to_string(), None),
    };
    let build = || -> PyResult<PyErr> {
        let exception = py
            .import(ERRORS_MODULE)?
            .getattr(class)?
            .call1((&message,))?;
        exception.setattr("code", err.kind().as_str())?;
        let exception = PyErr::from_value(exception);
        if let Some(cause) = cause {
            exception.set_cause(py, Some(PyErr::from_value(cause)));
        }
        Ok(exception)
    };
    build().unwrap_or_else(|_| PyRuntimeError::new_err(message.clone()))
}

/// The core error for an exception a Python hook raised: its message names the hook and the
/// exception (`pre-join hook raised ValueError: …`); the exception is kept for the caller.
pub(crate) fn hook_failure(py: Python<'_>, hook: &str, err: PyErr) -> Error {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let type_name = err
        .get_type(py)
        .name()
        .map_or_else(|_| "Exception".to_string(), |name| name.to_string());
    let message = format!(
        "{hook} hook raised {type_name}: {} {HOOK_MARK}{}:{id}]",
        err.value(py),
        std::process::id()
    );
    let mut kept = sync::lock(&HOOK_EXCEPTIONS);
    if kept.len() == KEPT_HOOK_EXCEPTIONS {
        kept.pop_front();
    }
    kept.push_back((id, err.into_value(py)));
    Error::internal(message)
}
