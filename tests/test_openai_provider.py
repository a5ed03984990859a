"""The OpenAI-compatible provider against a scripted raw-socket server, byte for byte.

``stream`` (the blocking driver) runs in this process. ``stream_to`` under gevent needs a monkey-patched
process, which pytest must never be: those scenarios run in ``tests/support/gevent_stream_check.py``,
a subprocess that prints one JSON result per scenario.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.providers import openai_compat
from backend.providers.base import (
    Cancellation,
    ChatRequest,
    Delta,
    Done,
    Image,
    Message,
    ProviderError,
    Reasoning,
    StreamEvent,
    Target,
    Usage,
)
from tests.support.raw_http import (
    LAST_CHUNK,
    SAMPLE_EVENTS,
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
from tests.support.simulator import PROJECT_ROOT, free_port

# A hang in a driver must fail fast rather than after the default 300 s.
pytestmark = pytest.mark.timeout(60)

GEVENT_CHECK = Path(__file__).parent / "support" / "gevent_stream_check.py"
ANSWER = chunked_stream(sample_stream_body())
Serve = Callable[..., RawHttpServer]
EXPECTED = [
    Reasoning("Think"), Reasoning("ing."),
    Delta("Hel"), Delta("lo, "), Delta("wörld ✓"),
    Usage(7, 4), Done("length"),
]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(reply, ...)`` starts a scripted server; every one is stopped after the test."""
    servers: list[RawHttpServer] = []

    def start(*replies: Reply) -> RawHttpServer:
        servers.append(RawHttpServer(replies).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def target(server: RawHttpServer, api_key: str | None = None) -> Target:
    return Target(key="t", provider="openai", model_id="m", base_url=server.base_url, api_key=api_key)


def ask(**options: Any) -> ChatRequest:
    return ChatRequest(messages=(Message(role="user", text="hi"),), max_tokens=5, **options)


def events_of(server: RawHttpServer, request: ChatRequest | None = None,
              api_key: str | None = None) -> list[StreamEvent]:
    return list(openai_compat.stream(target(server, api_key), request or ask(), Cancellation()))


def failure_of(server: RawHttpServer, request: ChatRequest | None = None) -> tuple[list[StreamEvent], ProviderError]:
    """The events yielded before the call failed, and its error."""
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as raised:
        for event in openai_compat.stream(target(server), request or ask(), Cancellation()):
            events.append(event)
    return events, raised.value


def row(event: StreamEvent) -> list[Any]:
    """An event as gevent_stream_check.py prints it."""
    return [type(event).__name__.lower(), *dataclasses.astuple(event)]


# --- the blocking driver ---------------------------------------------------------------------------


def test_chunked_stream_written_and_read_byte_by_byte(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every boundary (HTTP head, chunk sizes, SSE lines, UTF-8 sequences) falls between two reads."""
    monkeypatch.setattr(openai_compat, "_READ_SIZE", 1)
    server = serve(Reply(bytewise(ANSWER)))
    events = events_of(server)
    # The role chunk with empty content yields nothing; usage comes after the deltas, Done last.
    assert events == EXPECTED
    assert [row(event) for event in events] == SAMPLE_EVENTS


@pytest.mark.parametrize("ending", ["done", "unterminated event"])
def test_body_delimited_by_connection_close(serve: Serve, ending: str) -> None:
    """No Content-Length, not chunked: the body ends with the connection; a last event with no blank
    line after it still counts."""
    body = sample_stream_body(done=ending == "done")
    if ending == "unterminated event":
        body = body.removesuffix(b"\n\n")
    server = serve(Reply([head(200), body], pause_s=0.01, then="close"))
    assert events_of(server) == EXPECTED


def test_body_with_content_length_ends_without_waiting_for_the_connection(serve: Serve) -> None:
    body = sample_stream_body(done=False)
    server = serve(Reply([head(200, length=len(body)), body]))  # then keeps the connection open
    assert events_of(server) == EXPECTED
    assert server.wait_until(lambda: 0 in server.client_closed)  # the client closed its connection


def test_chunked_stream_without_done_ends_with_the_last_chunk(serve: Serve) -> None:
    server = serve(Reply([chunked_stream(sample_stream_body(done=False))]))
    assert events_of(server) == EXPECTED


@pytest.mark.parametrize(("status", "body", "content_type", "code", "message"), [
    (401, b'{"error": {"message": "bad key"}}', "application/json", "auth", "HTTP 401: bad key"),
    (404, b'{"detail": "model m not found"}', "application/json", "not_found", "HTTP 404: model m not found"),
    (429, b'{"error": {"message": "slow down"}}', "application/json", "throttled", "HTTP 429: slow down"),
    # A body that is not a JSON error is never echoed (it could be any page a manual URL points at).
    (500, b"upstream exploded\n", "text/plain", "upstream",
     "HTTP 500: Internal Server Error (the response body is not a JSON error; not shown)"),
])
def test_http_errors_map_to_categories(serve: Serve, status: int, body: bytes, content_type: str, code: str,
                                       message: str) -> None:
    server = serve(Reply([whole(status, body, content_type)]))
    events, error = failure_of(server)
    assert events == []
    assert (error.code, error.message, error.status) == (code, message, status)


def test_malformed_chunk_is_an_upstream_error(serve: Serve) -> None:
    server = serve(Reply([head(200, chunked=True), chunk(sse(delta_chunk("a"))), chunk(sse("{not json")),
                          LAST_CHUNK]))
    _, error = failure_of(server)
    assert error.code == "upstream"
    assert "malformed" in error.message


@pytest.mark.parametrize("shape", [{"choices": {"x": 1}}, {"choices": ["x"]}, {"choices": [{"delta": "x"}]},
                                   {"usage": 5}, [1, 2], 7])
def test_json_that_is_not_a_chunk_is_an_upstream_error(serve: Serve, shape: object) -> None:
    server = serve(Reply([head(200, chunked=True), chunk(sse(delta_chunk("a"))), chunk(sse(shape)), LAST_CHUNK]))
    events, error = failure_of(server)
    assert events == [Delta("a")]
    assert error.code == "upstream"
    assert error.message.startswith("t: unexpected stream chunk")


def test_error_chunk_without_a_message_says_what_it_got(serve: Serve) -> None:
    server = serve(Reply([head(200, chunked=True), chunk(sse({"error": {"message": None, "code": 503}})), LAST_CHUNK]))
    _, error = failure_of(server)
    assert error.code == "upstream"
    assert "503" in error.message


def test_error_chunk_mid_stream_after_deltas(serve: Serve) -> None:
    """The server holds the error back until the client has both deltas (a gate, not a sleep)."""
    gate = threading.Event()
    server = serve(Reply([head(200, chunked=True) + chunk(sse(delta_chunk("a"))) + chunk(sse(delta_chunk("b"))),
                          gate, chunk(sse({"error": {"message": "the model fell over"}})) + LAST_CHUNK]))
    events = openai_compat.stream(target(server), ask(), Cancellation())
    assert [next(events), next(events)] == [Delta("a"), Delta("b")]
    gate.set()
    with pytest.raises(ProviderError) as raised:
        next(events)
    assert (raised.value.code, raised.value.message) == ("upstream", "the model fell over")


def test_deltas_arriving_with_an_error_chunk_are_still_yielded(serve: Serve) -> None:
    body = sse(delta_chunk("a")) + sse(delta_chunk("b")) + sse({"error": {"message": "the model fell over"}})
    server = serve(Reply([head(200, chunked=True) + chunk(body) + LAST_CHUNK]))
    events, error = failure_of(server)
    assert error.message == "the model fell over"
    assert events == [Delta("a"), Delta("b")]


def test_connection_cut_in_the_middle_of_a_chunk(serve: Serve) -> None:
    cut = head(200, chunked=True) + chunk(sse(delta_chunk("a"))) + b"64\r\ndata: {\"cho"
    server = serve(Reply([cut], then="close"))
    events, error = failure_of(server)
    assert events == [Delta("a")]
    assert error.code == "upstream"
    assert "broke" in error.message


def test_cancelled_stream_ends_quietly(serve: Serve) -> None:
    gate = threading.Event()
    server = serve(Reply([head(200, chunked=True) + chunk(sse(delta_chunk("a"))), gate]))
    cancel = Cancellation()
    events = openai_compat.stream(target(server), ask(), cancel)
    assert next(events) == Delta("a")
    cancel.cancel()
    assert list(events) == []


@pytest.mark.parametrize("api_key", [None, "sk-test"])
def test_request_on_the_wire(serve: Serve, api_key: str | None) -> None:
    server = serve(Reply([ANSWER]))
    events_of(server, api_key=api_key)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["connection"] == "close"  # the blocking driver never reuses a connection
    assert request.headers.get("authorization") == (f"Bearer {api_key}" if api_key else None)
    assert request.json() == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_request_body_with_system_temperature_and_image(serve: Serve) -> None:
    server = serve(Reply([ANSWER]))
    image = Image("image/png", b"\x89PNG fake")
    request = ChatRequest(messages=(Message("user", "what is this?", (image,)),), system="Be brief.",
                          max_tokens=9, temperature=0.25)
    events_of(server, request)
    body = server.requests[0].json()
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "image_url",
             "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()}},
            {"type": "text", "text": "what is this?"},
        ]},
    ]
    assert (body["max_tokens"], body["temperature"]) == (9, 0.25)


def test_api_key_with_a_line_break_sends_nothing(serve: Serve) -> None:
    server = serve(Reply([ANSWER]))
    with pytest.raises(ProviderError) as raised:
        events_of(server, api_key="sk-test\r\nX-Injected: yes")
    assert raised.value.code == "bad_request"
    # The next call is the server's first connection and first request: the bad one never connected.
    assert events_of(server) == EXPECTED
    assert server.connections == 1
    assert [request.connection for request in server.requests] == [0]


def test_non_streaming_answer(serve: Serve) -> None:
    completion = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "reasoning_content": "Hmm.", "content": "Hello!"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    server = serve(Reply([whole(200, json.dumps(completion).encode())]))
    assert events_of(server, ask(stream=False)) == [Reasoning("Hmm."), Delta("Hello!"), Usage(3, 2), Done("stop")]
    request = server.requests[0]
    assert request.headers["accept"] == "application/json"
    assert request.json()["stream"] is False
    assert "stream_options" not in request.json()


def test_refused_port_is_an_upstream_error() -> None:
    port = free_port()
    dead = Target(key="t", provider="openai", model_id="m", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ProviderError) as raised:
        list(openai_compat.stream(dead, ask(), Cancellation()))
    assert raised.value.code == "upstream"
    assert "cannot connect" in raised.value.message


def test_stream_to_without_gevent_iterates_stream(serve: Serve) -> None:
    server = serve(Reply([ANSWER]))
    events: list[StreamEvent] = []
    openai_compat.stream_to(target(server), ask(), Cancellation(), events.append)
    assert events == EXPECTED
    assert server.requests[0].headers["connection"] == "close"


# --- stream_to on the gevent event loop (in a subprocess) ------------------------------------------


def gevent_check(scenario: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(GEVENT_CHECK), scenario], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    outcome = json.loads(line)
    assert outcome["scenario"] == scenario
    return outcome


def test_gevent_byte_by_byte_matches_the_blocking_driver(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_compat, "_READ_SIZE", 1)
    blocking = [row(event) for event in events_of(serve(Reply(bytewise(ANSWER))))]
    outcome = gevent_check("bytewise")
    assert outcome["error"] is None
    assert outcome["events"] == blocking == SAMPLE_EVENTS
    assert outcome["idle"] == 1  # read to its end, kept alive: pooled


def test_gevent_keep_alive_reuses_the_connection() -> None:
    outcome = gevent_check("keepalive")
    assert [call["events"] for call in outcome["calls"]] == [SAMPLE_EVENTS, SAMPLE_EVENTS]
    assert [call["error"] for call in outcome["calls"]] == [None, None]
    assert outcome["connections"] == 1
    assert outcome["request_connections"] == [0, 0]
    assert outcome["idle"] == 1
    assert outcome["client_closed"] == []


def test_gevent_stale_idle_connection_is_replaced() -> None:
    outcome = gevent_check("stale")
    assert [call["events"] for call in outcome["calls"]] == [SAMPLE_EVENTS, SAMPLE_EVENTS]
    assert [call["error"] for call in outcome["calls"]] == [None, None]
    assert outcome["peeks"] == [False]  # the pool's peek saw the server's end-of-file
    assert outcome["connections"] == 2
    assert outcome["request_connections"] == [0, 1]


def test_gevent_reused_connection_closed_without_answer_is_retried() -> None:
    outcome = gevent_check("retry")
    assert [call["events"] for call in outcome["calls"]] == [SAMPLE_EVENTS, SAMPLE_EVENTS]  # not twice
    assert [call["error"] for call in outcome["calls"]] == [None, None]
    assert outcome["connections"] == 2
    assert outcome["request_connections"] == [0, 0, 1]
    assert outcome["idle"] == 1


def test_gevent_reused_connection_broken_after_some_bytes_is_not_retried() -> None:
    outcome = gevent_check("no_retry_after_bytes")
    second = outcome["calls"][1]
    assert second["events"] == [["delta", "partial"]]
    assert second["error"]["code"] == "upstream"
    assert "broke" in second["error"]["message"]
    assert outcome["connections"] == 1
    assert outcome["request_connections"] == [0, 0]
    assert outcome["idle"] == 0


def test_gevent_fresh_connection_closed_without_answer_is_not_retried() -> None:
    outcome = gevent_check("no_retry_when_fresh")
    (call,) = outcome["calls"]
    assert call["events"] == []
    assert call["error"]["code"] == "upstream"
    assert "without an answer" in call["error"]["message"]
    assert outcome["connections"] == 1
    assert outcome["request_connections"] == [0]


def test_gevent_done_without_end_of_body_closes_after_the_grace() -> None:
    outcome = gevent_check("done_no_end")
    assert outcome["error"] is None
    assert outcome["events"] == SAMPLE_EVENTS
    assert openai_compat._END_GRACE_S - 0.05 <= outcome["elapsed_s"] < 2.0  # the grace was awaited, once
    assert outcome["closed_by_client"] is True
    assert outcome["idle"] == 0


def test_gevent_end_of_body_within_the_grace_keeps_the_connection() -> None:
    outcome = gevent_check("done_then_end")
    assert outcome["error"] is None
    assert outcome["events"] == SAMPLE_EVENTS
    assert outcome["idle"] == 1
    assert outcome["client_closed"] == []


def test_gevent_cancel_mid_stream() -> None:
    outcome = gevent_check("cancel")
    assert outcome["error"] is None  # returned quietly
    assert outcome["events"] == [["delta", "one"], ["delta", "two"]]  # no Usage, no Done
    assert outcome["closed_after_s"] is not None
    assert outcome["closed_after_s"] < 1.0
    assert outcome["idle"] == 0


def test_gevent_http_error() -> None:
    outcome = gevent_check("unauthorized")
    assert outcome["events"] == []
    assert outcome["error"] == {"code": "auth", "message": "HTTP 401: bad key", "status": 401}
    assert outcome["idle"] == 0
    assert outcome["client_closed"] == [0]


def test_gevent_check_script_leaves_this_process_unpatched() -> None:
    from gevent import monkey

    assert not monkey.is_module_patched("socket")
    assert openai_compat.gevent_loop() is None
