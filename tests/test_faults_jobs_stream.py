"""Fault injection through jobs: stress tests (``evalscope perf``, streaming) and evaluations (``evalscope
eval``, plain JSON answers) against manual endpoints served by the scripted raw-socket server, each failing
in one way. Every job of the module runs at once under one worker (the real evalscope, 1-2 requests each);
each test then asserts one job's final status, that its reason names the cause in an operator's words, and
that its pages answer.

Stress: malformed SSE, a stream without its usage chunk, a stream cut before its last chunk, an error sent
mid-stream, 403, 429 without Retry-After, a refused connection, a trickle of one byte a second (bounded by
the job's total timeout) and a 10 MB answer (completed, its level sane). Evaluations: a body that is not
JSON, a body shorter than its Content-Length, 403, 429 without Retry-After and a 10 MB answer (completed).
``tests/test_faults_jobs.py`` has 429 with Retry-After, 500 and a server that never answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from backend.app import create_app
from backend.stress.kind import diagnose
from backend.stress.outputs import log_errors
from tests.conftest import TEST_MODELS
from tests.support.evaluations import bundled_id, eval_settings
from tests.support.evaluations import finished as evaluation_finished
from tests.support.raw_http import (
    DONE,
    LAST_CHUNK,
    RawHttpServer,
    Reply,
    bytewise,
    chunk,
    delta_chunk,
    head,
    sse,
    usage_chunk,
)
from tests.support.simulator import SimulatorProcess, free_port
from tests.support.stress import ThreadWorker
from tests.support.stress import finished as stress_finished

pytestmark = pytest.mark.timeout(240)

COPIES = 8  # replies scripted per server: a job's requests, and the worker's probes after them
FORBIDDEN = b'{"error": {"message": "this key may not use model m"}}'
THROTTLED = b'{"error": {"message": "rate limit reached, slow down"}}'
PIECE = "0123456789" * 10_000  # 100,000 characters; 100 of them make a 10 MB answer
CLOSE = ["Connection: close"]


def streamed(*events: bytes, last: bool = True) -> list[bytes]:
    return [head(200, chunked=True, extra=CLOSE), *(chunk(event) for event in events),
            *([LAST_CHUNK] if last else [])]


def whole(status: int, body: bytes) -> bytes:
    """A complete JSON answer on a connection the server then closes (and says so, so that the client does
    not send its next request on it and get a reset instead of the answer under test)."""
    return head(status, length=len(body), content_type="application/json", extra=CLOSE) + body


def completion(content: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()


OPENING = [sse(delta_chunk("", role="assistant")), sse(delta_chunk("Hi"))]
STRESS_FAULTS: dict[str, Reply] = {
    "malformed_sse": Reply(streamed(*OPENING, b"data: {not json\n\n", DONE), then="close"),
    "malformed_only": Reply(streamed(b"data: {not json\n\n", DONE), then="close"),
    "no_usage": Reply(streamed(*OPENING, sse(delta_chunk(finish_reason="stop")), DONE), then="close"),
    "cut": Reply(streamed(*OPENING, last=False), then="close"),  # closed before the last chunk
    "error_mid_stream": Reply(streamed(*OPENING, sse({"error": {"message": "the model worker crashed"}})),
                              then="close"),
    "forbidden": Reply([whole(403, FORBIDDEN)], then="close"),
    "throttled": Reply([whole(429, THROTTLED)], then="close"),  # no Retry-After
    "trickle": Reply(bytewise(b"".join(streamed(*OPENING, sse(usage_chunk(5, 1)), DONE))), pause_s=1.0,
                     then="close"),
    "huge": Reply(streamed(*[sse(delta_chunk(PIECE))] * 100, sse(usage_chunk(5, 100)), DONE), then="close"),
}
EVAL_FAULTS: dict[str, Reply] = {
    "not_json": Reply([whole(200, b"{not json")], then="close"),
    "cut": Reply([head(200, length=500, content_type="application/json", extra=CLOSE), completion("A")[:100]],
                 then="close"),
    "forbidden": Reply([whole(403, FORBIDDEN)], then="close"),
    "throttled": Reply([whole(429, THROTTLED)], then="close"),
    "huge": Reply([whole(200, completion(PIECE * 100))], then="close"),
}


@dataclass
class Ran:
    client: FlaskClient
    stress: dict[str, dict[str, Any]]  # fault -> the finished job
    evaluations: dict[str, dict[str, Any]]
    refused_port: int


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Iterator[Ran]:
    tmp_path = tmp_path_factory.mktemp("faults-jobs")
    app = create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "simulator": {"port": simulator.port},
        "stress": {"outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "stress-logs"),
                   "poll_interval_s": 0.2, "kill_grace_s": 2, "worker_stale_s": 3,
                   "max_concurrent": len(STRESS_FAULTS) + 1},
        "evaluations": {**eval_settings(tmp_path), "max_concurrent": len(EVAL_FAULTS)},
    })
    client = app.test_client()
    servers = {("stress", name): RawHttpServer([reply] * COPIES).start() for name, reply in STRESS_FAULTS.items()}
    servers |= {("eval", name): RawHttpServer([reply] * COPIES).start() for name, reply in EVAL_FAULTS.items()}
    refused_port = free_port()
    qa = bundled_id(client, "qa")
    ids: dict[tuple[str, str], str] = {}
    for (kind, name), server in servers.items():
        manual = {"base_url": server.base_url, "model_name": "m"}
        if kind == "stress":
            response = client.post("/api/v1/stress-tests", json={
                "manual_config": manual, "concurrency": [1], "requests": 1 if name == "trickle" else 2,
                "output_tokens": 8, "prompt": "hi", "read_timeout_s": 5, "total_timeout_s": 3 if name == "trickle"
                else 30})
        else:
            response = client.post("/api/v1/evaluations", json={"manual_config": manual, "limit": 1,
                                                                 "datasets": [qa]})
        assert response.status_code == 201, response.json
        ids[kind, name] = response.json["id"]
    response = client.post("/api/v1/stress-tests", json={
        "manual_config": {"base_url": f"http://127.0.0.1:{refused_port}/v1", "model_name": "m"},
        "concurrency": [1], "requests": 1, "prompt": "hi"})
    assert response.status_code == 201, response.json
    ids["stress", "refused"] = response.json["id"]
    worker = ThreadWorker(app)
    try:
        jobs = {key: (stress_finished if key[0] == "stress" else evaluation_finished)(client, job_id, timeout=150)
                for key, job_id in ids.items()}
    finally:
        worker.close()
        for server in servers.values():
            server.stop()
    yield Ran(client, {name: job for (kind, name), job in jobs.items() if kind == "stress"},
              {name: job for (kind, name), job in jobs.items() if kind == "eval"}, refused_port)


def stress_job(ran: Ran, fault: str) -> dict[str, Any]:
    job = ran.stress[fault]
    for page in (f"/stress-tests/{job['id']}", f"/results/{job['id']}"):
        assert ran.client.get(page).status_code == 200, page
    return job


def evaluation_job(ran: Ran, fault: str) -> dict[str, Any]:
    job = ran.evaluations[fault]
    assert ran.client.get(f"/evaluations/{job['id']}").status_code == 200
    return job


# --- stress tests ----------------------------------------------------------------------------------


def test_stress_malformed_sse_is_named(ran: Ran) -> None:
    # evalscope skips the event that is not JSON, finds no usage chunk and stops ("Unable to retrieve usage
    # information"); the worker's probe of the endpoint says why.
    job = stress_job(ran, "malformed_sse")
    assert job["status"] == "failed", job
    assert job["error"].startswith("evalscope exited with code 1: the endpoint's stream is malformed: "
                                   "an event's data is not JSON (not shown); with no tokenizer set"), job["error"]
    assert "Unable to retrieve usage information" in job["error"]
    assert "{not json" not in job["error"]  # a body that is not a JSON error is never echoed


def test_stress_stream_without_usage_is_named(ran: Ran) -> None:
    job = stress_job(ran, "no_usage")
    assert job["status"] == "failed", job
    assert job["error"].startswith("evalscope exited with code 1: the endpoint's stream carries no usage chunk "
                                   "(token counts); with no tokenizer set, evalscope could not count tokens"), \
        job["error"]


def test_stress_stream_of_only_malformed_events_fails(ran: Ran) -> None:
    """evalscope counts such answers as successes with 0 tokens; the job fails and says why."""
    job = stress_job(ran, "malformed_only")
    assert job["status"] == "failed", job
    assert job["error"].startswith("no answer could be read: the endpoint's stream is malformed"), job["error"]
    assert "the 2 requests it counted as answered carry no tokens" in job["error"], job["error"]


def test_stress_stream_cut_midway_keeps_the_reason_on_the_next_line(ran: Ran) -> None:
    job = stress_job(ran, "cut")
    assert job["status"] == "failed", job
    # the traceback's last exception, which carries the cause given on the next line of the first one
    assert job["error"] == ("all 2 requests failed: aiohttp.client_exceptions.ClientPayloadError: Response payload "
                            "is not completed: <TransferEncodingError: 400, message='Not enough data to satisfy "
                            "transfer length header.'>"), job["error"]
    assert job["failed_requests"] == 2


def test_stress_error_sent_mid_stream_is_named(ran: Ran) -> None:
    job = stress_job(ran, "error_mid_stream")
    assert job["status"] == "failed", job
    assert job["error"] == "all 2 requests failed: the endpoint's stream reported an error: the model worker crashed", \
        job["error"]
    assert job["failed_requests"] == 2


@pytest.mark.parametrize(("fault", "reason"), [
    ("forbidden", "HTTP 403: this key may not use model m"),
    ("throttled", "HTTP 429: rate limit reached, slow down"),
])
def test_stress_refusals_by_status_are_named(ran: Ran, fault: str, reason: str) -> None:
    job = stress_job(ran, fault)
    assert job["status"] == "failed", job
    assert job["error"] == f"all 2 requests failed: {reason}", job["error"]
    assert job["failed_requests"] == 2


def test_stress_refused_connection_is_named(ran: Ran) -> None:
    job = stress_job(ran, "refused")
    assert job["status"] == "failed", job
    assert job["error"] == f"cannot connect to http://127.0.0.1:{ran.refused_port}"


def test_stress_trickle_is_bounded_by_the_total_timeout(ran: Ran) -> None:
    job = stress_job(ran, "trickle")
    assert job["status"] == "failed", job
    assert job["error"].startswith("all 1 requests failed: "), job["error"]
    assert "timeout" in job["error"].lower() or "timed out" in job["error"].lower(), job["error"]


def test_stress_10_mb_answer_completes_with_a_sane_level(ran: Ran) -> None:
    job = stress_job(ran, "huge")
    assert job["status"] == "completed", job
    assert job["error"] is None and job["failed_requests"] == 0
    (level,) = job["levels"]
    assert (level["requests"], level["succeeded"], level["failed"]) == (2, 2, 0)
    assert (level["avg_input_tokens"], level["avg_output_tokens"]) == (5.0, 100.0)  # the usage chunk's
    assert level["latency_s"]["avg"] > 0 and level["ttft_ms"]["avg"] > 0


# --- evaluations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "reason"), [
    ("not_json", "JSONDecodeError: Expecting property name enclosed in double quotes"),
    ("cut", "APIConnectionError: Connection error. <- "),  # and then its cause, checked below
    ("forbidden", "PermissionDeniedError: Error code: 403 - this key may not use model m"),
    ("throttled", "RateLimitError: Error code: 429 - rate limit reached, slow down"),
])
def test_evaluation_faults_fail_the_cell_naming_them(ran: Ran, fault: str, reason: str) -> None:
    job = evaluation_job(ran, fault)
    assert job["status"] == "failed", job
    (cell,) = job["cells"]
    assert cell["status"] == "failed" and cell["error"].startswith(reason), cell
    if fault == "cut":  # the cause the OpenAI client's "Connection error." was raised from
        assert "RemoteProtocolError: peer closed connection without sending complete message body (received 100 " \
               "bytes, expected 500)" in cell["error"], cell
    assert job["error"] == f"1 of 1 cells failed: {cell['error']}"
    assert cell.get("score") is None  # a failed cell has no score, never 0


def test_evaluation_10_mb_answer_completes(ran: Ran) -> None:
    job = evaluation_job(ran, "huge")
    assert job["status"] == "completed", job
    (cell,) = job["cells"]
    assert cell["status"] == "completed" and not cell["error"], cell


# --- the pieces, directly --------------------------------------------------------------------------


def test_diagnose_reads_only_the_start_of_a_10_mb_error() -> None:
    # 10 MB announced, 4 KB sent, the rest held back: reading the whole body would wait for it (and hold
    # 10 MB); the message is in the first bytes.
    held = threading.Event()
    start = b'{"error": {"message": "overloaded"}}' + b" " * 8192
    reply = Reply([head(500, length=10_000_000, content_type="application/json"), start, held], then="close")
    with RawHttpServer([reply]) as server:
        try:
            reason = diagnose({"provider": "openai", "chat_url": server.base_url + "/chat/completions",
                               "model_id": "m"}, None, timeout_s=2)
        finally:
            held.set()
    assert reason == "HTTP 500: overloaded"


def test_diagnose_names_what_is_wrong_with_a_stream() -> None:
    target = {"provider": "openai", "model_id": "m"}
    cases = [
        (streamed(*OPENING, b"data: [1, 2\n\n", DONE), "the endpoint's stream is malformed: an event's data is "
                                                       "not JSON (not shown)"),
        (streamed(*OPENING, DONE), "the endpoint's stream carries no usage chunk (token counts)"),
        (streamed(*OPENING, sse({"object": "error", "message": "bad"}), DONE),
         "the endpoint's stream reported an error: bad"),
        (streamed(*OPENING, sse(usage_chunk(5, 1)), DONE), None),
    ]
    with RawHttpServer([Reply(pieces) for pieces, _ in cases]) as server:
        for _pieces, expected in cases:
            assert diagnose({**target, "chat_url": server.base_url + "/chat/completions"}, None, timeout_s=2,
                            stream=True) == expected
        assert server.requests[0].json()["stream"] is True


ERROR_LINE = "2026-12-02 16:00:08 - evalscope - \x1b[31mERROR\x1b[0m: Traceback (most recent call last):\n"
FRAME = '  File "client_proto.py", line 145, in connection_lost\n    uncompleted = self._parser.feed_eof()\n'
NEXT = "\x1b[0m\nRunning[perf]:   0%|          | 0/1 [00:03<?, ?it/s]\n2026-12-02 16:00:09 - evalscope - INFO: done\n"


@pytest.mark.parametrize(("logged", "expected"), [
    (ERROR_LINE + FRAME + "aiohttp.http_exceptions.TransferEncodingError: 400, message:\n"
     "  Not enough data to satisfy transfer length header.\n" + NEXT,
     "aiohttp.http_exceptions.TransferEncodingError: 400, message: Not enough data to satisfy transfer length "
     "header."),
    (ERROR_LINE + FRAME + "asyncio.exceptions.CancelledError\n\nThe above exception was the direct cause of the "
     "following exception:\n\nTraceback (most recent call last):\n" + FRAME + "TimeoutError\n" + NEXT,
     "TimeoutError"),
])
def test_log_errors_takes_the_exception_a_traceback_ends_with(tmp_path: Path, logged: str, expected: str) -> None:
    log = tmp_path / "perf.log"
    log.write_text(logged)
    assert log_errors(log) == [expected]
