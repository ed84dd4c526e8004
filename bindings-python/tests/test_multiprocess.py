"""A three-member cluster across three processes (each a member_child.py): bootstrap, tokens,
joins, transactions from two processes read on the third, serializable read-modify-write
counters from two processes at once, the hooks each process saw in order (SPEC §10), an
extension endpoint forwarded over mTLS, removal and reset, and a clean exit of every process."""

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import free_address, wait_for

CHILD = Path(__file__).with_name("member_child.py")
TIMEOUT = 60.0


class ChildError(Exception):
    """A command that failed in the child, with the library's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Child:
    """A member_child.py process: commands go to its stdin, its JSON lines are collected."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(state_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.lock = threading.Lock()
        self.answered = 0  # replies and errors handed out so far
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: IO[str], events: bool) -> None:
        for line in stream:
            with self.lock:
                if events:
                    self.events.append(json.loads(line))
                else:
                    self.stderr.append(line)

    def events_of(self, *kinds: str) -> list[dict[str, Any]]:
        return self._events(kinds)

    def _events(self, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        with self.lock:
            return [event for event in self.events if event["event"] in kinds]

    def describe(self) -> str:
        with self.lock:
            return f"events={self.events}\nstderr={''.join(self.stderr)[-4000:]}"

    def wait_event(self, condition: Callable[[], Any], what: str) -> Any:
        def check() -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited ({self.proc.returncode}) waiting for {what}: "
                                     f"{self.describe()}")
            return condition()

        return wait_for(check, TIMEOUT, what)

    def send(self, command: str, *args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([command, *args]) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = TIMEOUT) -> Any:
        """The answer to the oldest command not answered yet; a ChildError if it failed."""
        index = self.answered
        wait_for(lambda: len(self._events(("reply", "error"))) > index or self.proc.poll() is not None,
                 timeout, "an answer")
        answers = self._events(("reply", "error"))
        assert len(answers) > index, f"child exited without answering: {self.describe()}"
        self.answered += 1
        event = answers[index]
        if event["event"] == "error":
            raise ChildError(event["code"], event["message"])
        return event["result"]

    def call(self, command: str, *args: Any) -> Any:
        self.send(command, *args)
        return self.answer()

    def hooks(self) -> list[str]:
        return [event["hook"] for event in self._events(("hook",))]

    def hook_calls(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self._events(("hook",)) if event["hook"] == name]

    def wait_hook(self, name: str) -> None:
        self.wait_event(lambda: self.hook_calls(name), f"the {name} hook")

    def stop(self) -> int:
        """Stops the member and waits for the process to exit (it must, in time)."""
        self.send("stop")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=TIMEOUT)
        for reader in self.readers:
            reader.join(timeout=TIMEOUT)
        return code


@pytest.fixture
def spawn() -> Iterator[Callable[[str], Child]]:
    """Starts member processes with state directories in a temporary directory; kills whatever
    still runs at the end and removes the directory."""
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="mc-multiproc-") as tmp:

        def make(name: str) -> Child:
            child = Child(Path(tmp) / name)
            children.append(child)
            child.wait_event(lambda: child.events_of("started"), f"{name} to start")
            return child

        try:
            yield make
        finally:
            for child in children:
                if child.proc.poll() is None:
                    child.proc.kill()
                child.proc.wait(timeout=TIMEOUT)
                for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
                    if stream is not None:
                        stream.close()


def test_three_member_processes(spawn: Callable[[str], Child]) -> None:
    began = time.monotonic()
    c1, c2, c3 = spawn("c1"), spawn("c2"), spawn("c3")
    pids = {c1.proc.pid, c2.proc.pid, c3.proc.pid}
    assert len(pids) == 3

    # Bootstrap in process 1, join tokens there, joins of processes 2 and 3.
    address1 = free_address()
    c1.call("bootstrap", "c1", address1)
    token2, token3 = c1.call("token", "c2"), c1.call("token", "c3")
    c2.call("join", "c2", free_address(), token2)
    c3.call("join", "c3", free_address(), token3)
    for child in (c1, c2, c3):
        assert child.call("members") == ["c1", "c2", "c3"]

    # Transactions written in processes 1 and 2, read back in process 3.
    assert c1.call("execute", "INSERT INTO kv VALUES (?, ?)", ["from", "c1"]) == 1
    assert c2.call("execute", "INSERT INTO kv VALUES (?, ?), (?, ?)", ["c2", 2, "none", None]) == 2
    rows = c3.call("query", "SELECT key, value FROM kv ORDER BY key", [])
    assert rows == [["c2", 2], ["from", "c1"], ["none", None]]

    # Serializable read-modify-write increments from processes 1 and 2 at once: none is lost.
    times = 20
    c1.call("execute", "INSERT INTO counter VALUES (1, 0)", [])
    c1.send("increment", times)
    c2.send("increment", times)
    assert c1.answer(120) == times
    assert c2.answer(120) == times
    assert c3.call("query", "SELECT n FROM counter WHERE id = 1", []) == [[2 * times]]

    # The extension endpoint, called on one process and served by another over mTLS.
    remote = c1.call("request", "GET", "/1.0/whoami?target=c2")
    assert remote["served_by"] == "c2"
    assert remote["caller"]["kind"] == "member" and remote["caller"]["name"] == "c1"
    remote = c3.call("request", "GET", "/1.0/whoami?target=c1")
    assert remote["served_by"] == "c1" and remote["caller"]["name"] == "c3"
    assert c2.call("request", "GET", "/1.0/whoami") == {
        "served_by": "c2", "caller": {"kind": "control_socket"}}

    # Hooks so far, in order, each in its process (SPEC §10).
    assert c1.hooks() == ["on_start", "pre_init", "post_bootstrap", "on_new_member", "on_new_member"]
    assert c1.hook_calls("pre_init")[0]["args"] == {"bootstrap": True, "config": {}}
    assert [call["args"]["new_member"]["name"] for call in c1.hook_calls("on_new_member")] == [
        "c2", "c3"]
    assert c2.hooks() == ["on_start", "pre_init", "pre_join", "post_join", "on_new_member"]
    assert c2.hook_calls("pre_init")[0]["args"] == {"bootstrap": False, "config": {}}
    assert c2.hook_calls("on_new_member")[0]["args"]["new_member"]["name"] == "c3"
    assert c3.hooks() == ["on_start", "pre_init", "pre_join", "post_join"]
    assert all(event["member"] == child_name
               for child, child_name in ((c1, "c1"), (c2, "c2"), (c3, "c3"))
               for event in child.events_of("hook") if event["hook"] != "on_start")

    # Removal of member 3, asked in process 1: pre_remove on 3, post_remove on 1 and 2, and
    # process 3 is reset to an un-initialised member (still running).
    c1.call("remove", "c3")
    assert c1.call("members") == ["c1", "c2"]
    assert c2.call("members") == ["c1", "c2"]
    c3.wait_hook("on_reset")
    assert c3.hooks() == ["on_start", "pre_init", "pre_join", "post_join",
                          "pre_remove", "on_start", "on_reset"]
    assert c3.hook_calls("pre_remove")[0]["args"] == {"force": False}
    assert c3.hook_calls("on_reset")[0]["args"] == {"reason": "removed"}
    for child in (c1, c2):
        child.wait_hook("post_remove")
        assert child.hook_calls("post_remove")[0]["args"] == {"force": False}
    assert c1.hooks()[-1] == "post_remove" and c2.hooks()[-1] == "post_remove"
    # Un-initialised (SPEC §2.3, §9.4): no member address, no daemon.yaml, no database.
    assert c3.call("status")["address"] == ""
    assert not (c3.state_dir / "daemon.yaml").exists()
    with pytest.raises(ChildError) as uninitialised:
        c3.call("members")
    assert uninitialised.value.code == "UNAVAILABLE"
    assert "Database is not yet initialized" in uninitialised.value.message
    # The cluster goes on without it.
    assert c2.call("execute", "INSERT INTO kv VALUES ('after', 3)", []) == 1
    assert c1.call("query", "SELECT value FROM kv WHERE key = 'after'", []) == [[3]]

    # Every process stops and exits 0, in time.
    for child in (c3, c2, c1):
        assert child.stop() == 0, child.describe()
        assert child.events_of("stopped"), child.describe()
    assert time.monotonic() - began < 120
