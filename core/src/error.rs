//! The one error type of the library.
//!
//! Every failure carries an [`ErrorKind`] that is stable across releases and maps to exactly one
//! HTTP status (and, in the bindings, to one C code, one Python exception class and one Node
//! `code`). Errors received from another member keep the status that member sent.

use std::fmt;

/// The stable classification of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input or failed validation (HTTP 400).
    InvalidArgument,
    /// The caller is not trusted for this operation (HTTP 403).
    Forbidden,
    /// Unknown path, method or record (HTTP 404).
    NotFound,
    /// A transaction conflict that persisted after the library's retries (HTTP 409).
    Conflict,
    /// The request body is larger than the endpoint accepts (HTTP 413).
    PayloadTooLarge,
    /// The endpoint has no handler for this method (HTTP 501).
    NotImplemented,
    /// The daemon or database is not available: not ready, shutting down, not initialised
    /// (HTTP 503).
    Unavailable,
    /// An operation did not finish within its deadline (HTTP 504).
    Timeout,
    /// A blocking call was made from a thread of the library's own runtime, where it would
    /// deadlock (never sent over HTTP; reported as 500 if it were).
    WouldBlock,
    /// Anything else (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind is reported with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
            ErrorKind::WouldBlock | ErrorKind::Internal => 500,
        }
    }

    /// The kind that an HTTP error status stands for.
    pub fn from_http_status(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::InvalidArgument,
            401 | 403 => ErrorKind::Forbidden,
            404 | 405 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::PayloadTooLarge,
            501 => ErrorKind::NotImplemented,
            503 => ErrorKind::Unavailable,
            504 => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        }
    }

    /// A stable upper-case name (`"NOT_FOUND"`), used by the bindings as error codes.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::Forbidden => "FORBIDDEN",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::Conflict => "CONFLICT",
            ErrorKind::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorKind::NotImplemented => "NOT_IMPLEMENTED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::WouldBlock => "WOULD_BLOCK",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

impl ErrorKind {
    /// The kind named by `code`, one of the names of [`ErrorKind::as_str`] (what the bindings'
    /// errors carry, so that a handler's error keeps its kind): `None` for any other name.
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        [
            ErrorKind::InvalidArgument,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NotImplemented,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::WouldBlock,
            ErrorKind::Internal,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == code)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the library: a kind, the HTTP status it travels with and a message for people.
///
/// ```
/// use microcluster::{Error, ErrorKind};
/// let err = Error::not_found("not found");
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// assert_eq!(err.http_status(), 404);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    status: u16,
    message: String,
}

/// The result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with the status that kind maps to.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            status: kind.http_status(),
            message: message.into(),
        }
    }

    /// An error received with an HTTP status (from another member or a handler); the status is
    /// kept as it is and the kind derived from it.
    pub fn from_status(status: u16, message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::from_http_status(status),
            status,
            message: message.into(),
        }
    }

    /// Bad input (400).
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Not trusted (403).
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Forbidden, message)
    }

    /// Unknown path or record (404).
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    /// Not available now (503).
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }

    /// Anything else (500).
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status this error is (or was) sent with.
    pub fn http_status(&self) -> u16 {
        self.status
    }

    /// The message, without kind or status.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `prefix` put before its message; kind and status are kept.
    pub fn context(mut self, prefix: impl fmt::Display) -> Error {
        self.message = format!("{prefix}{}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Error {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Internal,
        };
        Error::new(kind, err.to_string())
    }
}

/// Adds a message prefix to the error of a fallible operation.
pub(crate) trait ResultExt<T> {
    /// Converts the error into an [`Error`] whose message starts with `prefix`.
    fn context(self, prefix: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, prefix: impl fmt::Display) -> Result<T> {
        self.map_err(|err| err.into().context(prefix))
    }
}

/// The message of a caught panic (`std::panic::catch_unwind`'s payload): the text given to
/// `panic!`, or "unknown panic".
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses_and_back() {
        for kind in [
            ErrorKind::InvalidArgument,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NotImplemented,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_http_status(kind.http_status()), kind);
        }
    }

    #[test]
    fn codes_name_their_kinds() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::WouldBlock,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_code(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code("not_found"), None);
    }

    #[test]
    fn received_status_is_kept() {
        let err = Error::from_status(418, "teapot");
        assert_eq!(err.http_status(), 418);
        assert_eq!(err.kind(), ErrorKind::Internal);
        let err = err.context("Failed to send request to target \"c2\": ");
        assert_eq!(err.http_status(), 418);
        assert_eq!(
            err.to_string(),
            "Failed to send request to target \"c2\": teapot"
        );
    }
}
