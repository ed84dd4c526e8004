//! What every export goes through: the panic boundary, argument conversion (pointers, strings,
//! JSON) and out-parameters written only on success.

use std::any::Any;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

use microcluster_core::error::panic_message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Failure, mc_error, mc_result, write_error};

/// The one panic boundary: runs `f`, or returns `Err` with the panic's message.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|payload: Box<dyn Any + Send>| panic_message(payload.as_ref()))
}

/// The body of every fallible export: runs `f` behind the panic boundary and reports its
/// failure as a code and, when `err` is not NULL, an `mc_error`.
///
/// # Safety
/// `err` is NULL or valid for a write of one pointer.
pub(crate) unsafe fn call(
    err: *mut *mut mc_error,
    f: impl FnOnce() -> Result<(), Failure>,
) -> mc_result {
    let failure = match catch(f) {
        Ok(Ok(())) => return mc_result::MC_OK,
        Ok(Err(failure)) => failure,
        Err(panic) => Failure::new(
            mc_result::MC_ERR_PANIC,
            format!("The library panicked: {panic}"),
        ),
    };
    let code = failure.code();
    // SAFETY: per the contract.
    unsafe { write_error(err, failure) };
    code
}

/// The body of every export that cannot fail: runs `f` behind the panic boundary, returning
/// `default` on a panic.
pub(crate) fn guard<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch(f).unwrap_or(default)
}

/// A required pointer argument as a reference; NULL is `MC_ERR_NULL_ARGUMENT` naming `name`.
///
/// # Safety
/// `ptr` is NULL or valid for reads for `'a`.
pub(crate) unsafe fn arg<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: per the contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(name))
}

/// A required mutable pointer argument; NULL is `MC_ERR_NULL_ARGUMENT` naming `name`.
///
/// # Safety
/// `ptr` is NULL or valid for reads and writes for `'a`, and not aliased.
pub(crate) unsafe fn arg_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: per the contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| null(name))
}

/// The failure for a NULL required argument `name`.
pub(crate) fn null(name: &str) -> Failure {
    Failure::new(
        mc_result::MC_ERR_NULL_ARGUMENT,
        format!("Argument {name} is NULL"),
    )
}

/// A required string argument: NUL-terminated UTF-8.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|err| {
        Failure::new(
            mc_result::MC_ERR_INVALID_UTF8,
            format!("Argument {name} is not valid UTF-8: {err}"),
        )
    })
}

/// JSON text decoded into `T`; bad JSON is `MC_ERR_INVALID_ARGUMENT` naming the argument.
pub(crate) fn parse_json<T: DeserializeOwned>(text: &str, name: &str) -> Result<T, Failure> {
    serde_json::from_str(text)
        .map_err(|err| invalid(format!("Argument {name} is not valid: {err}")))
}

/// An optional JSON argument decoded into `T`; NULL gives `T::default()`.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn json_arg<T: DeserializeOwned + Default>(
    ptr: *const c_char,
    name: &str,
) -> Result<T, Failure> {
    if ptr.is_null() {
        return Ok(T::default());
    }
    // SAFETY: per the contract.
    parse_json(unsafe { str_arg(ptr, name) }?, name)
}

/// An `MC_ERR_INVALID_ARGUMENT` failure.
pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(mc_result::MC_ERR_INVALID_ARGUMENT, message)
}

/// A string for C; interior NUL bytes (which C cannot see past) become U+FFFD.
pub(crate) fn string_lossy(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// A string from C, copied; NULL is empty and invalid UTF-8 is replaced.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string.
pub(crate) unsafe fn str_lossy(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: per the contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// The JSON text of `value`.
pub(crate) fn to_json(value: &impl Serialize) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(|err| {
        Failure::new(
            mc_result::MC_ERR_INTERNAL,
            format!("Failed to encode the result as JSON: {err}"),
        )
    })
}

/// A required out-parameter, checked up front and written only once the call has succeeded.
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// Checks `ptr`; NULL is `MC_ERR_NULL_ARGUMENT` naming `name`.
    ///
    /// # Safety
    /// `ptr` is NULL or valid for a write of one `T` until [`Out::write`].
    pub(crate) unsafe fn new(ptr: *mut T, name: &str) -> Result<Out<T>, Failure> {
        NonNull::new(ptr).map(Out).ok_or_else(|| null(name))
    }

    /// Checks an optional out-parameter: `None` when `ptr` is NULL.
    ///
    /// # Safety
    /// As [`Out::new`].
    pub(crate) unsafe fn optional(ptr: *mut T) -> Option<Out<T>> {
        NonNull::new(ptr).map(Out)
    }

    /// Writes the result; the last step of a successful call.
    pub(crate) fn write(self, value: T) -> Result<(), Failure> {
        // SAFETY: checked non-NULL and valid for writes per `Out::new`'s contract.
        unsafe { self.0.as_ptr().write(value) };
        Ok(())
    }
}

impl Out<*mut c_char> {
    /// Writes `text` as a string the caller frees with `mc_string_free`.
    pub(crate) fn write_string(self, text: &str) -> Result<(), Failure> {
        self.write(string_lossy(text).into_raw())
    }

    /// Writes the JSON of `value` as a string the caller frees with `mc_string_free`.
    pub(crate) fn write_json(self, value: &impl Serialize) -> Result<(), Failure> {
        let json = to_json(value)?;
        self.write_string(&json)
    }
}

/// The `void *userdata` of a C callback. C promises (by the documented contract of every
/// function taking one) that it may be used from any thread, so it is `Send` and `Sync`.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: the header documents that userdata and callbacks are used from library threads.
unsafe impl Send for UserData {}
// SAFETY: as above; callbacks may run concurrently, as documented.
unsafe impl Sync for UserData {}

/// Frees a string returned by the library. NULL is ignored. Strings from elsewhere (libc
/// `malloc`) must not be passed.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `s` is NULL or a string returned by this library that has not been freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_string_free(s: *mut c_char) {
    guard((), || {
        if !s.is_null() {
            // SAFETY: per the contract, `s` came from `CString::into_raw`.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

/// A copy of `text` owned by the library: what an endpoint handler answers in
/// `*response_json` (see `mc_endpoint_fn`), or any string to be freed with `mc_string_free`.
/// NULL when `text` is NULL. Invalid UTF-8 is replaced.
///
/// Thread-safety: any thread.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mc_string_new(text: *const c_char) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        if text.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: per the contract.
        let text = unsafe { str_lossy(text) };
        string_lossy(&text).into_raw()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_mc_err_panic_with_its_message() {
        let mut err: *mut mc_error = std::ptr::null_mut();
        // SAFETY: `err` is valid for a write.
        let code = unsafe { call(&mut err, || panic!("boom")) };
        assert_eq!(code, mc_result::MC_ERR_PANIC);
        // SAFETY: the error was just written; freed once.
        unsafe {
            assert_eq!(crate::mc_error_code(err), mc_result::MC_ERR_PANIC);
            let message = CStr::from_ptr(crate::mc_error_message(err));
            assert_eq!(message.to_str().unwrap(), "The library panicked: boom");
            crate::mc_error_free(err);
        }
        assert_eq!(guard(7, || panic!("boom")), 7);
    }
}
