"""Fault injection through the platform's inference route: a manual OpenAI-compatible endpoint served by a
scripted raw-socket server, and Bedrock models served by the local event-stream server, fail in every way
an upstream can. Each time the failing column ends with its error category and message, the run is stored
with that result, and a healthy simulator model asked in the same run still answers in full."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from backend.app import create_app
from backend.db import db
from backend.inference.models import InferenceRun
from backend.providers import bedrock
from tests.conftest import TEST_MODELS
from tests.support.bedrock_server import BedrockServer
from tests.support.raw_http import (
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
    sse,
    usage_chunk,
    whole,
)
from tests.support.simulator import SimulatorProcess, free_port

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 1.5  # inference.model_timeout_s for these tests: every hang is bounded by it


FAULT_MODELS = {  # Bedrock models whose ids pick a fault mode of tests/support/bedrock_server.py
    "bedrock-broken-frame": "test.broken-frame", "bedrock-hang": "test.hang",
    "bedrock-trickle": "test.trickle", "bedrock-huge": "test.huge",
}


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess,
               bedrock_server: BedrockServer) -> Iterator[Flask]:
    """An app like conftest's, its catalogue with the fault models, Bedrock credentials and a short timeout."""
    tmp_path = tmp_path_factory.mktemp("faults")
    models = yaml.safe_load(Path(TEST_MODELS).read_text())
    for key, model_id in FAULT_MODELS.items():
        models["models"][key] = {"name": key, "provider": "bedrock", "model_id": model_id}
    models_file = tmp_path / "fault-models.yaml"
    models_file.write_text(yaml.safe_dump(models))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock_server.url)
        for name, value in {"AWS_ACCESS_KEY_ID": "AKIDFAULTFAULT", "AWS_SECRET_ACCESS_KEY": "fault-secret",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(name, value)
        yield from _app_with_faults(tmp_path, models_file, simulator)


def _app_with_faults(tmp_path: Path, models_file: Path, simulator: SimulatorProcess) -> Iterator[Flask]:
    fault = create_app({
        "database": {"path": str(tmp_path / "faults.db")},
        "logging": {"dir": str(tmp_path / "fault-logs")},
        "catalog": {"models_file": str(models_file)},
        "simulator": {"port": simulator.port},
        "inference": {"model_timeout_s": TIMEOUT_S, "heartbeat_s": 0.5},
    })
    # Bedrock's client is made once per region and timeouts: made now, its first use is not slowed by
    # botocore loading its service model, which on a busy machine can take longer than TIMEOUT_S.
    settings = fault.config["PEP"]
    bedrock._client_for(settings["bedrock"].get("region") or settings["aws"]["region"],
                        float(settings["inference"]["connect_timeout_s"]), TIMEOUT_S)
    yield fault


@pytest.fixture
def fault_app(shared_app: Flask) -> Iterator[Flask]:
    """The module's app; a test's changes to its inference settings are undone after it."""
    settings = shared_app.config["PEP"]["inference"]
    saved = dict(settings)
    yield shared_app
    settings.clear()
    settings.update(saved)


@pytest.fixture
def upstream() -> Iterator[RawHttpServer]:
    server = RawHttpServer().start()
    yield server
    server.stop()


def run(app: Flask, body: dict[str, Any]) -> tuple[dict[str, list[Any]], dict[str, Any], float]:
    """POST a multi-inference; its events by name, the stored run, and how long it took."""
    started = time.monotonic()
    response = app.test_client().post("/api/v1/multi-inference", json=body)
    text = response.get_data(as_text=True)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, text
    events: dict[str, list[Any]] = {}
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if lines and lines[0].startswith("event: "):
            data = "\n".join(line[len("data: "):] for line in lines[1:])
            events.setdefault(lines[0][len("event: "):], []).append(json.loads(data))
    [done] = events["done"]
    with app.app_context():
        stored = db.session.get(InferenceRun, done["run_id"]).as_dict()
    return events, stored, elapsed


def manual(server_url: str) -> dict[str, Any]:
    return {"text": "hi", "models": ["sim-fast"],
            "manual_config": {"base_url": server_url, "model_name": "m", "label": "up"}}


def assert_failed_beside_a_healthy_model(events: dict[str, list[Any]], stored: dict[str, Any], key: str,
                                         code: str) -> dict[str, Any]:
    """The faulty model's error event and stored row agree; sim-fast completed beside it."""
    [error] = [e for e in events.get("model_error", []) if e["model"] == key]
    assert error["error"]["code"] == code, error
    assert [e["model"] for e in events["model_done"]] == ["sim-fast"]
    assert events["done"][0]["succeeded"] == 1 and events["done"][0]["failed"] == 1
    results = {r["model"]: r for r in stored["results"]}
    assert results["sim-fast"]["status"] == "completed" and results["sim-fast"]["output"]
    faulty = results[key]
    assert faulty["status"] == "failed" and faulty["error"] == error["error"]
    assert stored["status"] != "running"
    return faulty


# --- the OpenAI-compatible provider ------------------------------------------------------------------

ERROR_BODY = b'{"error": {"message": "the upstream says no"}}'

HTTP_FAULTS = [
    ("500", Reply([whole(500, b"upstream exploded\n", "text/plain")]), "upstream",  # a non-JSON body is not echoed
     "HTTP 500: Internal Server Error (the response body is not a JSON error; not shown)"),
    ("403", Reply([whole(403, ERROR_BODY)]), "auth", "HTTP 403: the upstream says no"),
    ("429 without Retry-After", Reply([whole(429, ERROR_BODY)]), "throttled", "HTTP 429: the upstream says no"),
    ("429 with Retry-After",
     Reply([head(429, length=len(ERROR_BODY), content_type="application/json", extra=["Retry-After: 17"])
            + ERROR_BODY]),
     "throttled", "HTTP 429: the upstream says no (retry after 17 s)"),
    ("malformed SSE", Reply([head(200, chunked=True), chunk(sse(delta_chunk("a"))), chunk(b"data: {not json\n\n"),
                             LAST_CHUNK]), "upstream", "malformed"),
    ("error mid-stream", Reply([head(200, chunked=True), chunk(sse(delta_chunk("a")) + sse(delta_chunk("b"))),
                                chunk(sse({"error": {"message": "the model fell over"}})), LAST_CHUNK]),
     "upstream", "the model fell over"),
    ("cut mid-chunk", Reply([head(200, chunked=True) + chunk(sse(delta_chunk("a"))) + b"64\r\ndata: {\"cho"],
                            then="close"), "upstream", "broke"),
    ("closed without an answer", NO_ANSWER, "upstream", "closed the connection without an answer"),
]


@pytest.mark.parametrize(("reply", "code", "words"), [fault[1:] for fault in HTTP_FAULTS],
                         ids=[fault[0] for fault in HTTP_FAULTS])
def test_openai_upstream_fault_fails_its_column_only(fault_app: Flask, upstream: RawHttpServer, reply: Reply,
                                                      code: str, words: str) -> None:
    upstream.script(reply)
    events, stored, _ = run(fault_app, manual(upstream.base_url))
    faulty = assert_failed_beside_a_healthy_model(events, stored, "manual:up", code)
    assert words in faulty["error"]["message"]
    if "mid-stream" in words or "fell over" in words:
        assert faulty["output"] == "ab"  # what was answered before the failure is kept


def test_refused_connection(fault_app: Flask) -> None:
    events, stored, _ = run(fault_app, manual(f"http://127.0.0.1:{free_port()}/v1"))
    faulty = assert_failed_beside_a_healthy_model(events, stored, "manual:up", "upstream")
    assert "cannot connect" in faulty["error"]["message"]


def test_hang_before_the_first_byte_is_bounded_by_the_timeout(fault_app: Flask, upstream: RawHttpServer) -> None:
    never = threading.Event()
    upstream.script(Reply([never]))  # reads the request, sends nothing (until the test ends)
    events, stored, elapsed = run(fault_app, manual(upstream.base_url))
    faulty = assert_failed_beside_a_healthy_model(events, stored, "manual:up", "timeout")
    assert f"{TIMEOUT_S:g} s" in faulty["error"]["message"]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 3
    assert upstream.wait_until(lambda: 0 in upstream.ended)  # the upstream call was given up, not leaked


def test_one_byte_a_second_is_bounded_by_the_timeout(fault_app: Flask, upstream: RawHttpServer) -> None:
    answer = chunked_stream(sse(delta_chunk("slow")) + DONE)
    upstream.script(Reply(bytewise(answer), pause_s=1.0))
    events, stored, elapsed = run(fault_app, manual(upstream.base_url))
    faulty = assert_failed_beside_a_healthy_model(events, stored, "manual:up", "timeout")
    assert faulty["output"] == ""
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 3
    assert upstream.wait_until(lambda: 0 in upstream.client_closed)


def test_a_10_mb_answer_is_relayed_and_stored_cut_and_marked(fault_app: Flask, upstream: RawHttpServer) -> None:
    fault_app.config["PEP"]["inference"]["max_stored_chars"] = 1000
    fault_app.config["PEP"]["inference"]["model_timeout_s"] = 30
    piece = "0123456789" * 10_000  # 100,000 characters a delta, 100 deltas: 10 MB
    body = b"".join(sse(delta_chunk(piece)) for _ in range(100)) + sse(delta_chunk(finish_reason="stop")) \
        + sse(usage_chunk(1, 100)) + DONE
    assert len(body) > 10_000_000
    upstream.script(Reply([chunked_stream(body, per_event=False)]))
    events, stored, _ = run(fault_app, manual(upstream.base_url))
    relayed = "".join(e["text"] for e in events["delta"] if e["model"] == "manual:up")
    assert relayed == piece * 100
    results = {r["model"]: r for r in stored["results"]}
    assert results["manual:up"]["status"] == "completed" and results["manual:up"]["truncated"] is True
    assert results["manual:up"]["output"] == (piece * 100)[:1000]
    assert results["sim-fast"]["status"] == "completed" and results["sim-fast"]["truncated"] is False


# --- Bedrock -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "code", "words"), [
    ("bedrock-denied", "auth", "AccessDeniedException"),
    ("bedrock-throttle", "throttled", "ThrottlingException"),
    ("bedrock-midstream", "upstream", "modelStreamErrorException"),
    ("bedrock-broken-frame", "upstream", "checksum"),
    ("bedrock-hang", "timeout", f"{TIMEOUT_S:g} s"),
    ("bedrock-trickle", "timeout", f"{TIMEOUT_S:g} s"),
])
def test_bedrock_fault_fails_its_column_only(fault_app: Flask, model: str, code: str, words: str) -> None:
    events, stored, elapsed = run(fault_app, {"text": "hi", "models": ["sim-fast", model]})
    faulty = assert_failed_beside_a_healthy_model(events, stored, model, code)
    assert words.lower() in faulty["error"]["message"].lower(), faulty
    assert elapsed < TIMEOUT_S + 3


def test_bedrock_unreachable_endpoint(fault_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{free_port()}")
    events, stored, _ = run(fault_app, {"text": "hi", "models": ["sim-fast", "claude35"]})
    faulty = assert_failed_beside_a_healthy_model(events, stored, "claude35", "upstream")
    assert "cannot reach Bedrock endpoint" in faulty["error"]["message"]


def test_a_10_mb_bedrock_answer_is_stored_cut_and_marked(fault_app: Flask) -> None:
    fault_app.config["PEP"]["inference"]["max_stored_chars"] = 1000
    fault_app.config["PEP"]["inference"]["model_timeout_s"] = 30
    events, stored, _ = run(fault_app, {"text": "hi", "models": ["sim-fast", "bedrock-huge"]})
    relayed = "".join(e["text"] for e in events["delta"] if e["model"] == "bedrock-huge")
    assert len(relayed) == BedrockServer.HUGE_CHARS and set(relayed) == {"x"}
    results = {r["model"]: r for r in stored["results"]}
    assert results["bedrock-huge"]["status"] == "completed" and results["bedrock-huge"]["truncated"] is True
    assert results["bedrock-huge"]["output"] == "x" * 1000
