"""Per-request rows through the real ``evalscope perf`` against the simulator: a whole sweep, and a
level cut short by a cancel, ingested by the worker and read back through the results API."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import RowMapping, text

from tests.support.simulator import SimulatorProcess
from tests.support.stress import SLOW_SIM_ARGS, ThreadWorker, finished, job_of, make_app, wait_for


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=17, extra_args=SLOW_SIM_ARGS) as sim:
        yield sim


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorProcess) -> Iterator[tuple[Flask, Any]]:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = make_app(tmp_path, slow_sim.port)
    worker = ThreadWorker(app)
    yield app, app.test_client()
    worker.close()


def request_rows(app: Flask, job_id: str) -> list[RowMapping]:
    from backend.db import db

    with app.app_context():
        return list(db.session.execute(text("SELECT * FROM stress_requests WHERE job_id = :job "
                                            "ORDER BY position, seq"), {"job": job_id}).mappings())


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


def test_a_sweep_stores_every_request_and_agrees_with_evalscope(stack: tuple[Flask, Any]) -> None:
    app, client = stack
    job_id = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1, 2],
                                                       "requests": [3, 4], "prompt": "x"}).json["id"]
    job = finished(client, job_id, 90)
    assert job["status"] == "completed", job
    rows = request_rows(app, job_id)
    assert [(r["position"], r["seq"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert all(r["success"] == 1 and r["output_tokens"] == 20 for r in rows)
    for position, level in enumerate(job["levels"]):
        mine = [r for r in rows if r["position"] == position]
        # evalscope's percentiles (nearest rank, rounded to 4 decimals) agree with ours from the same requests.
        for name, column in (("ttft_ms", "ttft_ms"), ("latency_s", "latency_s")):
            for q in (50, 99):
                assert level[name][f"p{q}"] == pytest.approx(nearest_rank([r[column] for r in mine], q), abs=1e-3)
        assert level["ttft_ms"]["p95"] is not None  # evalscope writes 95 % too; it is kept now
        assert min(r["start_s"] for r in mine) == 0.0 and all(r["end_s"] > r["start_s"] for r in mine)
        # 20 tokens at ~40 ms: 19 gaps per request, mean about 40 ms, none negative
        assert all(30 < r["itl_mean_ms"] < 200 and r["itl_max_ms"] >= r["itl_mean_ms"] for r in mine)
    results = client.get(f"/api/v1/results/{job_id}?ttft_ms=100000&tpot_ms=100000&error_rate=0").json
    assert [lv["goodput"]["good"] for lv in results["levels"]] == [3, 4]
    assert [lv["per_request_rows"] for lv in results["levels"]] == [3, 4]
    assert results["summary"]["capacity"]["concurrency"] == 2


def test_a_cancelled_level_keeps_what_it_finished_as_partial(stack: tuple[Flask, Any]) -> None:
    app, client = stack
    job_id = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 20,
                                                       "prompt": "x"}).json["id"]
    wait_for(lambda: job_of(client, job_id)["progress"].get("processed", 0) >= 2, 60, "two requests to finish")
    assert client.post(f"/api/v1/stress-tests/{job_id}/cancel").status_code in (200, 202)
    job = finished(client, job_id, 30)
    assert job["status"] == "cancelled", job
    [level] = job["levels"]
    rows = request_rows(app, job_id)
    done = [r for r in rows if r["success"]]
    assert level["complete"] is False and 2 <= level["succeeded"] < 20
    assert level["succeeded"] == len(done) and level["requests"] == len(rows)
    assert level["ttft_ms"]["p50"] == pytest.approx(nearest_rank([r["ttft_ms"] for r in done], 50))
    results = client.get(f"/api/v1/results/{job_id}").json
    assert results["partial"] is True and results["levels"][0]["slo"]["meets"] is None
    assert results["summary"]["capacity"]["concurrency"] is None
    page = client.get(f"/results/{job_id}")
    assert page.status_code == 200 and "partial" in page.text
