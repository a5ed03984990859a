"""OpenAI-compatible chat completions (vLLM, SGLang, EMD's router, the simulator, any manual URL).

Streaming is the hot path of the relay: one small ``http.client`` connection per call, the body read
as it arrives, and a small SSE splitter that only looks at ``data:`` lines, which is all the OpenAI
stream uses. Per relayed token that is one ``json.loads`` and a few slices.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

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

_ERROR_BODY_LIMIT = 4096


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


def iter_sse_data(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The ``data`` of each server-sent event in a byte stream (multi-line data joined by newlines)."""
    pending = b""
    data_lines: list[bytes] = []
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data_lines:
                    yield b"\n".join(data_lines)
                    data_lines = []
            elif line.startswith(b"data:"):
                data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
            # comments (":"), "event:", "id:" and "retry:" lines carry nothing for chat completions
    if data_lines:
        yield b"\n".join(data_lines)


def _error_message(status: int, raw: bytes, reason: str) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:300] or reason}"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or json.dumps(error)[:300]
        else:
            message = str(error)
        return f"HTTP {status}: {message}"
    return f"HTTP {status}: {text[:300]}"


_TLS = ssl.create_default_context()  # loading the CA bundle costs milliseconds: once per process


def _open(url: str, connect_timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=connect_timeout_s, context=_TLS)
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=connect_timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return connection, path


def _shutdown(connection: http.client.HTTPConnection) -> None:
    """Wake a reader blocked in recv() from another thread: close() alone does not, shutdown() does."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body as it arrives: read1 returns what one chunk (or the socket) has, never waits for all."""
    read1 = response.read1
    while data := read1(65536):
        yield data


def stream(target: Target, request: ChatRequest, cancel: Cancellation) -> Iterator[StreamEvent]:
    """One chat completion over a plain ``http.client`` connection of its own.

    A connection per call costs far less than a ``requests`` session (measured: ~1 ms of CPU per call
    there), and one shared pool would be scanned on every open and close. Proxy variables are not used:
    model endpoints are reached directly.
    """
    url = target.chat_url
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if request.stream else
               "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    body = json.dumps(build_body(target, request)).encode()
    connection, path = _open(url, request.connect_timeout_s)
    cancel.on_cancel(lambda: _shutdown(connection))
    try:
        try:
            connection.connect()
        except TimeoutError as exc:
            raise ProviderError("timeout", f"connecting to {url} timed out") from exc
        except OSError as exc:
            if cancel.is_set():
                raise ProviderError("cancelled", "cancelled") from exc
            raise ProviderError("upstream", f"cannot connect to {url} ({exc.strerror or exc})") from exc
        connection.sock.settimeout(request.read_timeout_s)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        if response.status >= 400:
            raise ProviderError(code_for_status(response.status),
                                _error_message(response.status, response.read(_ERROR_BODY_LIMIT), response.reason),
                                status=response.status)
        if request.stream:
            # From here the caller's deadline (a Cancellation) bounds the stream: a socket timeout would
            # cost a timer per read, per token, on the relay's hot path.
            connection.sock.settimeout(None)
            yield from _stream_events(response, cancel, target)
        else:
            yield from _whole_answer(response, target)
    except TimeoutError as exc:
        if cancel.is_set():
            return
        raise ProviderError("timeout", f"no data from {url} for {request.read_timeout_s:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        if cancel.is_set():
            return
        raise ProviderError("upstream", f"connection to {url} broke: {exc.__class__.__name__}") from exc
    finally:
        connection.close()


def _stream_events(response: http.client.HTTPResponse, cancel: Cancellation, target: Target) -> Iterator[StreamEvent]:
    loads = json.loads
    finish_reason: str | None = None
    usage: Usage | None = None
    for data in iter_sse_data(_chunks(response)):
        if cancel.is_set():
            return
        if data == b"[DONE]":
            break
        try:
            chunk = loads(data)
        except ValueError as exc:
            raise ProviderError("upstream", f"{target.key}: malformed stream chunk: {data[:120]!r}") from exc
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise ProviderError("upstream", message)
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    yield Reasoning(reasoning)
                content = delta.get("content")
                if content:
                    yield Delta(content)
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            usage = Usage(chunk["usage"].get("prompt_tokens"), chunk["usage"].get("completion_tokens"))
    if usage is not None:
        yield usage
    yield Done(finish_reason)


def _whole_answer(response: http.client.HTTPResponse, target: Target) -> Iterator[StreamEvent]:
    try:
        body = json.loads(response.read())
        choice = body["choices"][0]
        message = choice.get("message") or {}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ProviderError("upstream", f"{target.key}: malformed completion response") from exc
    if message.get("reasoning_content"):
        yield Reasoning(message["reasoning_content"])
    if message.get("content"):
        yield Delta(message["content"])
    if body.get("usage"):
        yield Usage(body["usage"].get("prompt_tokens"), body["usage"].get("completion_tokens"))
    yield Done(choice.get("finish_reason"))
