"""Scenarios for ``openai_compat.stream_to`` under gevent, run in a process of their own.

The pytest process must never be monkey-patched, so tests run this script as a subprocess::

    python tests/support/gevent_stream_check.py keepalive cancel

For each named scenario it starts a ``RawHttpServer`` in this (patched) process, drives ``stream_to``
against it and prints one JSON line: the events of each call (``[kind, value...]`` rows), its error
(``{"code", "message", "status"}`` or null), what the server saw and what the idle pool holds.
"""

from gevent import monkey

monkey.patch_all()

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from backend.providers import openai_compat  # noqa: E402
from backend.providers.base import (  # noqa: E402
    Cancellation,
    ChatRequest,
    Delta,
    Message,
    ProviderError,
    StreamEvent,
    Target,
)
from tests.support.raw_http import (  # noqa: E402
    DONE,
    LAST_CHUNK,
    NO_ANSWER,
    RawHttpServer,
    Reply,
    bytewise,
    chunk,
    chunked_stream,
    delta_chunk,
    head,
    sample_stream_body,
    sse,
    whole,
)

REQUEST = ChatRequest(messages=(Message(role="user", text="hi"),), max_tokens=5)
ANSWER = chunked_stream(sample_stream_body())


def row(event: StreamEvent) -> list[Any]:
    return [type(event).__name__.lower(), *dataclasses.astuple(event)]


def call(server: RawHttpServer, cancel: Cancellation | None = None,
         on_event: Callable[[StreamEvent], None] | None = None) -> dict[str, Any]:
    """One ``stream_to`` call: its events, its error, how long it took."""
    target = Target(key="t", provider="openai", model_id="m", base_url=server.base_url, api_key="k")
    events: list[list[Any]] = []

    def emit(event: StreamEvent) -> None:
        events.append(row(event))
        if on_event is not None:
            on_event(event)

    error = None
    started = time.monotonic()
    try:
        openai_compat.stream_to(target, REQUEST, cancel or Cancellation(), emit)
    except ProviderError as exc:
        error = {"code": exc.code, "message": exc.message, "status": exc.status}
    return {"events": events, "error": error, "elapsed_s": time.monotonic() - started}


def seen(server: RawHttpServer) -> dict[str, Any]:
    """What the server saw, and how many connections to it wait in the idle pool."""
    return {
        "connections": server.connections,
        "request_connections": [request.connection for request in server.requests],
        "client_closed": sorted(server.client_closed),
        "idle": len(openai_compat._IDLE._idle.get(("127.0.0.1", server.port), [])),
    }


def bytewise_stream() -> dict[str, Any]:
    """The answer written, and read, one byte at a time."""
    openai_compat._READ_SIZE = 1
    with RawHttpServer([Reply(bytewise(ANSWER))]) as server:
        return {**call(server), **seen(server)}


def keepalive() -> dict[str, Any]:
    with RawHttpServer([Reply([ANSWER]), Reply([ANSWER])]) as server:
        calls = [call(server), call(server)]
        return {"calls": calls, **seen(server)}


def stale() -> dict[str, Any]:
    """The server closes the connection after its answer: the pool's peek must notice."""
    peeks: list[bool] = []
    still_open = openai_compat._still_open

    def recorded_still_open(sock: Any) -> bool:
        peeks.append(still_open(sock))
        return peeks[-1]

    openai_compat._still_open = recorded_still_open
    with RawHttpServer([Reply([ANSWER], then="close"), Reply([ANSWER])]) as server:
        first = call(server)
        assert server.wait_until(lambda: 0 in server.ended)
        return {"calls": [first, call(server)], "peeks": peeks, **seen(server)}


def retry() -> dict[str, Any]:
    """The reused connection takes the second request and closes without a byte: one retry, fresh."""
    with RawHttpServer([Reply([ANSWER]), NO_ANSWER, Reply([ANSWER])]) as server:
        return {"calls": [call(server), call(server)], **seen(server)}


def no_retry_after_bytes() -> dict[str, Any]:
    """The reused connection breaks after part of the answer: that is an error, not a retry."""
    partial = head(200, chunked=True) + chunk(sse(delta_chunk("partial")))
    with RawHttpServer([Reply([ANSWER]), Reply([partial], then="close"), Reply([ANSWER])]) as server:
        return {"calls": [call(server), call(server)], **seen(server)}


def no_retry_when_fresh() -> dict[str, Any]:
    """A new connection closed without an answer is an error at once (the retry is for reused ones)."""
    with RawHttpServer([NO_ANSWER, Reply([ANSWER])]) as server:
        return {"calls": [call(server)], **seen(server)}


def done_no_end() -> dict[str, Any]:
    """``[DONE]`` arrives, the chunked body's end never does, the server keeps the connection open."""
    with RawHttpServer([Reply([chunked_stream(sample_stream_body(), last=False)])]) as server:
        result = call(server)
        closed = server.wait_until(lambda: 0 in server.client_closed, timeout=2.0)
        return {**result, "closed_by_client": closed, **seen(server)}


def done_then_end() -> dict[str, Any]:
    """The chunked body's end follows ``[DONE]`` 100 ms later, within the grace: the connection is kept."""
    pieces = [chunked_stream(sample_stream_body(), last=False), LAST_CHUNK]
    with RawHttpServer([Reply(pieces, pause_s=0.1)]) as server:
        return {**call(server), **seen(server)}


def cancel_midstream() -> dict[str, Any]:
    """Another greenlet cancels after the second delta; the server holds the rest behind a gate."""
    never = Event()
    pieces = [head(200, chunked=True), chunk(sse(delta_chunk("one"))), chunk(sse(delta_chunk("two"))), never,
              chunk(sse(delta_chunk("three"))), chunk(DONE), LAST_CHUNK]
    cancel = Cancellation()
    two_deltas = Event()
    deltas: list[StreamEvent] = []
    cancelled_at: list[float] = []

    def on_event(event: StreamEvent) -> None:
        if isinstance(event, Delta):
            deltas.append(event)
            if len(deltas) == 2:
                two_deltas.set()

    def canceller() -> None:
        two_deltas.wait()
        cancelled_at.append(time.monotonic())
        cancel.cancel()

    with RawHttpServer([Reply(pieces)]) as server:
        greenlet = gevent.spawn(canceller)
        result = call(server, cancel, on_event)
        greenlet.join(timeout=5)
        closed = server.wait_until(lambda: 0 in server.client_closed, timeout=2.0)
        closed_after_s = server.client_closed[0] - cancelled_at[0] if closed and cancelled_at else None
        return {**result, "closed_after_s": closed_after_s, **seen(server)}


def unauthorized() -> dict[str, Any]:
    with RawHttpServer([Reply([whole(401, b'{"error": {"message": "bad key"}}')])]) as server:
        result = call(server)
        server.wait_until(lambda: 0 in server.ended, timeout=2.0)
        return {**result, **seen(server)}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "bytewise": bytewise_stream,
    "keepalive": keepalive,
    "stale": stale,
    "retry": retry,
    "no_retry_after_bytes": no_retry_after_bytes,
    "no_retry_when_fresh": no_retry_when_fresh,
    "done_no_end": done_no_end,
    "done_then_end": done_then_end,
    "cancel": cancel_midstream,
    "unauthorized": unauthorized,
}


def main(names: list[str]) -> None:
    assert openai_compat.gevent_loop() is not None, "stream_to would not take the event-loop path"
    for name in names:
        print(json.dumps({"scenario": name, **SCENARIOS[name]()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
