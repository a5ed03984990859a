"""One stress test spread over worker hosts (``spread: "hosts"``, backend/stress/spread.py), here with two
workers of one app on SQLite: each shard job taken by a worker of its own, the levels' starts agreed through
the database, the merged figures checked against the simulator's own records. The same over two network
namespaces on PostgreSQL is in tests/test_multihost.py."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.db import db
from backend.jobs.worker import run_worker
from backend.results.metrics import percentile
from backend.results.models import StressRequest
from backend.stress.command import share
from backend.stress.models import ShardBarrier, StressJob
from tests.support.simulator import SimulatorProcess
from tests.support.stress import SLOW_SIM_ARGS, finished, job_of, make_app, wait_for

TTFT_TOLERANCE_MS = 15.0  # as in tests/test_stress_shards.py: loopback and event-loop time on both sides
TTFT_ONE_REQUEST_TOLERANCE_MS = 60.0


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    """sim-fast at 40 ms a token, 20 tokens: a request takes about 0.8 s."""
    with SimulatorProcess(seed=7, extra_args=SLOW_SIM_ARGS) as sim:
        yield sim


class Workers:
    """``count`` workers of one app, each in a thread with its own id (as workers on other hosts would be)."""

    def __init__(self, app: Flask, count: int) -> None:
        self.stops = [threading.Event() for _ in range(count)]
        self.threads = [threading.Thread(target=run_worker, args=(app, stop, f"spread-{n}"), daemon=True)
                        for n, stop in enumerate(self.stops)]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        for stop in self.stops:
            stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorProcess) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    return make_app(tmp_path, slow_sim.port)


def _workers_up(client: Any, count: int) -> None:
    wait_for(lambda: sum(w["alive"] for w in client.get("/api/v1/workers").json["workers"]) >= count, 30,
             f"{count} workers to report")


def test_spreading_over_more_hosts_than_live_workers_is_refused(app: Flask) -> None:
    client = app.test_client()
    workers = Workers(app, 1)
    try:
        _workers_up(client, 1)
        response = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [2],
                                                              "requests": [2], "prompt": "x", "shards": 2,
                                                              "spread": "hosts"})
        assert response.status_code == 409, response.json
        assert response.json["error"]["details"]["field"] == "shards"
        assert "2 shards" in response.json["error"]["message"] and "1 live worker " in response.json["error"]["message"]
        one = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [2], "requests": [2],
                                                         "prompt": "x", "spread": "hosts"})
        assert one.status_code == 400 and one.json["error"]["details"]["field"] == "spread"
    finally:
        workers.close()


def test_a_level_spread_over_two_workers_merges_to_the_simulators_truth(app: Flask,
                                                                         slow_sim: SimulatorProcess) -> None:
    client = app.test_client()
    workers = Workers(app, 2)
    try:
        _workers_up(client, 2)
        prompt = f"spread {uuid.uuid4().hex}"
        since = time.time()
        created = client.post("/api/v1/stress-tests", json={
            "model": "sim-fast", "concurrency": [2, 4], "requests": [4, 8], "prompt": prompt, "output_tokens": 20,
            "shards": 2, "spread": "hosts"})
        assert created.status_code == 201, created.json
        job_id = created.json["id"]
        job = finished(client, job_id, 120)
    finally:
        workers.close()
    assert job["status"] == "completed", job
    shard_jobs = job["shard_jobs"]
    assert [s["index"] for s in shard_jobs] == [0, 1] and all(s["status"] == "completed" for s in shard_jobs)
    ran_on = {job_of(client, s["id"])["worker_id"] for s in shard_jobs}
    assert ran_on == {"spread-0", "spread-1"}  # one shard on each worker
    for shard in shard_jobs:  # each shard ran its part of each level
        shard_job = job_of(client, shard["id"])
        assert shard_job["shard_of"] == {"id": job_id, "index": shard["index"], "of": 2}
        assert [(lv["concurrency"], lv["requests"]) for lv in shard_job["levels"]] == [
            (share(2, shard["index"], 2), share(4, shard["index"], 2)),
            (share(4, shard["index"], 2), share(8, shard["index"], 2))]
    listed = client.get("/api/v1/stress-tests").json["jobs"]
    assert [j["id"] for j in listed] == [job_id]  # the shards are shown on their job's page, not listed
    assert [r["id"] for r in client.get("/api/v1/results").json["results"]] == [job_id]

    assert [(lv["concurrency"], lv["requests"], lv["succeeded"], lv["complete"]) for lv in job["levels"]] == [
        (2, 4, 4, True), (4, 8, 8, True)]
    records = sorted((r for r in slow_sim.requests(since) if r["prompt"] == prompt and r["status"] == "completed"),
                     key=lambda r: r["arrival"])
    assert len(records) == 12
    by_level = [records[:4], records[4:]]
    assert max(r["last_token_at"] for r in by_level[0]) < min(r["arrival"] for r in by_level[1])
    results = client.get(f"/api/v1/results/{job_id}").json
    with app.app_context():
        for position, truth in enumerate(by_level):
            # one common start per level, agreed through the database: the level's first request reached the
            # simulator at about that time (the bound leaves room for a loaded machine)
            starts = db.session.scalars(select(ShardBarrier.at).where(ShardBarrier.job_id == job_id,
                                                                      ShardBarrier.level == position,
                                                                      ShardBarrier.shard == -1)).all()
            assert len(starts) == 1
            assert min(r["arrival"] for r in truth) == pytest.approx(starts[0], abs=0.25)

            true_ttft = [(r["first_token_at"] - r["arrival"]) * 1000.0 for r in truth]
            level = results["levels"][position]
            ttft = level["metrics"]["ttft_ms"]
            assert ttft["p50"] == pytest.approx(percentile(true_ttft, 50), abs=TTFT_TOLERANCE_MS)
            assert ttft["avg"] == pytest.approx(statistics.fmean(true_ttft),
                                                abs=TTFT_TOLERANCE_MS + TTFT_ONE_REQUEST_TOLERANCE_MS / len(truth))
            assert ttft["p99"] == pytest.approx(percentile(true_ttft, 99), abs=TTFT_ONE_REQUEST_TOLERANCE_MS)
            true_rate = sum(r["tokens_emitted"] for r in truth) / (
                max(r["last_token_at"] for r in truth) - min(r["arrival"] for r in truth))
            assert level["output_tokens_per_s"] == pytest.approx(true_rate, rel=0.10)
            # percentiles of the union of the shards' stored rows, never an average of the shards' own
            shard_ttft = db.session.scalars(select(StressRequest.ttft_ms).where(
                StressRequest.job_id.in_([s["id"] for s in shard_jobs]), StressRequest.position == position)).all()
            assert len(shard_ttft) == len(truth)
            assert ttft["p99"] == pytest.approx(float(np.percentile(shard_ttft, 99, method="inverted_cdf")))
            assert db.session.scalar(select(func.count()).select_from(StressRequest).where(
                StressRequest.job_id == job_id, StressRequest.position == position)) == len(truth)
            # the inter-token gaps of both shards: 19 gaps a request of 20 tokens
            assert level["metrics"]["itl_ms"]["p50"] == pytest.approx(40.0, abs=TTFT_TOLERANCE_MS)
            client_figures = level["client"]
            assert [s["job_id"] for s in client_figures["shards"]] == [s["id"] for s in shard_jobs]
            assert all(s["host"] and s["wall_s"] > 0 for s in client_figures["shards"])


def test_a_cancel_of_the_job_stops_every_shard(app: Flask) -> None:
    client = app.test_client()
    workers = Workers(app, 2)
    try:
        _workers_up(client, 2)
        job_id = client.post("/api/v1/stress-tests", json={
            "model": "sim-fast", "concurrency": [2], "requests": [60], "prompt": "cancel spread",
            "output_tokens": 20, "shards": 2, "spread": "hosts"}).json["id"]
        wait_for(lambda: all(s["status"] == "running" and (s["progress"].get("processed") or 0) >= 1
                             for s in job_of(client, job_id)["shard_jobs"]), 60, "both shards to be under way")
        assert job_of(client, job_id)["status"] == "running"
        assert client.post(f"/api/v1/stress-tests/{job_id}/cancel").status_code in (200, 202)
        job = finished(client, job_id, 30)
    finally:
        workers.close()
    assert job["status"] == "cancelled", job
    assert [s["status"] for s in job["shard_jobs"]] == ["cancelled", "cancelled"]
    shard = job["shard_jobs"][0]["id"]
    refused = client.delete(f"/api/v1/stress-tests/{shard}")
    assert refused.status_code == 409 and job_id in refused.json["error"]["message"]
    assert client.delete(f"/api/v1/stress-tests/{job_id}").status_code in (200, 204)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(StressJob)) == 0  # the shards went with it

