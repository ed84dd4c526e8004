"""The process around an app: Ctrl-C interrupts long waits, the async twin works, and the
interpreter exits with a running app."""

import _thread
import asyncio
import signal
import subprocess
import sys
import threading

import pytest

import microcluster
from conftest import free_address


def test_ctrl_c_interrupts_wait(make_member):
    member = make_member("m1")
    # Ctrl-C reaches Python through its SIGINT handler. A Python started with SIGINT ignored (a
    # background job of a non-interactive shell) has none, and `interrupt_main` then does
    # nothing: the wait below would never end.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.3, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            member.app.wait()
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    member.app.stop()
    member.app.wait()


def test_context_manager_and_stop_during_start_up(tmp_path):
    with microcluster.App(tmp_path / "m") as app:
        app.start("1.0")
    # Stopped right away: the start-up is cut short and stop is idempotent.
    app.stop()
    with pytest.raises(microcluster.UnavailableError):
        app.ready(timeout=5)


def test_async_app(tmp_path):
    async def main():
        async with microcluster.AsyncApp(tmp_path / "a") as app:
            app.start("1.0", schema_updates=["CREATE TABLE t (x INTEGER PRIMARY KEY)"])
            await app.ready(timeout=60)
            address = free_address()
            await app.new_cluster("a1", address)
            await app.transaction(lambda tx: tx.execute("INSERT INTO t VALUES (?)", [7]))
            assert await app.transaction(lambda tx: tx.query("SELECT x FROM t")) == [(7,)]
            assert [m["name"] for m in await app.cluster_members()] == ["a1"]
            assert (await app.status())["address"] == address

    asyncio.run(main())


def test_interpreter_exit_with_a_running_app(tmp_path):
    script = f"""
import microcluster
app = microcluster.App({str(tmp_path / "m")!r})
app.start("1.0", hooks=microcluster.Hooks(on_heartbeat=lambda state, roles: None), heartbeat=0.2)
app.ready(timeout=60)
app.new_cluster("m1", {free_address()!r})
print("bootstrapped", flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "bootstrapped\n"
