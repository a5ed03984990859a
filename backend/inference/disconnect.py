"""Notice at once when a streaming client closes its connection (under gunicorn's gevent worker).

A WSGI server learns that a client left only when a write fails, and before the first token nothing
is written for up to a heartbeat. Under gevent a greenlet can wait for the client's socket to become
readable instead: end-of-file there means the client is gone.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any


def watch_for_departure(client_socket: Any, on_gone: Callable[[], None]) -> Callable[[], None] | None:
    """Call ``on_gone`` when the peer closes ``client_socket``; returns a function that stops watching.

    Only under gevent (a thread blocked in recv could not be stopped cleanly); elsewhere returns None
    and the next failed write is what notices the departure.
    """
    if client_socket is None:
        return None
    try:
        from gevent import monkey, spawn
    except ImportError:
        return None
    if not monkey.is_module_patched("socket"):
        return None

    def watch() -> None:
        while True:
            try:
                data = client_socket.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                on_gone()
            # Data means the client is talking (a pipelined request): it is there, stop watching.
            return

    greenlet = spawn(watch)
    # Blocking kill: the watcher must be off the socket before gunicorn reads the next request from it.
    return lambda: greenlet.kill(block=True, timeout=1)
