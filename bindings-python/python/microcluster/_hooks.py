"""The lifecycle hooks an application gives to ``App.start``."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Hook = Callable[..., "None | Awaitable[None]"]
"""A hook: ``hook(state, **arguments)``, plain or ``async``."""

__all__ = ["Hook", "Hooks"]


@dataclass(frozen=True)
class Hooks:
    """The lifecycle hooks (SPEC §10), each optional, each called as ``hook(state, **args)``.

    Hooks run on a worker thread of the library (never on the thread that called the ``App``
    method), with the GIL taken only while Python runs; an ``async def`` hook is run to
    completion there with ``asyncio.run`` (to reach your own event loop, use
    ``loop.call_soon_threadsafe``). Inside a hook use ``state.transaction`` and
    ``state.cluster_members``; blocking ``App`` methods raise ``WouldBlockError`` there.
    An exception fails the lifecycle step and reaches the caller as ``HookError``.

    The keyword arguments: ``pre_init(state, bootstrap, config)``,
    ``post_bootstrap/pre_join/post_join(state, config)``, ``on_new_member(state, new_member)``
    (a dict ``{"name", "address", "certificate"}``), ``on_start(state)``,
    ``pre_remove/post_remove(state, force)``, ``on_heartbeat(state, roles)`` (``{name: {"old",
    "new"}}``), ``on_daemon_config_update(state, config)``, and ``on_reset(state, reason)``
    (``"removed"`` or ``"init_failed"``; its errors are ignored).
    """

    pre_init: Hook | None = None
    post_bootstrap: Hook | None = None
    pre_join: Hook | None = None
    post_join: Hook | None = None
    on_new_member: Hook | None = None
    on_start: Hook | None = None
    pre_remove: Hook | None = None
    post_remove: Hook | None = None
    on_heartbeat: Hook | None = None
    on_daemon_config_update: Hook | None = None
    on_reset: Hook | None = None

