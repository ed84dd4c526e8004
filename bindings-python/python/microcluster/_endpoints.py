"""Extension endpoints (SPEC §13): application-defined REST endpoints answered by Python.

An :class:`ExtensionServer` groups :class:`Endpoint` s under a path prefix; each endpoint maps
HTTP methods to handlers ``handler(request) -> JSON-able`` (plain or ``async``), each optionally
checked first by an access handler ``access_handler(request) -> bool``. Give the
servers to ``App.start(..., extension_servers=[...])``, or give plain endpoints to
``App.start(..., endpoints=[...])`` (served under ``/1.0/`` on the member's listener and its
control socket, by the server :data:`DEFAULT_SERVER`). This module only turns them into the
library's JSON description and dispatches each request to its handler; the library does the
routing, trust checks and ``?target=`` forwarding.
"""

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._microcluster import State
from .errors import InternalError, InvalidArgumentError, NotFoundError

__all__ = [
    "DEFAULT_SERVER",
    "AccessHandler",
    "Action",
    "Endpoint",
    "ExtensionServer",
    "Handler",
    "Request",
]

#: The name of the core-API server that serves ``App.start(..., endpoints=[...])``.
DEFAULT_SERVER = "app"


@dataclass(frozen=True)
class Request:
    """A request to an extension endpoint, as its handler gets it."""

    state: State
    """The member's state (``state.transaction``, ``state.cluster_members``...)."""
    method: str
    """The HTTP method, upper case."""
    path: str
    """The request path, without the query."""
    vars: dict[str, str]
    """The values of the ``{var}`` segments of the endpoint's path."""
    query: list[tuple[str, str]]
    """The decoded query parameters, in order."""
    body: Any
    """The JSON body (None without one)."""
    trusted: bool
    """Whether the caller is trusted (the control socket or a cluster member)."""
    notification: bool
    """Whether another member sends this as a cluster notification (do not fan out again)."""
    caller: dict[str, Any]
    """``{"kind": "control_socket"}``, ``{"kind": "member", "name", "fingerprint"}`` or
    ``{"kind": "unknown", "fingerprint"}``."""

    def param(self, name: str, default: str | None = None) -> str | None:
        """The last value of the query parameter ``name``, or ``default``."""
        values = [value for key, value in self.query if key == name]
        return values[-1] if values else default


Handler = Callable[[Request], Any | Awaitable[Any]]
"""An endpoint handler: ``handler(request)`` returns the JSON-able response ``metadata``.

It runs on a worker thread of the library, like a hook (``async def`` handlers run with
``asyncio.run`` there); it may block and use ``request.state.transaction``. Raising a
``microcluster.Error`` answers with its status (``NotFoundError`` 404,
``InvalidArgumentError`` 400, ``ForbiddenError`` 403, ...) and message; any other exception
answers 500 with its type and message.
"""

AccessHandler = Callable[[Request], bool | Awaitable[bool]]
"""A custom access check: ``access_handler(request)`` returns whether the request may go on.

It runs after the trust decision (an untrusted caller of an action without ``allow_untrusted``
is refused before it), before ``?target=`` forwarding and the handler, on a worker thread like
a handler (``async def`` works too). ``False`` answers 403 ``not authorized``; raising answers
like a handler raising (``ForbiddenError`` 403 with its message, ``InvalidArgumentError`` 400,
any other exception 500); returning anything but a ``bool`` answers 500.
"""


@dataclass(frozen=True)
class Action:
    """A handler with its own flags, for one method of an :class:`Endpoint`."""

    handler: Handler
    allow_untrusted: bool = False
    """Lets callers that are not cluster members through."""
    proxy_target: bool = False
    """Forwards ``?target=<member>`` requests to that member (over mTLS)."""
    access_handler: AccessHandler | None = None
    """Checks each request first (see :data:`AccessHandler`)."""


@dataclass(frozen=True)
class Endpoint:
    """A REST resource: ``methods`` maps ``"GET"``, ``"PUT"``, ``"POST"``, ``"DELETE"`` or
    ``"PATCH"`` to a handler or an :class:`Action`.

    ``path`` is relative to the server's ``path_prefix``; a ``{var}`` segment matches one
    segment (``request.vars["var"]``). ``allow_untrusted``, ``proxy_target`` and
    ``access_handler`` apply to the methods given as plain handlers. ``name`` (default: the
    path) identifies the endpoint in errors and logs.
    """

    path: str
    methods: Mapping[str, Handler | Action]
    name: str = ""
    allow_untrusted: bool = False
    proxy_target: bool = False
    access_handler: AccessHandler | None = None
    aliases: Sequence[str] = ()
    allowed_before_init: bool = False
    allowed_during_shutdown: bool = False


@dataclass(frozen=True)
class ExtensionServer:
    """An extension server: ``endpoints`` under ``/<path_prefix>/``.

    ``name`` is an FQDN (not ``core``). With ``core_api`` (the default) the endpoints are served
    on the member's own listener with the cluster certificate, and with ``serve_unix`` also on
    its control socket (what ``App.query`` talks to); ``pre_init`` (with both) serves them
    there before the member is initialised. Without ``core_api`` the server gets a listener of
    its own at ``address`` (and its own certificate with ``dedicated_certificate``).
    """

    name: str
    endpoints: Sequence[Endpoint]
    path_prefix: str = "1.0"
    core_api: bool = True
    serve_unix: bool = False
    pre_init: bool = False
    address: str = ""
    dedicated_certificate: bool = False


Dispatch = Callable[[State, str, str, dict[str, Any]], str]
"""``dispatch(state, server, endpoint, request)``: the JSON text of the handler's answer."""
Access = Callable[[State, str, str, dict[str, Any]], bool]
"""``access(state, server, endpoint, request)``: the answer of the action's access handler."""


def _run(function: Callable[[Request], Any], state: State, request: dict[str, Any]) -> Any:
    """Calls a handler or access handler with the library's ``request``; awaits a coroutine."""
    fields = dict(request, query=[tuple(pair) for pair in request["query"]])
    result = function(Request(state=state, **fields))
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def compile_servers(
    servers: Sequence[ExtensionServer] | None, endpoints: Sequence[Endpoint] | None = None
) -> tuple[str, Dispatch, Access]:
    """The library's JSON description of ``servers``, plus a core-API server
    :data:`DEFAULT_SERVER` under ``/1.0/`` (also on the control socket) for ``endpoints``,
    the dispatcher calling their handlers and the one calling their access handlers (used by
    ``App.start``). Raises
    ``InvalidArgumentError`` for a malformed description; the library checks the rest (names,
    paths, methods) itself."""
    servers = list(servers or ())
    if endpoints:
        servers.append(ExtensionServer(DEFAULT_SERVER, list(endpoints), serve_unix=True))
    actions: dict[tuple[str, str, str], Action] = {}
    specs = []
    for server in servers:
        if not isinstance(server, ExtensionServer):
            raise InvalidArgumentError(f"Not an ExtensionServer: {server!r}")
        endpoint_specs = []
        for endpoint in server.endpoints:
            if not isinstance(endpoint, Endpoint):
                raise InvalidArgumentError(f"Not an Endpoint: {endpoint!r}")
            name = endpoint.name or endpoint.path
            methods = {}
            for method, action in endpoint.methods.items():
                if not isinstance(action, Action):
                    action = Action(
                        action,
                        endpoint.allow_untrusted,
                        endpoint.proxy_target,
                        endpoint.access_handler,
                    )
                if not callable(action.handler):
                    raise InvalidArgumentError(
                        f"The {method} handler of endpoint {name!r} is not callable"
                    )
                checked = action.access_handler is not None
                if checked and not callable(action.access_handler):
                    raise InvalidArgumentError(
                        f"The {method} access handler of endpoint {name!r} is not callable"
                    )
                methods[method.upper()] = {
                    "allow_untrusted": action.allow_untrusted,
                    "proxy_target": action.proxy_target,
                    "access_handler": checked,
                }
                actions[(server.name, name, method.upper())] = action
            endpoint_specs.append(
                {
                    "name": name,
                    "path": endpoint.path,
                    "aliases": list(endpoint.aliases),
                    "allowed_before_init": endpoint.allowed_before_init,
                    "allowed_during_shutdown": endpoint.allowed_during_shutdown,
                    "methods": methods,
                }
            )
        specs.append(
            {
                "name": server.name,
                "address": server.address,
                "core_api": server.core_api,
                "pre_init": server.pre_init,
                "serve_unix": server.serve_unix,
                "dedicated_certificate": server.dedicated_certificate,
                "resources": [{"path_prefix": server.path_prefix, "endpoints": endpoint_specs}],
            }
        )

    def find(server: str, endpoint: str, method: str) -> Action:
        action = actions.get((server, endpoint, method))
        if action is None:
            raise NotFoundError(f"No {method} handler for endpoint {endpoint!r}")
        return action

    def dispatch(state: State, server: str, endpoint: str, request: dict[str, Any]) -> str:
        action = find(server, endpoint, request["method"])
        return json.dumps(_run(action.handler, state, request))

    def access(state: State, server: str, endpoint: str, request: dict[str, Any]) -> bool:
        method = request["method"]
        check = find(server, endpoint, method).access_handler
        if check is None:
            raise NotFoundError(f"No {method} access handler for endpoint {endpoint!r}")
        allowed = _run(check, state, request)
        if not isinstance(allowed, bool):
            raise InternalError(
                f"The {method} access handler of endpoint {endpoint!r} returned "
                f"{type(allowed).__name__}, not a bool"
            )
        return allowed

    return json.dumps(specs), dispatch, access
