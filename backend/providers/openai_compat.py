"""OpenAI-compatible chat completions (vLLM, SGLang, EMD's router, the simulator, any manual URL).

Streaming is the relay's hot path, so the exchange is parsed by ``httptools`` (llhttp, the HTTP parser
of Node.js and uvicorn) as bytes arrive, and the body goes through a small SSE splitter that only looks
at ``data:`` lines, which is all the OpenAI stream uses: per token one ``json.loads`` and a few slices.

Two ways to drive one exchange (``_Exchange``), with the same parsing and the same errors:

* ``stream`` reads the socket in a loop and yields events: for a thread, a greenlet, a check, a test.
* ``stream_to`` hands each event to a callback. Under gevent, for plain-HTTP streams, the socket is read
  by the event loop itself: a callback on the file descriptor parses what arrived and emits the tokens,
  with no greenlet switch and no failed ``recv`` per token, and the tokens of several streams that
  arrive together reach the relay in one wake-up (measured in docs/PERFORMANCE.md). Elsewhere it
  iterates ``stream``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httptools

from backend.cooperative import gevent_loop
from backend.providers.base import (
    Cancellation,
    ChatRequest,
    Delta,
    Done,
    ProviderError,
    Reasoning,
    StreamEvent,
    Target,
    Usage,
    code_for_status,
)

log = logging.getLogger(__name__)

_ERROR_BODY_LIMIT = 4096
_WHOLE_BODY_LIMIT = 64 * 1024 * 1024  # a non-streamed answer larger than this is not an answer
_READ_SIZE = 65536
_END_GRACE_S = 0.5  # after "[DONE]", how long the end of the response is awaited to keep the connection


def build_messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        if not message.images:
            messages.append({"role": message.role, "content": message.text})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url",
             "image_url": {"url": f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"}}
            for image in message.images
        ]
        if message.text:
            parts.append({"type": "text", "text": message.text})
        messages.append({"role": message.role, "content": parts})
    return messages


def build_body(target: Target, request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model_id,
        "messages": build_messages(request),
        "max_tokens": request.max_tokens,
        "stream": request.stream,
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


class _SseDecoder:
    """The ``data`` of each server-sent event, fed as it arrives, decoded as OpenAI stream chunks.

    Emits ``Reasoning`` and ``Delta`` as they come; ``finish`` emits the ``Usage`` (if the server sent one)
    and ``Done``. Raises ProviderError for a chunk that is not JSON or that carries an error.
    """

    __slots__ = ("_data_lines", "_emit", "_pending", "_target", "done", "finish_reason", "usage")

    def __init__(self, target: Target, emit: Callable[[StreamEvent], None]) -> None:
        self._target = target
        self._emit = emit
        self._pending = b""
        self._data_lines: list[bytes] = []
        self.done = False  # "data: [DONE]" seen
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> None:
        pending = self._pending + data if self._pending else data
        *lines, self._pending = pending.split(b"\n")
        data_lines = self._data_lines
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data_lines:
                    self._chunk(b"\n".join(data_lines))
                    data_lines.clear()
                    if self.done:
                        return
            elif line.startswith(b"data:"):
                data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
            # comments (":"), "event:", "id:" and "retry:" lines carry nothing for chat completions

    def end_of_body(self) -> None:
        """The body ended: an event not closed by a blank line still counts."""
        if self._pending:
            self.feed(b"\n")
        if self._data_lines and not self.done:
            self._chunk(b"\n".join(self._data_lines))
            self._data_lines.clear()

    def finish(self) -> None:
        if self.usage is not None:
            self._emit(self.usage)
        self._emit(Done(self.finish_reason))

    def _chunk(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderError("upstream", f"{self._target.key}: malformed stream chunk: {data[:120]!r}") from None
        try:
            self._decode(chunk)
        except (AttributeError, TypeError, KeyError, IndexError):  # JSON, but not the shape of a chunk
            raise ProviderError("upstream", f"{self._target.key}: unexpected stream chunk: {data[:120]!r}") from None

    def _decode(self, chunk: Any) -> None:
        if "error" in chunk:
            error = chunk["error"]
            message = (error.get("message") if isinstance(error, dict) else None) or str(error)
            raise ProviderError("upstream", message)
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    self._emit(Reasoning(reasoning))
                content = delta.get("content")
                if content:
                    self._emit(Delta(content))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))


class _Exchange:
    """One response, parsed by httptools as its bytes arrive, its events handed to ``emit``.

    ``feed(data)`` (``b""`` at end of file) raises ProviderError for an HTTP error status, a malformed
    response or stream, or a connection that ends too early; ``complete`` turns true after the last event.
    httptools calls the ``on_*`` methods from inside ``feed_data``; they never raise (an exception there
    would cross C code): a failure is kept in ``_error`` and raised by ``feed``.
    """

    __slots__ = ("_body", "_emit", "_error", "_framed", "_parser", "_reason", "_retry_after", "_sse", "_streaming",
                 "_target", "_url", "bytes_seen", "complete", "headers_done", "keep_alive", "message_complete",
                 "status")

    def __init__(self, target: Target, url: str, streaming: bool, emit: Callable[[StreamEvent], None]) -> None:
        self._target = target
        self._url = url
        self._streaming = streaming
        self._emit = emit
        self._parser = httptools.HttpResponseParser(self)
        self._sse = _SseDecoder(target, emit)
        self._body = bytearray()
        self._reason = ""
        self._retry_after = ""  # a 429's or 503's Retry-After, named in the error so the caller can wait
        self._framed = False  # Content-Length or chunked: the end of the body is known without EOF
        self._error: ProviderError | None = None
        self.status = 0
        self.bytes_seen = 0
        self.headers_done = False
        self.keep_alive = False  # the server lets the connection carry another request
        self.complete = False  # every event has been emitted (the stream's "[DONE]" or its last byte)
        self.message_complete = False  # the response's last byte has been read

    @property
    def reusable(self) -> bool:
        """The connection can carry another request: this response was read to its end, and kept alive."""
        return self.message_complete and self.status < 400 and self.keep_alive

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True
        elif name == b"retry-after":
            self._retry_after = value.decode("latin-1").strip()[:40]

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is complete
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.complete or self._error is not None:
            return
        if self._streaming and self.status < 400:
            try:
                self._sse.feed(body)
                if self._sse.done:
                    self._finish()
            except ProviderError as exc:
                self._error = exc
        elif len(self._body) < (_ERROR_BODY_LIMIT if self.status >= 400 else _WHOLE_BODY_LIMIT):
            self._body += body

    def on_message_complete(self) -> None:
        self.message_complete = True
        if not self.complete and self._error is None:
            self._end_of_body()

    # driving
    def feed(self, data: bytes) -> None:
        """After ``complete`` the rest of the response (a chunked body's end) may still be fed, to reuse the
        connection; events are not emitted twice."""
        if self.message_complete:
            return
        self.bytes_seen += len(data)
        if data:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if self._error is None:
                    raise ProviderError("upstream", f"malformed HTTP response from {self._url}: {exc}") from None
        elif self.complete:
            return  # the events are out; the end of the response never came, so the connection is not reused
        elif not self.headers_done:
            raise ProviderError("upstream", f"{self._url} closed the connection without an answer")
        elif self._framed and self.status < 400:
            raise ProviderError("upstream", f"connection to {self._url} broke: it closed in the middle of the answer")
        elif self._error is None:
            self._end_of_body()  # a body delimited by the end of the connection (or a cut-off error page)
        if self._error is not None:
            error, self._error = self._error, None
            self.complete = True
            raise error

    def _end_of_body(self) -> None:
        try:
            if self.status >= 400:
                message = error_message(self.status, bytes(self._body[:_ERROR_BODY_LIMIT]), self._reason)
                if self._retry_after:
                    wait = self._retry_after
                    message += f" (retry after {wait} s)" if wait.isdigit() else f" (retry after {wait})"
                raise ProviderError(code_for_status(self.status), message, status=self.status)
            if self._streaming:
                self._sse.end_of_body()
                self._finish()
            else:
                _whole_answer(bytes(self._body), self._target, self._emit)
                self.complete = True
        except ProviderError as exc:
            self._error = exc

    def _finish(self) -> None:
        self.complete = True
        self._sse.finish()


_EXCERPT_CHARS = 200


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """An upstream's error message as shown to a client: printable (control characters escaped), bounded."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text.strip())
    return shown if len(shown) <= limit else shown[:limit] + "…"


def error_message(status: int, raw: bytes, reason: str) -> str:
    """``HTTP <status>: <message>``. Only a JSON error body's message is shown (short, escaped); any other
    body (an HTML page, text) is never echoed: a manual URL could point at a page that is not an API."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError:
        body = None
    message = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
        elif isinstance(error, str):
            message = error
        if message is None and isinstance(body.get("detail"), str):  # FastAPI's shape (vLLM's 404s)
            message = body["detail"]
        if message is None and body.get("object") == "error":  # older vLLM
            message = body.get("message")
    if isinstance(message, str) and message.strip():
        return f"HTTP {status}: {excerpt(message)}"
    if raw.strip():
        log.info("HTTP %s from upstream with a body that is not a JSON error (%d bytes): not shown", status, len(raw))
        return f"HTTP {status}: {excerpt(reason, 80) or 'error'} (the response body is not a JSON error; not shown)"
    return f"HTTP {status}: {excerpt(reason, 80) or 'error'}"


_TLS = ssl.create_default_context()  # loading the CA bundle costs milliseconds: once per process


def _request_bytes(target: Target, request: ChatRequest, url: str,
                   keep_alive: bool = False) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, the whole HTTP request); ProviderError for what cannot go into a request line."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderError("bad_request", f"{target.key}: {url!r} is not an http(s) URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c <= " " or c == "\x7f" for c in path):
        raise ProviderError("bad_request", f"{target.key}: the URL path contains spaces or control characters")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    body = json.dumps(build_body(target, request)).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "User-Agent: performance-evaluation-platform",
        "Content-Type: application/json",
        "Accept: " + ("text/event-stream" if request.stream else "application/json"),
        f"Content-Length: {len(body)}",
    ]
    if not keep_alive:
        lines.append("Connection: close")
    if target.api_key:
        if any(c in target.api_key for c in "\r\n\x00"):
            raise ProviderError("bad_request", f"{target.key}: the API key contains a line break")
        lines.append(f"Authorization: Bearer {target.api_key}")
    return parts.scheme, parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _connect(scheme: str, host: str, port: int, url: str, request: ChatRequest, cancel: Cancellation,
             addresses: tuple[str, ...] | None = None) -> socket.socket:
    """A connection to ``host`` (or, when given, to the first of the checked ``addresses`` that answers).

    A refused port, an unknown host and an unreachable address give the same message, so that a manual
    URL cannot be used to scan ports or names (the server log keeps the reason)."""
    try:
        if addresses is None:
            sock = socket.create_connection((host, port), timeout=request.connect_timeout_s)
        else:
            sock = _connect_checked(addresses, port, request.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            sock = _TLS.wrap_socket(sock, server_hostname=host)
    except TimeoutError as exc:
        raise ProviderError("timeout", f"connecting to {url} timed out") from exc
    except OSError as exc:
        if cancel.is_set():
            raise ProviderError("cancelled", "cancelled") from exc
        log.warning("cannot connect to %s: %s", url, exc.strerror or exc.__class__.__name__)
        raise ProviderError("upstream", f"cannot connect to {url}") from exc
    sock.settimeout(request.read_timeout_s)
    return sock


def _connect_checked(addresses: tuple[str, ...], port: int, timeout_s: float) -> socket.socket:
    if not addresses:
        raise OSError("the host name did not resolve")
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


def _shutdown(sock: socket.socket) -> None:
    """Wake a reader blocked in recv() from another thread: close() alone does not, shutdown() does."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def stream(target: Target, request: ChatRequest, cancel: Cancellation) -> Iterator[StreamEvent]:
    """One chat completion over a connection of its own, read in a loop; yields events as they arrive.

    The connection is closed at the end (``stream_to``'s event-loop driver is the one that keeps
    connections alive). No ``requests`` session (~1 ms of CPU per call, measured) and no shared client
    pool (httpx scans its pool on every open and close). Proxy variables are not used: model endpoints
    are reached directly.
    """
    url = target.chat_url
    scheme, host, port, payload = _request_bytes(target, request, url)
    sock = _connect(scheme, host, port, url, request, cancel, target.addresses)
    cancel.on_cancel(lambda: _shutdown(sock))
    events: list[StreamEvent] = []
    exchange = _Exchange(target, url, request.stream, events.append)
    waiting_for_headers = True
    try:
        sock.sendall(payload)
        while not exchange.complete:
            data = sock.recv(_READ_SIZE)
            if cancel.is_set():  # the cancel shut the socket down: that end-of-file is ours, not the server's
                return
            try:
                exchange.feed(data)
            except ProviderError:
                yield from events  # what arrived before the error, in the same read, still counts
                raise
            if waiting_for_headers and exchange.headers_done:
                waiting_for_headers = False
                if request.stream:
                    # From here the caller's deadline (a Cancellation) bounds the stream: a socket timeout
                    # would cost a timer per read, per token.
                    sock.settimeout(None)
            if cancel.is_set():
                return
            if events:
                yield from events
                events.clear()
    except TimeoutError as exc:
        if cancel.is_set():
            return
        raise ProviderError("timeout", f"no data from {url} for {request.read_timeout_s:g} s") from exc
    except OSError as exc:
        if cancel.is_set():
            return
        raise ProviderError("upstream", f"connection to {url} broke: {exc.__class__.__name__}") from exc
    finally:
        sock.close()


def stream_to(target: Target, request: ChatRequest, cancel: Cancellation,
              emit: Callable[[StreamEvent], None]) -> None:
    """``stream``, with each event handed to ``emit``; returns at the end, raises ProviderError.

    Under gevent, a plain-HTTP stream is read by the event loop (see the module's docstring), on a
    kept-alive connection when an idle one to the same server is at hand: ``emit`` is then called from
    the loop, so it must not block. A cancelled call returns quietly.
    """
    url = target.chat_url
    loop = gevent_loop()
    if loop is None or not request.stream or not url.startswith("http://"):
        for event in stream(target, request, cancel):
            emit(event)
        return
    _, host, port, payload = _request_bytes(target, request, url, keep_alive=True)
    # A checked target keeps its connections apart: an idle one to the same name may lead elsewhere.
    server = (host if target.addresses is None else ",".join(target.addresses), port)
    sock = _IDLE.take(server)
    if sock is not None:
        exchange = _Exchange(target, url, True, emit)
        error = _exchange_on_loop(loop, server, sock, payload, exchange, request, cancel)
        if error is None or exchange.bytes_seen or error.code == "timeout" or cancel.is_set():
            if error is not None:
                raise error
            return
        # The server had closed this idle connection (nothing came back): once more on a new one.
    sock = _connect("http", host, port, url, request, cancel, target.addresses)
    error = _exchange_on_loop(loop, server, sock, payload, _Exchange(target, url, True, emit), request, cancel)
    if error is not None:
        raise error


def _exchange_on_loop(loop: Any, server: tuple[str, int], sock: socket.socket, payload: bytes, exchange: _Exchange,
                      request: ChatRequest, cancel: Cancellation) -> ProviderError | None:
    """Send the request, then let the loop feed the response to ``exchange``; the error, or None.

    The connection goes back to the idle pool when the response was read to its end and may be kept:
    after the stream's "[DONE]" the end of the response (a chunked body's last chunk, usually in the next
    packet) is awaited for at most ``_END_GRACE_S``; without it the connection is closed.
    """
    from gevent.event import Event

    url = exchange._url
    finished = Event()
    outcome: list[ProviderError | None] = []
    watcher = loop.io(sock.fileno(), 1)  # 1: readable
    grace = loop.timer(_END_GRACE_S)

    def end(error: ProviderError | None) -> None:
        if not outcome:
            watcher.stop()
            grace.stop()
            outcome.append(error)
            finished.set()

    def on_readable() -> None:
        try:
            data = sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            end(None if cancel.is_set() else
                ProviderError("upstream", f"connection to {url} broke: {exc.__class__.__name__}"))
            return
        try:
            exchange.feed(data)
        except ProviderError as exc:
            end(exc)
            return
        except Exception as exc:  # a bug here must end this stream, not the event loop's callback
            log.exception("reading %s failed unexpectedly", url)
            end(ProviderError("upstream", f"unexpected error: {exc.__class__.__name__}: {exc}"))
            return
        if exchange.message_complete or (exchange.complete and not data):
            end(None)
        elif exchange.complete and not grace.active:
            grace.start(end, None)

    try:
        try:
            sock.settimeout(request.read_timeout_s)
            sock.sendall(payload)
        except OSError as exc:
            if cancel.is_set():
                return None
            return ProviderError("upstream", f"connection to {url} broke: {exc.__class__.__name__}")
        sock.settimeout(0.0)  # the loop calls on_readable when there is data; recv must never wait
        cancel.on_cancel(lambda: end(None))
        watcher.start(on_readable)
        # The answer must begin within the read timeout; after that the caller's deadline bounds it.
        if not finished.wait(request.read_timeout_s) and not exchange.headers_done:
            end(ProviderError("timeout", f"no data from {url} for {request.read_timeout_s:g} s"))
        finished.wait()
    finally:
        end(None)  # an exception in this greenlet (GreenletExit) must not leave the watcher running
        watcher.close()
        grace.close()
        if outcome[0] is None and exchange.reusable and not cancel.is_set():
            _IDLE.give(server, sock)
        else:
            sock.close()
    return outcome[0]


class _IdlePool:
    """Kept-alive connections to plain-HTTP model servers, waiting for the next stream, per (host, port).

    Used only by the event-loop reader, from the gevent hub's thread: no lock. A connection comes back
    only after a response read to its end that the server agreed to keep alive. One idle for longer than
    ``IDLE_S`` is closed: servers close theirs (uvicorn, which vLLM and SGLang run on, after 5 s), and a
    connection the server has closed is noticed before it is used (a peek says end-of-file).
    """

    IDLE_S = 4.0
    MAX_PER_SERVER = 2048

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[float, socket.socket]]] = {}

    def take(self, server: tuple[str, int]) -> socket.socket | None:
        stack = self._idle.get(server)
        now = time.monotonic()
        while stack:
            since, sock = stack.pop()  # the most recently used first: the most likely to be open
            if now - since < self.IDLE_S and _still_open(sock):
                return sock
            sock.close()
        return None

    def give(self, server: tuple[str, int], sock: socket.socket) -> None:
        stack = self._idle.setdefault(server, [])
        now = time.monotonic()
        while stack and now - stack[0][0] >= self.IDLE_S:  # the oldest wait at the bottom
            stack.pop(0)[1].close()
        if len(stack) >= self.MAX_PER_SERVER:
            sock.close()
            return
        stack.append((now, sock))


def _still_open(sock: socket.socket) -> bool:
    """An idle connection is usable when nothing is waiting on it: not the server's end-of-file, not stray data."""
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (end-of-file) or a byte nobody asked for: not usable
    except BlockingIOError:
        return True  # nothing there: open
    except OSError:
        pass
    return False


_IDLE = _IdlePool()


def _whole_answer(raw: bytes, target: Target, emit: Callable[[StreamEvent], None]) -> None:
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        message = choice.get("message") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ProviderError("upstream", f"{target.key}: malformed completion response") from exc
    if message.get("reasoning_content"):
        emit(Reasoning(message["reasoning_content"]))
    if message.get("content"):
        emit(Delta(message["content"]))
    if body.get("usage"):
        emit(Usage(body["usage"].get("prompt_tokens"), body["usage"].get("completion_tokens")))
    emit(Done(choice.get("finish_reason")))
