"""The exceptions of microcluster.

Every error of the library is a :class:`Error` whose ``code`` is the stable name of its kind
(``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``, ...). The subclasses also derive from the matching
builtin exception, so ``except LookupError`` or ``except ValueError`` keep working.
"""

import builtins

__all__ = [
    "Error",
    "InvalidArgumentError",
    "PayloadTooLargeError",
    "NotFoundError",
    "ForbiddenError",
    "ConflictError",
    "UnavailableError",
    "TimeoutError",
    "WouldBlockError",
    "NotImplementedError",
    "HookError",
    "InternalError",
]


class Error(Exception):
    """Root of microcluster's exceptions; ``code`` names the error kind."""

    code: str = "INTERNAL"
    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(Error, ValueError):
    """Bad input or failed validation."""

    code = "INVALID_ARGUMENT"


class PayloadTooLargeError(InvalidArgumentError):
    """A request body over the library's limit (HTTP 413)."""

    code = "PAYLOAD_TOO_LARGE"


class NotFoundError(Error, LookupError):
    """Unknown member, token, path or record."""

    code = "NOT_FOUND"


class ForbiddenError(Error, PermissionError):
    """The caller is not trusted for this operation."""

    code = "FORBIDDEN"


class ConflictError(Error):
    """A conflict that persisted (concurrent transactions, a daemon already running)."""

    code = "CONFLICT"


class UnavailableError(Error, ConnectionError):
    """The daemon or database is not available: not started, not ready, shutting down."""

    code = "UNAVAILABLE"


class TimeoutError(Error, builtins.TimeoutError):
    """An operation did not finish within its deadline."""

    code = "TIMEOUT"


class WouldBlockError(Error):
    """A blocking ``App`` call was made from a library thread (inside a hook)."""

    code = "WOULD_BLOCK"


class NotImplementedError(Error, builtins.NotImplementedError):
    """The endpoint exists but has no handler for the method (HTTP 501)."""

    code = "NOT_IMPLEMENTED"


class HookError(Error):
    """A lifecycle hook raised: the message names the hook and its exception.

    ``__cause__`` is the hook's exception when the hook ran in this process (for example
    ``pre_join`` during this process's ``join_cluster``); it is None when the hook ran in
    another process (``on_new_member`` on a remote member), where only the message travels.
    ``code`` is the kind of the error that reached the caller (usually ``"INTERNAL"``).
    """


class InternalError(Error):
    """Anything else."""

    code = "INTERNAL"
