"""Notice at once when a streaming client closes its connection (under gunicorn's gevent worker).

A WSGI server learns that a client left only when a write fails, and before the first token nothing
is written for up to a heartbeat. Under gevent the event loop can watch the client's socket instead:
when it turns readable, end-of-file there means the client is gone. A loop callback, not a greenlet:
nothing to start per request, nothing to kill at its end.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from backend.cooperative import gevent_loop


def watch_for_departure(client_socket: Any, on_gone: Callable[[], None]) -> Callable[[], None] | None:
    """Call ``on_gone`` when the peer closes ``client_socket``; returns a function that stops watching.

    Only under gevent (a thread blocked in recv could not be stopped cleanly); elsewhere returns None
    and the next failed write is what notices the departure. ``on_gone`` runs in the event loop: it
    must not block.
    """
    loop = gevent_loop()
    if client_socket is None or loop is None:
        return None
    watcher = loop.io(client_socket.fileno(), 1)  # 1: readable

    def on_readable() -> None:
        timeout = client_socket.gettimeout()
        client_socket.settimeout(0.0)  # a peek that must not wait: this runs in the loop itself
        try:
            data = client_socket.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return  # readable a moment ago, not now: keep watching
        except OSError:
            data = b""
        finally:
            client_socket.settimeout(timeout)
        watcher.stop()
        if not data:
            on_gone()
        # Data means the client is talking (a pipelined request): it is there, stop watching.

    watcher.start(on_readable)
    # Closed before the response ends: gunicorn reads the next request from this socket.
    return watcher.close
