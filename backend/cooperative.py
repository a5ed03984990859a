"""What the code needs to know of gevent, in one place.

gunicorn's gevent worker patches the standard library (sockets, threads, events) before the app is
loaded; tests, scripts and the stress worker run without it. Code that can do better under gevent (read
sockets from the event loop, start greenlets without a round trip) asks here, and falls back to plain
threads and blocking sockets otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def gevent_loop() -> Any:
    """gevent's event loop when gevent has patched sockets and threads (gunicorn's worker), else None."""
    try:
        from gevent import get_hub, monkey
    except ImportError:
        return None
    if not (monkey.is_module_patched("socket") and monkey.is_module_patched("threading")):
        return None
    return get_hub().loop


def start_background(function: Callable[..., None], *args: Any, name: str) -> None:
    """Run ``function(*args)`` on its own: a greenlet under gevent, else a daemon thread.

    Not ``threading.Thread`` under gevent: its ``start()`` waits until the new greenlet has run, a whole
    turn of a busy event loop before the caller can go on (measured on the relay at 200 clients).
    """
    if gevent_loop() is not None:
        from gevent import spawn_raw

        spawn_raw(function, *args)
    else:
        threading.Thread(target=function, args=args, daemon=True, name=name).start()
