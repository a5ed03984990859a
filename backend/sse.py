"""The one place that writes the Server-Sent Events wire format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response

from backend import metrics
from backend.text import scrub

PING = b": ping\n\n"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: deliver events as they come, not in bursts
    "Connection": "keep-alive",
}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def sse_event(event: str, data: Any, event_id: str | None = None) -> bytes:
    """``event:`` name, optional ``id:``, and one ``data:`` line per line of the JSON payload."""
    payload = data if isinstance(data, str) else _dumps(data)
    head = f"event: {event}\n" if event_id is None else f"id: {event_id}\nevent: {event}\n"
    body = "".join(f"data: {line}\n" for line in payload.split("\n")) if "\n" in payload else f"data: {payload}\n"
    frame = head + body + "\n"
    try:
        return frame.encode()
    except UnicodeEncodeError:  # a lone surrogate from upstream (an error message, say): sent as U+FFFD
        return scrub(frame).encode()


def sse_frame_prefix(event: str, fixed: dict[str, Any], last_key: str) -> bytes:
    """The start of an event whose JSON ends with one string field, for the relay's hot path.

    ``prefix + json.dumps(value).encode() + b"}\\n\\n"`` equals ``sse_event(event, {**fixed, last_key: value})``;
    JSON escapes newlines, so the payload stays on one ``data:`` line.
    """
    head = _dumps({**fixed, last_key: None})
    assert head.endswith("null}")
    return f"event: {event}\ndata: {head[:-5]}".encode()


def sse_response(stream: Iterator[bytes], name: str) -> Response:
    """The response of an event stream, counted in ``pep_sse_streams_active{stream=name}`` while it is open
    (from its first event until it ends or its client goes, which closes ``stream`` too)."""
    counted = _counted(stream, name) if metrics.ENABLED else stream
    return Response(counted, headers=SSE_HEADERS, direct_passthrough=True)


def _counted(stream: Iterator[bytes], name: str) -> Iterator[bytes]:
    gauge = metrics.SSE_STREAMS.labels(name)
    gauge.inc()
    try:
        yield from stream
    finally:
        gauge.dec()
