"""The native part of the microcluster package (pyo3)."""

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, final

from ._endpoints import Endpoint, ExtensionServer
from ._hooks import Hooks

__all__ = ["App", "State", "Tx", "__version__", "set_log_handler"]

__version__: str

_T = TypeVar("_T")

def set_log_handler(handler: Callable[[str, str, str], object] | None, level: str = "info") -> None:
    """Sends the library's log events of ``level`` (``"error"``, ``"warn"``, ``"info"``,
    ``"debug"``, ``"trace"``) and more severe to ``handler(level, target, message)``, or stops
    sending them (``None``). The handler runs on library threads."""

_SqlValue = int | float | str | bytes | None

@final
class Tx:
    """The handle a transaction function gets; valid only during that call, on its thread."""

    def query(self, sql: str, params: Iterable[_SqlValue | bool] | None = None) -> list[tuple[_SqlValue, ...]]:
        """Runs a query and returns its rows as tuples."""
    def execute(self, sql: str, params: Iterable[_SqlValue | bool] | None = None) -> int:
        """Runs a statement and returns how many rows it changed."""

@final
class State:
    """What a hook can see and do on its member."""

    @property
    def name(self) -> str:
        """This member's name (the host name before init)."""
    @property
    def address(self) -> str:
        """This member's address, ``IP:port`` (empty before init)."""
    def transaction(self, func: Callable[[Tx], _T]) -> _T:
        """Runs ``func(tx)`` as a serializable transaction and returns its result."""
    def cluster_members(self) -> list[dict[str, Any]]:
        """The cluster members as the database has them (without status)."""

@final
class App:
    """One cluster member: a state directory and, once started, its daemon."""

    def __new__(cls, state_dir: str | os.PathLike[str]) -> Self: ...
    def start(
        self,
        version: str,
        *,
        hooks: Hooks | None = None,
        schema_updates: Sequence[str] = ...,
        api_extensions: Sequence[str] = ...,
        heartbeat: timedelta | float | None = None,
        extension_servers: Sequence[ExtensionServer] | None = None,
        endpoints: Sequence[Endpoint] | None = None,
    ) -> None:
        """Starts the daemon and returns at once; ``extension_servers`` and ``endpoints``
        (served under ``/1.0/``) add REST endpoints."""
    def stop(self) -> None:
        """Stops the daemon and waits for its end; idempotent."""
    def wait(self) -> None:
        """Waits until the daemon has ended; raises the error it failed with."""
    def ready(self, timeout: timedelta | float | None = None) -> None:
        """Waits until the daemon is ready."""
    def status(self) -> dict[str, Any]:
        """``{"name", "address", "version", "ready", "extensions"}``."""
    def new_cluster(self, name: str, address: str, config: dict[str, str] | None = None) -> None:
        """Bootstraps a new cluster with this member."""
    def join_cluster(
        self, name: str, address: str, token: str, config: dict[str, str] | None = None
    ) -> None:
        """Joins the cluster that issued ``token``."""
    def new_join_token(self, name: str, expire_after: timedelta | float | None = None) -> str:
        """Issues a join token for ``name`` (default validity: 3 hours)."""
    def join_tokens(self) -> list[dict[str, Any]]:
        """The join tokens that have not expired."""
    def revoke_join_token(self, name: str) -> None:
        """Revokes the join token issued for ``name``."""
    def cluster_members(self) -> list[dict[str, Any]]:
        """The cluster members with role and status."""
    def remove_cluster_member(self, name: str, force: bool = False, address: str | None = None) -> None:
        """Removes the member ``name`` from the cluster."""
    def local_members(self) -> list[dict[str, Any]]:
        """The members as this member's own ``database/`` has them: ``{"id", "name",
        "address", "role"}``, sorted by name; works with the daemon stopped."""
    def recover(self, members: Sequence[Mapping[str, Any]]) -> str:
        """Quorum-loss recovery with every daemon stopped: rewrites the Raft membership to
        ``members`` (``local_members()`` with edited roles and addresses) and returns the
        recovery tarball's path, to copy to the other surviving members before they start."""
    def sql(self, query: str) -> dict[str, Any]:
        """Runs ``query`` through the SQL API."""
    def query(self, method: str, path: str, body: Any = None) -> Any:
        """Sends ``method path`` to the control socket; returns the answer's metadata."""
    def transaction(self, func: Callable[[Tx], _T]) -> _T:
        """Runs ``func(tx)`` as a serializable transaction and returns its result."""
    def __enter__(self) -> Self:
        """Returns the app."""
    def __exit__(
        self,
        *_exc_info: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool:
        """Stops the daemon."""
