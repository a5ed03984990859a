"""The SQLite database locked by another process (a second connection holding ``BEGIN EXCLUSIVE``) for
longer than the busy timeout, while inference runs are stored and the job worker claims and ingests a
stress test (the real evalscope): nothing is lost, every answer is a 200 or a clear error, never a 500
saying "database is locked"; the run and the job are stored once the lock is gone.

On PostgreSQL (which has no busy timeout: a write waits for the lock) another connection holds the tables
with ``LOCK TABLE``: writes wait, then succeed, and nothing is lost either."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backend.db import db
from backend.inference.models import InferenceRun
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker, finished, make_app

pytestmark = pytest.mark.timeout(120)

HOLD_S = 7.0  # longer than the connection's busy_timeout (5 s, backend/db.py)

LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def lock_database(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the database's write lock for ``seconds``; returns once it holds it."""
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), str(seconds)], stdout=subprocess.PIPE,
                              text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


@pytest.mark.sqlite_only
def test_a_locked_database_delays_but_loses_nothing(tmp_path: Path, simulator: SimulatorProcess) -> None:
    app = make_app(tmp_path, simulator.port)
    client = app.test_client()
    assert client.get("/api/v1/inference/runs").status_code == 200  # the schema exists before the lock
    locker = lock_database(tmp_path / "app.db", HOLD_S)
    locked_at = time.monotonic()
    answers: dict[str, Any] = {}

    def infer(name: str) -> None:
        answers[name] = app.test_client().post("/api/v1/inference", json={"model": "sim-fast", "prompt": name})

    threads = [threading.Thread(target=infer, args=(f"run {n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    stress = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 2,
                                                       "output_tokens": 8, "prompt": "hi"})
    worker = ThreadWorker(app)
    try:
        # reads go on while the lock is held (WAL): the pages and lists answer
        for route in ("/api/v1/inference/runs", "/history", "/api/v1/stress-tests", "/stress-tests"):
            response = client.get(route)
            assert response.status_code == 200, (route, response.status_code)
        for thread in threads:
            thread.join(timeout=60)
        locker.wait(timeout=30)
        for name, answer in answers.items():
            text = answer.get_data(as_text=True)
            assert "database is locked" not in text and answer.status_code < 500, (name, answer.status_code, text)
        # a write that waited out the busy timeout is a 503 to retry (Retry-After), nothing half stored
        assert stress.status_code == 503, stress.get_data(as_text=True)
        assert stress.json["error"]["code"] == "busy" and stress.headers["Retry-After"] == "5"
        assert "database is locked" not in stress.get_data(as_text=True)
        assert client.get("/api/v1/stress-tests").json["total"] == 0
        stress = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 2,
                                                           "output_tokens": 8, "prompt": "hi"})
        assert stress.status_code == 201, stress.json
        locker = lock_database(tmp_path / "app.db", HOLD_S)  # again, while the worker claims and ingests it
        job = finished(client, stress.json["id"], timeout=90)
        locker.wait(timeout=30)
        assert job["status"] == "completed", job
        result = client.get(f"/api/v1/results/{stress.json['id']}").json
        assert result["levels"][0]["requests"] == 2 and result["levels"][0]["succeeded"] == 2, result["levels"][0]
    finally:
        worker.close()
    assert time.monotonic() - locked_at >= HOLD_S - 0.5
    with app.app_context():
        stored = {run.prompt: run for run in db.session.scalars(db.select(InferenceRun))}
        assert set(stored) == set(answers), sorted(stored)
        for name, run in stored.items():
            assert run.status == "completed" and [r.status for r in run.results] == ["completed"], name
    log = "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log"))
    assert "could not store run" not in log


PG_HOLD_S = 3.0
PG_LOCKER = """
import sys, time
import psycopg
with psycopg.connect(sys.argv[1]) as connection:  # one transaction, committed when the block ends
    connection.execute(f"LOCK TABLE {sys.argv[3]} IN {sys.argv[4]} MODE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def lock_postgresql_tables(tables: str, mode: str, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``LOCK TABLE tables IN mode MODE`` on the test's PostgreSQL database for
    ``seconds``; returns once it holds the lock."""
    dsn = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    locker = subprocess.Popen([sys.executable, "-c", PG_LOCKER, dsn, str(seconds), tables, mode],
                              stdout=subprocess.PIPE, text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


def test_locked_postgresql_tables_delay_but_lose_nothing(tmp_path: Path, simulator: SimulatorProcess,
                                                         _database: str) -> None:
    if _database != "postgresql":
        pytest.skip("PostgreSQL's table locks: run with --database=postgresql")
    app = make_app(tmp_path, simulator.port)
    client = app.test_client()
    assert client.get("/api/v1/inference/runs").status_code == 200
    # EXCLUSIVE: reads go on, every write waits (what SQLite's write lock is under WAL)
    locker = lock_postgresql_tables("inference_runs, inference_results, stress_jobs", "EXCLUSIVE", PG_HOLD_S)
    locked_at = time.monotonic()
    answers: dict[str, Any] = {}
    answered_at: dict[str, float] = {}

    def post(name: str, route: str, body: dict[str, Any]) -> None:
        answers[name] = app.test_client().post(route, json=body)
        answered_at[name] = time.monotonic()

    stress_body = {"model": "sim-fast", "concurrency": [1], "requests": 2, "output_tokens": 8, "prompt": "hi"}
    threads = [threading.Thread(target=post, args=(f"run {n}", "/api/v1/inference",
                                                   {"model": "sim-fast", "prompt": f"run {n}"})) for n in range(3)]
    threads.append(threading.Thread(target=post, args=("stress", "/api/v1/stress-tests", stress_body)))
    for thread in threads:
        thread.start()
    worker = ThreadWorker(app)
    try:
        for route in ("/api/v1/inference/runs", "/history", "/api/v1/stress-tests", "/stress-tests"):
            response = client.get(route)
            assert response.status_code == 200, (route, response.status_code)
        for thread in threads:
            thread.join(timeout=60)
        locker.wait(timeout=30)
        # every write waited for the lock (the stress test's row is its first statement)
        assert answered_at["stress"] - locked_at >= PG_HOLD_S - 0.5, answered_at["stress"] - locked_at
        for name, answer in answers.items():
            assert answer.status_code < 500, (name, answer.status_code, answer.get_data(as_text=True))
        stress = answers.pop("stress")
        assert stress.status_code == 201, stress.json  # it waited, and was stored
        # ACCESS EXCLUSIVE on the stress tables (what a migration's ALTER TABLE takes) while the worker
        # claims and ingests: everything of the job waits, nothing is lost
        locker = lock_postgresql_tables("stress_jobs, stress_levels, stress_requests", "ACCESS EXCLUSIVE",
                                        PG_HOLD_S)
        job = finished(client, stress.json["id"], timeout=90)
        locker.wait(timeout=30)
        assert job["status"] == "completed", job
        result = client.get(f"/api/v1/results/{stress.json['id']}").json
        assert result["levels"][0]["requests"] == 2 and result["levels"][0]["succeeded"] == 2, result["levels"][0]
    finally:
        worker.close()
    with app.app_context():
        stored = {run.prompt: run for run in db.session.scalars(db.select(InferenceRun))}
        assert set(stored) == set(answers), sorted(stored)
        for name, run in stored.items():
            assert run.status == "completed" and [r.status for r in run.results] == ["completed"], name
    log = "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log"))
    assert "could not store run" not in log
