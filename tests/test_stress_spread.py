"""One stress test spread over worker hosts (``spread: "hosts"``, backend/stress/spread.py), here with two
workers of one app on SQLite: refused without a worker for each shard, and a cancel of the job stopping
both running shards. The merged figures against the simulator's records, with a shard on each of two
hosts (network namespaces, PostgreSQL), are in tests/test_multihost.py; the group's rows as its shards
end, in tests/test_spread_groups.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from backend.db import db
from backend.jobs.worker import run_worker
from backend.stress.models import StressJob
from tests.support.simulator import SimulatorProcess
from tests.support.stress import SLOW_SIM_ARGS, finished, job_of, make_app, wait_for


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

