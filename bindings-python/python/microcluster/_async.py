"""``AsyncApp``: the ``App`` API as coroutines for asyncio programs, each blocking call run in
a worker thread with ``asyncio.to_thread``."""

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from ._endpoints import Endpoint, ExtensionServer
from ._hooks import Hooks
from ._microcluster import App, Tx

T = TypeVar("T")

__all__ = ["AsyncApp"]


class AsyncApp:
    """One cluster member, like :class:`App`, with ``async`` methods (``async with`` stops it)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        """Opens (creating if needed) the member's state directory."""
        self.app = App(state_dir)

    def start(
        self,
        version: str,
        *,
        hooks: Hooks | None = None,
        schema_updates: Sequence[str] = (),
        api_extensions: Sequence[str] = (),
        heartbeat: timedelta | float | None = None,
        extension_servers: Sequence[ExtensionServer] | None = None,
        endpoints: Sequence[Endpoint] | None = None,
    ) -> None:
        """Starts the daemon and returns at once (it does not block)."""
        self.app.start(
            version,
            hooks=hooks,
            schema_updates=list(schema_updates),
            api_extensions=list(api_extensions),
            heartbeat=heartbeat,
            extension_servers=extension_servers,
            endpoints=endpoints,
        )

    async def stop(self) -> None:
        """See :meth:`App.stop`."""
        await asyncio.to_thread(self.app.stop)

    async def wait(self) -> None:
        """See :meth:`App.wait`."""
        await asyncio.to_thread(self.app.wait)

    async def ready(self, timeout: timedelta | float | None = None) -> None:
        """See :meth:`App.ready`."""
        await asyncio.to_thread(self.app.ready, timeout)

    async def status(self) -> dict[str, Any]:
        """See :meth:`App.status`."""
        return await asyncio.to_thread(self.app.status)

    async def new_cluster(
        self, name: str, address: str, config: dict[str, str] | None = None
    ) -> None:
        """See :meth:`App.new_cluster`."""
        await asyncio.to_thread(self.app.new_cluster, name, address, config)

    async def join_cluster(
        self, name: str, address: str, token: str, config: dict[str, str] | None = None
    ) -> None:
        """See :meth:`App.join_cluster`."""
        await asyncio.to_thread(self.app.join_cluster, name, address, token, config)

    async def new_join_token(
        self, name: str, expire_after: timedelta | float | None = None
    ) -> str:
        """See :meth:`App.new_join_token`."""
        return await asyncio.to_thread(self.app.new_join_token, name, expire_after)

    async def join_tokens(self) -> list[dict[str, Any]]:
        """See :meth:`App.join_tokens`."""
        return await asyncio.to_thread(self.app.join_tokens)

    async def revoke_join_token(self, name: str) -> None:
        """See :meth:`App.revoke_join_token`."""
        await asyncio.to_thread(self.app.revoke_join_token, name)

    async def cluster_members(self) -> list[dict[str, Any]]:
        """See :meth:`App.cluster_members`."""
        return await asyncio.to_thread(self.app.cluster_members)

    def local_members(self) -> list[dict[str, Any]]:
        """See :meth:`App.local_members` (it reads local files and does not block for long)."""
        return self.app.local_members()

    async def recover(self, members: Sequence[Mapping[str, Any]]) -> str:
        """See :meth:`App.recover`."""
        return await asyncio.to_thread(self.app.recover, members)

    async def remove_cluster_member(
        self, name: str, force: bool = False, address: str | None = None
    ) -> None:
        """See :meth:`App.remove_cluster_member`."""
        await asyncio.to_thread(self.app.remove_cluster_member, name, force, address)

    async def sql(self, query: str) -> dict[str, Any]:
        """See :meth:`App.sql`."""
        return await asyncio.to_thread(self.app.sql, query)

    async def query(self, method: str, path: str, body: Any = None) -> Any:
        """See :meth:`App.query`."""
        return await asyncio.to_thread(self.app.query, method, path, body)

    async def transaction(self, func: Callable[[Tx], T]) -> T:
        """See :meth:`App.transaction`; ``func`` is a plain function, run on a worker thread."""
        return await asyncio.to_thread(self.app.transaction, func)

    async def __aenter__(self) -> Self:
        """Returns the app."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the daemon."""
        await self.stop()
