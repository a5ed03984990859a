"""A scripted HTTP/1.1 server on raw sockets, for testing HTTP clients byte by byte.

Each request is answered with the next ``Reply`` of the script, whatever it asks for: the reply's pieces
are written one ``sendall`` each (TCP_NODELAY, so a piece is its own segment), with an optional pause
between them, and a piece may also be a ``threading.Event`` the server waits for (a gate the test
opens). Then the connection is kept for the next request, or closed::

    with RawHttpServer([Reply([head(200, chunked=True), chunk(b"hi"), LAST_CHUNK])]) as server:
        ...  # a client posts to server.base_url + "/chat/completions"
        assert server.requests[0].path == "/v1/chat/completions"
        assert server.wait_until(lambda: server.client_closed)

The server records every request (``requests``), counts accepted connections (``connections``), notes
when a client closed one (``client_closed``: connection index -> monotonic time; noticed also while it
pauses between pieces) and which connections are over, closed by either side (``ended``). A request
beyond the script is answered 500 and its connection closed. Stdlib only, so it runs unchanged in a
gevent-patched process (threads are then greenlets).

Below the server, builders for the bytes of a response and of an OpenAI chat-completions stream.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

_TICK_S = 0.02  # how often a waiting connection looks whether its client went away


@dataclass(frozen=True)
class Reply:
    pieces: Sequence[bytes | threading.Event]
    pause_s: float = 0.0  # between two byte pieces
    then: Literal["keep", "close"] = "keep"


NO_ANSWER = Reply((), then="close")  # read the request, close the connection without a byte


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    connection: int  # index of the connection, in order of acceptance

    def json(self) -> Any:
        return json.loads(self.body)


class _ClientGone(Exception):
    pass


class RawHttpServer:
    """A threaded scripted server on a free loopback port; use it as a context manager."""

    def __init__(self, replies: Iterable[Reply] = ()) -> None:
        self.requests: list[RecordedRequest] = []
        self.connections = 0  # accepted so far
        self.client_closed: dict[int, float] = {}  # connection index -> when its client closed it
        self.ended: set[int] = set()  # connections this server is done with, closed by either side
        self.port = 0
        self._script: deque[Reply] = deque(replies)
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def script(self, *replies: Reply) -> None:
        """More replies, played after those already scripted."""
        with self._changed:
            self._script.extend(replies)

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> bool:
        """Whether ``predicate`` (which may read the recorded state) turned true within ``timeout``."""
        with self._changed:
            return bool(self._changed.wait_for(predicate, timeout))

    def start(self) -> RawHttpServer:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            with socket.create_connection(("127.0.0.1", self.port)):  # wakes accept()
                pass
            self._thread.join(timeout=5)
        with self._changed:
            for sock in self._open:
                _shutdown(sock)
        if self._listener is not None:
            self._listener.close()
        self._listener = self._thread = None

    def __enter__(self) -> RawHttpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            conn, _ = self._listener.accept()
            if self._stopping.is_set():
                conn.close()
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._changed:
                index = self.connections
                self.connections += 1
                self._open.add(conn)
                self._changed.notify_all()
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        buffer = bytearray()
        try:
            while True:
                request = _read_request(conn, buffer, index)
                with self._changed:
                    self.requests.append(request)
                    reply = self._script.popleft() if self._script else _UNSCRIPTED
                    self._changed.notify_all()
                self._play(conn, reply)
                if reply.then == "close":
                    return
        except (_ClientGone, OSError):  # OSError: a reset, or (gevent) a read cancelled by stop()
            if not self._stopping.is_set():
                with self._changed:
                    self.client_closed[index] = time.monotonic()
                    self._changed.notify_all()
        finally:
            conn.close()
            with self._changed:
                self._open.discard(conn)
                self.ended.add(index)
                self._changed.notify_all()

    def _play(self, conn: socket.socket, reply: Reply) -> None:
        for number, piece in enumerate(reply.pieces):
            if isinstance(piece, bytes):
                if number and reply.pause_s:
                    self._wait(conn, reply.pause_s)
                conn.sendall(piece)
            else:
                self._wait(conn, None, gate=piece)

    def _wait(self, conn: socket.socket, seconds: float | None, gate: threading.Event | None = None) -> None:
        """Wait for ``seconds`` or for ``gate`` (at most 30 s); raise _ClientGone as soon as the client closes."""
        deadline = time.monotonic() + (seconds if seconds is not None else 30.0)
        while not (gate is not None and gate.is_set()) and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([conn], [], [], min(remaining, _TICK_S))
            if readable:
                if not conn.recv(1, socket.MSG_PEEK):
                    raise _ClientGone
                time.sleep(_TICK_S)  # the client sent more than we want to read now


_UNSCRIPTED = Reply(
    [b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 19\r\nConnection: close\r\n\r\nno scripted reply\r\n"],
    then="close",
)


def _read_request(conn: socket.socket, buffer: bytearray, index: int) -> RecordedRequest:
    """One request off the connection (``buffer`` keeps what was read beyond it); _ClientGone at EOF."""
    while b"\r\n\r\n" not in buffer:
        _receive(conn, buffer)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    buffer[:] = rest
    while len(buffer) < length:
        _receive(conn, buffer)
    body = bytes(buffer[:length])
    del buffer[:length]
    return RecordedRequest(method, path, headers, body, index)


def _receive(conn: socket.socket, buffer: bytearray) -> None:
    data = conn.recv(65536)
    if not data:
        raise _ClientGone
    buffer += data


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# --- response bytes --------------------------------------------------------------------------------


def head(status: int = 200, *, chunked: bool = False, length: int | None = None,
         content_type: str = "text/event-stream", extra: Sequence[str] = ()) -> bytes:
    """A status line and headers. Neither ``chunked`` nor ``length``: the body ends with the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}", *extra]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


def whole(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    """A complete response with a Content-Length body."""
    return head(status, length=len(body), content_type=content_type) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def bytewise(data: bytes) -> list[bytes]:
    """``data`` as pieces of one byte each."""
    return [data[i:i + 1] for i in range(len(data))]


# --- OpenAI chat-completions streams ---------------------------------------------------------------


def sse(payload: object) -> bytes:
    """One server-sent event carrying ``payload`` as JSON (a ``str`` is sent as is)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


def delta_chunk(content: str | None = None, *, reasoning: str | None = None, role: str | None = None,
                finish_reason: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def sample_stream_body(*, done: bool = True) -> bytes:
    """A vLLM-like answer: an empty role chunk, reasoning, content, a finish reason, usage, ``[DONE]``."""
    events = [
        sse(delta_chunk("", role="assistant")),
        sse(delta_chunk(reasoning="Think")),
        sse(delta_chunk(reasoning="ing.")),
        sse(delta_chunk("Hel")),
        sse(delta_chunk("lo, ")),
        sse(delta_chunk("wörld ✓")),
        sse(delta_chunk(finish_reason="length")),
        sse(usage_chunk(7, 4)),
    ]
    if done:
        events.append(DONE)
    return b"".join(events)


SAMPLE_EVENTS = [  # what sample_stream_body() means, as (kind, value...) lists
    ["reasoning", "Think"], ["reasoning", "ing."],
    ["delta", "Hel"], ["delta", "lo, "], ["delta", "wörld ✓"],
    ["usage", 7, 4], ["done", "length"],
]


def chunked_stream(body: bytes, *, per_event: bool = True, last: bool = True) -> bytes:
    """``body`` as a chunked 200 response: one chunk per SSE event (or one for all), then the last chunk."""
    parts = [event + b"\n\n" for event in body.split(b"\n\n") if event] if per_event else [body]
    return head(200, chunked=True) + b"".join(chunk(part) for part in parts) + (LAST_CHUNK if last else b"")
