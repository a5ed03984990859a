"""OpenAI-compatible chat completions (vLLM, SGLang, EMD's router, the simulator, any manual URL).

Streaming is the hot path of the relay: one ``requests`` session per call (a shared pool costs a scan
per request at thousands of streams), raw chunks read as they arrive, and a small SSE splitter that
only looks at ``data:`` lines, which is all the OpenAI stream uses. Per relayed token that is one
``json.loads`` and a few slices.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import requests

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


def _error_message(response: requests.Response) -> str:
    try:
        raw = response.raw.read(_ERROR_BODY_LIMIT, decode_content=True) or b""
    except Exception:
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {response.status_code}: {text[:300] or response.reason}"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or json.dumps(error)[:300]
        else:
            message = str(error)
        return f"HTTP {response.status_code}: {message}"
    return f"HTTP {response.status_code}: {text[:300]}"


def _shutdown(response: requests.Response) -> None:
    """Wake a reader blocked in recv() from another thread: close() alone does not, shutdown() does."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    response.close()


def _chunks(response: requests.Response) -> Iterator[bytes]:
    raw = response.raw
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.read_chunked(None, decode_content=True)
        return
    # Content-Length or close-delimited bodies: read what has arrived, not the whole body.
    while True:
        data = raw.read1(65536) if hasattr(raw, "read1") else raw.read(1024)
        if not data:
            return
        yield data


def stream(target: Target, request: ChatRequest, cancel: Cancellation) -> Iterator[StreamEvent]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    session = requests.Session()
    cancel.on_cancel(session.close)
    try:
        try:
            response = session.post(
                target.chat_url,
                data=json.dumps(build_body(target, request)),
                headers=headers,
                stream=True,
                timeout=(request.connect_timeout_s, request.read_timeout_s),
            )
        except requests.ConnectTimeout as exc:
            raise ProviderError("timeout", f"connecting to {target.chat_url} timed out") from exc
        except requests.ReadTimeout as exc:
            raise ProviderError("timeout", f"no answer from {target.chat_url} in {request.read_timeout_s:g} s") from exc
        except requests.ConnectionError as exc:
            if cancel.is_set():
                raise ProviderError("cancelled", "cancelled") from exc
            raise ProviderError("upstream", f"cannot connect to {target.chat_url}") from exc
        cancel.on_cancel(lambda: _shutdown(response))
        with response:
            if response.status_code >= 400:
                raise ProviderError(code_for_status(response.status_code), _error_message(response),
                                    status=response.status_code)
            if request.stream:
                yield from _stream_events(response, cancel, target)
            else:
                yield from _whole_answer(response, target)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, OSError) as exc:
        if cancel.is_set():
            return
        if isinstance(exc, requests.ReadTimeout) or "timed out" in str(exc):
            raise ProviderError("timeout", f"no data from {target.chat_url} for {request.read_timeout_s:g} s") from exc
        raise ProviderError("upstream", f"connection to {target.chat_url} broke: {exc.__class__.__name__}") from exc
    finally:
        session.close()


def _stream_events(response: requests.Response, cancel: Cancellation, target: Target) -> Iterator[StreamEvent]:
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


def _whole_answer(response: requests.Response, target: Target) -> Iterator[StreamEvent]:
    try:
        body = response.json()
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
