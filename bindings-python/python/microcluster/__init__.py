"""microcluster: run this program as a member of a secure, self-managing cluster with a
Raft-replicated SQLite database.

``App(state_dir)`` is one member: ``start()`` its daemon (it runs on the library's threads),
``new_cluster()`` or ``join_cluster()``, then work with ``transaction()``. Extension endpoints
(``ExtensionServer``, ``Endpoint``) add the application's own REST API, called with ``query()``. Every blocking method
releases the GIL; ``AsyncApp`` offers the same as coroutines.
"""

from ._async import AsyncApp
from ._endpoints import AccessHandler, Action, Endpoint, ExtensionServer, Handler, Request
from ._hooks import Hook, Hooks
from ._logging import log_to_logging
from ._microcluster import App, State, Tx, __version__, set_log_handler
from .errors import (
    ConflictError,
    Error,
    ForbiddenError,
    HookError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    NotImplementedError,
    PayloadTooLargeError,
    TimeoutError,
    UnavailableError,
    WouldBlockError,
)

__all__ = [
    "AccessHandler",
    "Action",
    "App",
    "AsyncApp",
    "ConflictError",
    "Endpoint",
    "Error",
    "ExtensionServer",
    "ForbiddenError",
    "Handler",
    "Hook",
    "HookError",
    "Hooks",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "NotImplementedError",
    "PayloadTooLargeError",
    "Request",
    "State",
    "TimeoutError",
    "Tx",
    "UnavailableError",
    "WouldBlockError",
    "__version__",
    "log_to_logging",
    "set_log_handler",
]
