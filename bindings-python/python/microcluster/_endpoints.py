"""Extension endpoints (SPEC §13): application-defined REST endpoints answered by Python.

An :class:`ExtensionServer` groups :class:`Endpoint` s under a path prefix; each endpoint maps
HTTP methods to handlers ``handler(request) -> JSON-able`` (plain or ``async``). Give the
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
from .errors import InvalidArgumentError, NotFoundError

__all__ = ["DEFAULT_SERVER", "Action", "Endpoint", "ExtensionServer", "Handler", "Request"]

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


@dataclass(frozen=True)
class Action:
    """A handler with its own flags, for one method of an :class:`Endpoint`."""

    handler: Handler
    allow_untrusted: bool = False
    """Lets callers that are not cluster members through."""
    proxy_target: bool = False
    """Forwards ``?target=<member>`` requests to that member (over mTLS)."""


@dataclass(frozen=True)
class Endpoint:
    """A REST resource: ``methods`` maps ``"GET"``, ``"PUT"``, ``"POST"``, ``"DELETE"`` or
    ``"PATCH"`` to a handler or an :class:`Action`.

    ``path`` is relative to the server's ``path_prefix``; a ``{var}`` segment matches one
    segment (``request.vars["var"]``). ``allow_untrusted`` and ``proxy_target`` apply to the
    methods given as plain handlers. ``name`` (default: the path) identifies the endpoint in
    errors and logs.
    """

    path: str
    methods: Mapping[str, Handler | Action]
    name: str = ""
    allow_untrusted: bool = False
    proxy_target: bool = False
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


def compile_servers(
    servers: Sequence[ExtensionServer] | None, endpoints: Sequence[Endpoint] | None = None
) -> tuple[str, Dispatch]:
    """The library's JSON description of ``servers``, plus a core-API server
    :data:`DEFAULT_SERVER` under ``/1.0/`` (also on the control socket) for ``endpoints``,
    and the dispatcher calling their handlers (used by ``App.start``). Raises
    ``InvalidArgumentError`` for a malformed description; the library checks the rest (names,
    paths, methods) itself."""
    servers = list(servers or ())
    if endpoints:
        servers.append(ExtensionServer(DEFAULT_SERVER, list(endpoints), serve_unix=True))
    handlers: dict[tuple[str, str, str], Handler] = {}
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
                    action = Action(action, endpoint.allow_untrusted, endpoint.proxy_target)
                if not callable(action.handler):
                    raise InvalidArgumentError(
                        f"The {method} handler of endpoint {name!r} is not callable"
                    )
                methods[method.upper()] = {
                    "allow_untrusted": action.allow_untrusted,
                    "proxy_target": action.proxy_target,
                }
                handlers[(server.name, name, method.upper())] = action.handler
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

    def dispatch(state: State, server: str, endpoint: str, request: dict[str, Any]) -> str:
        handler = handlers.get((server, endpoint, request["method"]))
        if handler is None:
            raise NotFoundError(f"No {request['method']} handler for endpoint {endpoint!r}")
        request["query"] = [tuple(pair) for pair in request["query"]]
        result = handler(Request(state=state, **request))
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return json.dumps(result)

    return json.dumps(specs), dispatch
