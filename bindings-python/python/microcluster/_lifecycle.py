"""Stops the daemons still running when the interpreter exits, so that exit never hangs and
no hook runs while Python finalises."""

import atexit
import weakref
from typing import Protocol


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_running: "weakref.WeakSet[_Stoppable]" = weakref.WeakSet()


def track(app: _Stoppable) -> None:
    """Remembers ``app`` (weakly) to be stopped at interpreter exit."""
    _running.add(app)


@atexit.register
def _stop_all() -> None:
    for app in list(_running):
        try:
            app.stop()
        except Exception:  # noqa: BLE001 - exiting: nothing better to do than carry on
            pass
