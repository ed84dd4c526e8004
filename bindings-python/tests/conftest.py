"""Fixtures: members with free ports and temporary state directories, and condition waits."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import microcluster

SCHEMA = [
    "CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value)",
    "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
]


_GIVEN_PORTS: set[int] = set()


def free_address() -> str:
    """An `IP:port` on 127.0.0.1 that nothing listens on right now, never one given before in
    this process (the kernel may hand a released port out again)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return f"127.0.0.1:{port}"


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Member:
    """A started app with its name, address and the hook calls it recorded."""

    name: str
    address: str
    app: microcluster.App
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, hook: str) -> Callable[..., None]:
        def hook_fn(state: microcluster.State, **args: Any) -> None:
            assert state.name in (self.name, socket.gethostname())
            with self.lock:
                self.calls.append((hook, args))

        return hook_fn

    def hook_names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls if name != "on_heartbeat"]


RECORDED = [
    "pre_init",
    "post_bootstrap",
    "pre_join",
    "post_join",
    "on_new_member",
    "on_start",
    "pre_remove",
    "post_remove",
    "on_heartbeat",
    "on_daemon_config_update",
    "on_reset",
]


@pytest.fixture
def make_member(tmp_path: Path) -> Iterator[Callable[..., Member]]:
    """Creates and starts members whose hooks record their calls (and that serve the given
    extension servers); stops them all at the end."""
    members: list[Member] = []

    def make(
        name: str,
        extension_servers: list[microcluster.ExtensionServer] | None = None,
        **overrides: Any,
    ) -> Member:
        member = Member(name, free_address(), microcluster.App(tmp_path / name))
        hooks = {hook: member.record(hook) for hook in RECORDED}
        hooks.update(overrides)
        member.app.start(
            "1.0",
            hooks=microcluster.Hooks(**hooks),
            schema_updates=SCHEMA,
            heartbeat=0.5,
            extension_servers=extension_servers,
        )
        member.app.ready(timeout=60)
        members.append(member)
        return member

    yield make
    for member in members:
        member.app.stop()
