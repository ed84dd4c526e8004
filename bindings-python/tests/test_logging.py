"""The library's log events reach a Python handler, and Python's logging through
``log_to_logging``."""

import logging
import threading

import pytest

import microcluster
from conftest import wait_for


def test_events_reach_the_handler_at_the_chosen_level(make_member):
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def handler(level: str, target: str, message: str) -> None:
        with lock:
            seen.append((level, target, message))

    microcluster.set_log_handler(handler, "info")
    try:
        member = make_member("c1")
        member.app.new_cluster("c1", member.address)

        def ready_logged():
            with lock:
                return [e for e in seen if e[2] == "Daemon is ready"]

        level, target, _ = wait_for(ready_logged, what="the ready event")[0]
        assert (level, target) == ("info", "microcluster::daemon")
        with lock:
            assert all(level in ("error", "warn", "info") for level, _, _ in seen)
    finally:
        microcluster.set_log_handler(None)


def test_log_to_logging_uses_module_loggers(make_member, caplog):
    caplog.set_level(logging.INFO, logger="microcluster")
    microcluster.log_to_logging("info")
    try:
        make_member("c1")
        wait_for(
            lambda: any(
                r.name == "microcluster.daemon" and r.getMessage() == "Daemon is ready"
                for r in caplog.records
            ),
            what="the ready record",
        )
    finally:
        microcluster.set_log_handler(None)


def test_bad_levels_are_refused():
    with pytest.raises(microcluster.InvalidArgumentError, match="Invalid log level"):
        microcluster.set_log_handler(print, "loud")
