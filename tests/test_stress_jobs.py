"""Stress-test jobs end to end: the API, the worker and the real ``evalscope perf`` against the simulator.

Every test polls against a deadline; none sleeps to assert. Runs are kept small (evalscope costs a few
seconds to start) and several assertions share one run where that stays honest.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.simulator import SimulatorProcess, free_port
from tests.support.stress import SLOW_SIM_ARGS, ThreadWorker, finished, group_gone, job_of, job_pgid, make_app, wait_for


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    """sim-fast at 40 ms a token, 20 tokens: a request takes about 0.8 s, long enough to watch."""
    with SimulatorProcess(seed=11, extra_args=SLOW_SIM_ARGS) as sim:
        yield sim


@pytest.fixture
def stack(tmp_path: Path, env: None, slow_sim: SimulatorProcess) -> Iterator[tuple[Flask, Any]]:
    app = make_app(tmp_path, slow_sim.port)
    worker = ThreadWorker(app)
    yield app, app.test_client()
    worker.close()


def read_sse(response: Any) -> Iterator[tuple[str, Any]]:
    buffer = b""
    for chunk in response.response:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            name, data = "message", []
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    name = "comment"
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            yield name, json.loads("\n".join(data)) if data else None


# --- a whole sweep, watched live ----------------------------------------------------------------


def test_sweep_runs_live_and_is_ingested(stack: tuple[Flask, Any]) -> None:
    app, client = stack
    body = {"model": "sim-fast", "concurrency": [1, 2], "requests": [3, 4], "prompt": "Tell me a story.",
            "output_tokens": 20}
    created = client.post("/api/v1/stress-tests", json=body)
    assert created.status_code == 201, created.json
    job_id = created.json["id"]
    assert created.json["estimated_requests"] == 7

    response = client.get(f"/api/v1/stress-tests/{job_id}/events", buffered=False)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    events = list(read_sse(response))
    names = [name for name, _ in events]
    assert names[-1] == "end"
    percents = [data["percent"] for name, data in events if name == "progress"]
    assert percents == sorted(percents), percents
    assert any(0 < p < 100 for p in percents), percents  # seen rising, not only 0 and 100
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[-1] == "completed" and "running" in statuses
    samples = [data for name, data in events if name == "sample"]
    assert samples and {s["level"] for s in samples} <= {1, 2}
    assert any(s["ttft_ms"] and s["ttft_ms"] > 0 for s in samples)
    assert [data["concurrency"] for name, data in events if name == "level"] == [1, 2]

    job = events[-1][1]
    assert job["status"] == "completed", job
    assert job["error"] is None and job["failed_requests"] == 0 and job["token_source"] == "server"
    assert job["progress"]["percent"] == 100.0
    levels = job["levels"]
    assert [(lv["concurrency"], lv["requests"], lv["succeeded"], lv["failed"]) for lv in levels] \
        == [(1, 3, 3, 0), (2, 4, 4, 0)]
    for level in levels:
        assert level["req_per_s"] > 0 and level["output_tokens_per_s"] > level["req_per_s"]
        assert level["total_tokens_per_s"] >= level["output_tokens_per_s"]
        # 20 tokens at ~40 ms: TTFT in ms (not seconds), latency in seconds.
        assert 1 < level["ttft_ms"]["p50"] < 2000 and level["ttft_ms"]["p99"] >= level["ttft_ms"]["p50"]
        assert 0.3 < level["latency_s"]["avg"] < 10
        assert 10 < level["tpot_ms"]["avg"] < 400 and level["itl_ms"]["p90"] > 0
    assert job_of(client, job_id)["levels"] == levels

    lines = client.get(f"/api/v1/stress-tests/{job_id}/log?lines=20&format=json").json["lines"]
    assert 0 < len(lines) <= 20
    assert client.get(f"/api/v1/stress-tests/{job_id}/log?lines=0").status_code == 400
    listed = client.get("/api/v1/stress-tests?status=completed&model=sim-fast").json
    assert [j["id"] for j in listed["jobs"]] == [job_id] and listed["worker"]["alive"] is True

    settings = app.config["PEP"]["stress"]
    output_dir, log_path = Path(settings["outputs_dir"]) / job_id, Path(settings["logs_dir"]) / f"{job_id}.log"
    assert output_dir.is_dir() and log_path.is_file()
    assert client.delete(f"/api/v1/stress-tests/{job_id}").status_code == 204
    assert not output_dir.exists() and not log_path.exists()
    assert client.get(f"/api/v1/stress-tests/{job_id}").status_code == 404


# --- cancellation --------------------------------------------------------------------------------


def test_cancel_during_a_level(stack: tuple[Flask, Any]) -> None:
    _app, client = stack
    job_id = client.post("/api/v1/stress-tests", json={"model": "sim-slow", "concurrency": [1, 2], "requests": 2,
                                                       "prompt": "slow"}).json["id"]
    job = wait_for(lambda: (j := job_of(client, job_id))["progress"].get("level") == 1 and j, 30,
                   "the first level to start")
    assert job["status"] == "running" and job["worker_alive"] is True
    pgid = job_pgid(client, job_id)
    assert client.delete(f"/api/v1/stress-tests/{job_id}").status_code == 409  # running: refused
    assert client.post(f"/api/v1/stress-tests/{job_id}/cancel").status_code in (200, 202)
    job = finished(client, job_id, 20)
    assert job["status"] == "cancelled" and job["levels"] == []
    assert group_gone(pgid)


def test_cancel_in_the_pause_between_levels(tmp_path: Path, env: None, slow_sim: SimulatorProcess) -> None:
    app = make_app(tmp_path, slow_sim.port, level_pause_s=60)  # evalscope sleeps, ignoring SIGTERM
    worker = ThreadWorker(app)
    client = app.test_client()
    try:
        job_id = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1, 2],
                                                           "requests": [2, 2], "prompt": "x"}).json["id"]
        wait_for(lambda: len(job_of(client, job_id)["levels"]) == 1, 30, "the first level's results")
        pgid = job_pgid(client, job_id)
        started = time.monotonic()
        client.post(f"/api/v1/stress-tests/{job_id}/cancel")
        job = finished(client, job_id, 20)
        assert time.monotonic() - started < 15  # SIGKILL after the 2 s grace, not the 60 s pause
        assert job["status"] == "cancelled"
        assert [(lv["concurrency"], lv["succeeded"]) for lv in job["levels"]] == [(1, 2)]
        assert group_gone(pgid)
    finally:
        worker.close()


# --- failures ------------------------------------------------------------------------------------


def test_refused_connection_fails_quickly_with_a_reason(stack: tuple[Flask, Any]) -> None:
    _app, client = stack
    port = free_port()
    started = time.monotonic()
    job_id = client.post("/api/v1/stress-tests", json={
        "manual_config": {"base_url": f"http://127.0.0.1:{port}/v1", "model_name": "nobody"},
        "concurrency": [1], "requests": 2, "prompt": "x"}).json["id"]
    job = finished(client, job_id, 20)
    assert time.monotonic() - started < 20
    assert job["status"] == "failed"
    # Not "refused": a refused port reads like an unknown host from outside (backend/security/targets.py).
    assert job["error"] == f"cannot connect to http://127.0.0.1:{port}"


def test_every_request_failing_ends_failed(stack: tuple[Flask, Any]) -> None:
    app, client = stack
    job_id = client.post("/api/v1/stress-tests", json={"model": "sim-error", "concurrency": [1], "requests": 3,
                                                       "prompt": "x"}).json["id"]
    job = finished(client, job_id, 40)
    assert job["status"] == "failed", job
    assert job["error"].startswith("all 3 requests failed: ")
    assert "500" in job["error"]
    assert job["failed_requests"] == 3
    [level] = job["levels"]
    assert (level["succeeded"], level["failed"]) == (0, 3)
    # NaN in evalscope's file
    assert level["ttft_ms"] == {"avg": None, "p50": None, "p90": None, "p95": None, "p99": None}
    from sqlalchemy import text

    from backend.db import db

    with app.app_context():  # the stored text itself, on either database
        raw = db.session.execute(text("SELECT CAST(raw_percentiles AS TEXT) FROM stress_levels")).scalar_one()
    assert "NaN" not in raw and json.loads(raw)[0]["TTFT (ms)"] is None


def test_the_log_starts_with_the_command_quoted_for_a_shell(stack: tuple[Flask, Any]) -> None:
    """The first log line is the command as a shell would need it typed: one word per argument."""
    _app, client = stack
    name = "odd model $(touch /tmp/pwned); 'x'"
    job_id = client.post("/api/v1/stress-tests", json={
        "manual_config": {"base_url": f"http://127.0.0.1:{client.application.config['PEP']['simulator']['port']}/v1",
                          "model_name": name},
        "concurrency": [1], "requests": 1, "prompt": "x"}).json["id"]
    finished(client, job_id, 40)
    first = client.get(f"/api/v1/stress-tests/{job_id}/log?lines=5000&format=json").json["lines"][0]
    assert first.startswith("$ ")
    words = shlex.split(first[2:])
    assert words[:2] == ["-m", "backend.stress.evalscope_entry"] and f"--model={name}" in words


# --- secrets ------------------------------------------------------------------------------------


def test_manual_api_key_reaches_the_target_and_is_never_stored(tmp_path: Path, env: None) -> None:
    key = "sk-test-" + os.urandom(8).hex()
    with SimulatorProcess(seed=5, extra_args=["--api-key", key]) as sim:
        app = make_app(tmp_path, sim.port)
        worker = ThreadWorker(app)
        client = app.test_client()
        try:
            created = client.post("/api/v1/stress-tests", json={
                "manual_config": {"base_url": sim.base_url, "model_name": "sim-fast", "api_key": key},
                "concurrency": [1], "requests": 2, "prompt": "x", "output_tokens": 8})
            assert created.status_code == 201
            job_id = created.json["id"]
            job = finished(client, job_id, 40)
            texts = [created.get_data(as_text=True), json.dumps(job),
                     client.get(f"/api/v1/stress-tests/{job_id}/log?lines=5000").get_data(as_text=True),
                     client.get("/api/v1/stress-tests").get_data(as_text=True)]
        finally:
            worker.close()
        assert job["status"] == "completed", job  # 401s otherwise: the key reached the simulator
        assert job["levels"][0]["succeeded"] == 2
        assert job["target"]["api_key_given"] is True
    for text in texts:
        assert key not in text
    root = Path(tmp_path)
    for path in root.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


# --- the worker dies (more in test_stress_recovery.py) ----------------------------------------


def test_a_job_whose_process_vanished_is_interrupted(tmp_path: Path, env: None, slow_sim: SimulatorProcess) -> None:
    app = make_app(tmp_path, slow_sim.port)
    client = app.test_client()
    job_id = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 2,
                                                       "prompt": "x"}).json["id"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with app.app_context():
        from backend.db import db
        from backend.stress.models import JobStatus, transition

        assert transition(job_id, JobStatus.RUNNING, worker_id="dead-worker", pid=gone.pid, pgid=gone.pid)
        db.session.commit()
    worker = ThreadWorker(app)
    try:
        job = finished(client, job_id, 15)
    finally:
        worker.close()
    assert job["status"] == "interrupted" and job["levels"] == []


# --- Bedrock -------------------------------------------------------------------------------------


def test_bedrock_target_runs_through_our_plugin(tmp_path: Path, env: None, slow_sim: SimulatorProcess,
                                                bedrock_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import BEDROCK_CREDENTIALS

    for name, value in {**BEDROCK_CREDENTIALS, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_server.url}.items():
        monkeypatch.setenv(name, value)  # the worker's evalscope inherits these
    app = make_app(tmp_path, slow_sim.port)
    seen_before = len(bedrock_server.requests)  # the server is shared by the whole session
    worker = ThreadWorker(app)
    client = app.test_client()
    try:
        created = client.post("/api/v1/stress-tests", json={"model": "claude35", "concurrency": [2], "requests": 4,
                                                            "prompt": "pangram please", "output_tokens": 50})
        assert created.status_code == 201, created.json
        assert created.json["target"]["provider"] == "bedrock"
        job = finished(client, created.json["id"], 60)
    finally:
        worker.close()
    assert job["status"] == "completed", job
    [level] = job["levels"]
    assert (level["succeeded"], level["failed"]) == (4, 0)
    assert level["ttft_ms"]["p50"] > 0 and job["token_source"] == "server"
    assert {r.model_id for r in bedrock_server.requests[seen_before:]} == {"test.ok"}
