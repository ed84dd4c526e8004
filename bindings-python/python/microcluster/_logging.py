"""Routing the library's log events to Python's :mod:`logging`."""

import logging

from ._microcluster import set_log_handler

__all__ = ["log_to_logging"]

#: Python's level for each of the library's levels (``trace`` is below ``DEBUG``).
_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}


def log_to_logging(level: str = "info") -> None:
    """Sends the library's log events of ``level`` and more severe to :mod:`logging`, each to
    the logger named after the module that logged it (``microcluster::daemon`` becomes
    ``microcluster.daemon``), so ``logging.getLogger("microcluster")`` configures them all.
    Call :func:`set_log_handler` with ``None`` to stop."""

    def handle(event_level: str, target: str, message: str) -> None:
        logging.getLogger(target.replace("::", ".")).log(_LEVELS[event_level], "%s", message)

    set_log_handler(handle, level)
