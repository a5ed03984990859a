"""A worker killed at every point of a job, then a new one started: the job ends as what really happened,
with each level's results stored once.

The worker runs as its own process (``python -m backend.jobs.worker``) so that it can be SIGKILLed.
To stop it at an exact point, it is frozen with SIGSTOP, the job is let run on to where the test wants
it, and only then is the frozen worker killed: no race with its poll loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.support.simulator import SimulatorProcess
from tests.support.stress import (
    SLOW_SIM_ARGS,
    finished,
    group_gone,
    job_of,
    job_pgid,
    make_app,
    wait_for,
    worker_process,
)

SWEEP = {"model": "sim-fast", "concurrency": [1, 2], "requests": [2, 4], "prompt": "x"}


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=13, extra_args=SLOW_SIM_ARGS) as sim:
        yield sim


class Workers:
    """The worker processes a test starts; all of them are gone when it ends, whatever happened."""

    def __init__(self, tmp_path: Path, sim_port: int) -> None:
        self.tmp_path, self.sim_port = tmp_path, sim_port
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *command: str) -> subprocess.Popen[bytes]:
        process = worker_process(self.tmp_path, self.sim_port, *([command] if command else []))
        self.processes.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorProcess
          ) -> Iterator[tuple[Flask, Any, Workers]]:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = make_app(tmp_path, slow_sim.port)
    workers = Workers(tmp_path, slow_sim.port)
    try:
        yield app, app.test_client(), workers
    finally:
        workers.close()


def query(app: Flask, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read from the app's database (SQLite or PostgreSQL), as plain tuples."""
    from backend.db import db

    with app.app_context():
        return [tuple(row) for row in db.session.execute(text(sql), params)]


def level_rows(app: Flask, job_id: str) -> list[tuple[int, int, int]]:
    """(position, concurrency, succeeded) of every stored level row, duplicates included."""
    return query(app, "SELECT position, concurrency, succeeded FROM stress_levels WHERE job_id = :job "
                      "ORDER BY position, id", job=job_id)


def progress_status(app: Flask, job_id: str) -> str | None:
    """What evalscope's own progress.json says (``completed`` once it has run every request)."""
    from backend.stress.command import job_paths
    from backend.stress.outputs import read_progress

    progress = read_progress(job_paths(app.config["PEP"]["stress"], job_id).progress_path)
    return progress.status if progress else None


def create(client: Any) -> str:
    created = client.post("/api/v1/stress-tests", json=SWEEP)
    assert created.status_code == 201, created.json
    return created.json["id"]


def restart_and_finish(client: Any, workers: Workers, job_id: str) -> dict[str, Any]:
    assert wait_for(lambda: job_of(client, job_id)["worker_alive"] is False, 15, "the heartbeat to go stale")
    workers.start()
    return finished(client, job_id, 90)


def assert_completed_once(app: Flask, job: dict[str, Any]) -> None:
    assert job["status"] == "completed", job
    assert job["error"] is None and job["failed_requests"] == 0
    assert [(lv["concurrency"], lv["requests"], lv["succeeded"]) for lv in job["levels"]] == [(1, 2, 2), (2, 4, 4)]
    assert level_rows(app, job["id"]) == [(0, 1, 2), (1, 2, 4)]
    per_level = query(app, "SELECT position, count(*) FROM stress_requests WHERE job_id = :job "
                           "GROUP BY position ORDER BY position", job=job["id"])
    assert per_level == [(0, 2), (1, 4)]  # every request once, however often a worker died


def test_killed_before_the_first_level_ends(stack: tuple[Flask, Any, Workers]) -> None:
    app, client, workers = stack
    first = workers.start()
    job_id = create(client)
    pgid = job_pgid(client, job_id)  # evalscope started: it takes seconds before its first request
    first.send_signal(signal.SIGSTOP)
    assert job_of(client, job_id)["levels"] == []
    workers.kill(first)
    assert not group_gone(pgid)  # evalscope runs on without its worker
    job = restart_and_finish(client, workers, job_id)
    assert_completed_once(app, job)
    wait_for(lambda: group_gone(pgid), 10, "the process group to end")


def test_killed_between_levels(stack: tuple[Flask, Any, Workers]) -> None:
    """The reported defect: the first level stored, the worker killed, a new one re-attaches."""
    app, client, workers = stack
    first = workers.start()
    job_id = create(client)
    wait_for(lambda: len(job_of(client, job_id)["levels"]) == 1, 60, "the first level's results")
    first.send_signal(signal.SIGSTOP)
    pgid = job_pgid(client, job_id)
    workers.kill(first)
    job = restart_and_finish(client, workers, job_id)
    assert_completed_once(app, job)
    wait_for(lambda: group_gone(pgid), 10, "the process group to end")


def test_killed_after_evalscope_finished_unwatched(stack: tuple[Flask, Any, Workers]) -> None:
    """The worker frozen after the first level; evalscope runs every request and exits while nobody
    watches; the new worker finds no process, and the job is what its outputs say: completed."""
    app, client, workers = stack
    first = workers.start()
    job_id = create(client)
    wait_for(lambda: len(job_of(client, job_id)["levels"]) == 1, 60, "the first level's results")
    first.send_signal(signal.SIGSTOP)
    pgid = job_pgid(client, job_id)
    wait_for(lambda: group_gone(pgid), 60, "evalscope to end on its own")
    assert progress_status(app, job_id) == "completed"
    assert job_of(client, job_id)["status"] == "running"
    workers.kill(first)
    job = restart_and_finish(client, workers, job_id)
    assert_completed_once(app, job)


DIES_WHILE_INGESTING = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from backend.db import db
    from backend.jobs import worker
    from backend.stress import kind

    ingest, marker = kind.StressKind._ingest_levels, Path(sys.argv[1])

    def ingest_then_die(self, running, *, final):
        before = set(running.state.ingested)
        ingest(self, running, final=final)
        if running.state.ingested - before:  # this worker added a level (and its requests) to the transaction
            db.session.flush()  # the level row is in the database, in a transaction never committed
            marker.write_text("flushed")
            os.kill(os.getpid(), signal.SIGKILL)

    kind.StressKind._ingest_levels = ingest_then_die
    sys.argv[1:] = []  # the worker takes no arguments
    sys.exit(worker.main())
""")


def test_killed_while_ingesting_a_level(stack: tuple[Flask, Any, Workers], tmp_path: Path) -> None:
    app, client, workers = stack
    marker = tmp_path / "ingesting"
    first = workers.start("-c", DIES_WHILE_INGESTING, str(marker))
    job_id = create(client)
    wait_for(lambda: first.poll() is not None, 60, "the worker to die in the middle of ingesting")
    assert first.returncode == -signal.SIGKILL and marker.read_text() == "flushed"
    assert level_rows(app, job_id) == []  # what it flushed was rolled back
    assert query(app, "SELECT count(*) FROM stress_requests") == [(0,)]
    job = restart_and_finish(client, workers, job_id)
    assert_completed_once(app, job)


def test_worker_and_evalscope_killed_together(stack: tuple[Flask, Any, Workers]) -> None:
    app, client, workers = stack
    first = workers.start()
    job_id = create(client)
    wait_for(lambda: len(job_of(client, job_id)["levels"]) == 1, 60, "the first level's results")
    first.send_signal(signal.SIGSTOP)
    pgid = job_pgid(client, job_id)
    os.killpg(pgid, signal.SIGKILL)
    workers.kill(first)
    wait_for(lambda: group_gone(pgid), 10, "evalscope to end")
    job = restart_and_finish(client, workers, job_id)
    assert job["status"] == "interrupted", job
    assert "no worker was watching" in job["error"]
    assert [(lv["concurrency"], lv["succeeded"]) for lv in job["levels"]] == [(1, 2)]
    assert level_rows(app, job_id) == [(0, 1, 2)]


# --- the database itself refuses a second row for a level --------------------------------------


def _level(job_id: str, position: int) -> Any:
    from backend.stress.models import StressLevel

    return StressLevel(job_id=job_id, position=position, concurrency=1, requests=1, succeeded=1, failed=0,
                       metrics={}, raw_summary={}, raw_percentiles=[])


def test_a_second_row_for_a_level_is_refused(app: Flask) -> None:
    from backend.db import db
    from backend.stress.models import StressJob

    with app.app_context():
        db.session.add(StressJob(id="j1", model_key="sim-fast", target={}, params={}, progress={}))
        db.session.add(_level("j1", 0))
        db.session.commit()
        db.session.add(_level("j1", 0))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
        db.session.add(_level("j1", 1))
        db.session.commit()


def test_the_migration_removes_existing_duplicates(app: Flask) -> None:
    from flask_migrate import downgrade, upgrade

    from backend.db import MIGRATIONS_DIR, db

    [(head,)] = query(app, "SELECT version_num FROM alembic_version")
    rows = [("j1", 0, 3), ("j1", 0, 3), ("j1", 1, 4), ("j1", 0, 3), ("j2", 0, 5), ("j2", 0, 5)]
    level = ("INSERT INTO stress_levels (job_id, position, concurrency, requests, succeeded, failed, metrics, "
             "raw_summary, raw_percentiles, complete) VALUES (:job, :position, 1, :n, :n, 0, '{}', '{}', '[]', TRUE)")
    with app.app_context():
        downgrade(directory=str(MIGRATIONS_DIR), revision="0002_stress_jobs")
        with db.engine.begin() as connection:  # rows as the platform stored them before 0003
            for job_id in ("j1", "j2"):
                connection.execute(text("INSERT INTO stress_jobs (id, created_at, status, model_key, target, params, "
                                        "estimated_requests, progress, cancel_requested) VALUES (:job, "
                                        "'2026-11-30', 'interrupted', 'sim-fast', '{}', '{}', 0, '{}', FALSE)"),
                                   {"job": job_id})
            for job_id, position, succeeded in rows:
                connection.execute(text(level), {"job": job_id, "position": position, "n": succeeded})
            first_ids = connection.execute(text("SELECT MIN(id) FROM stress_levels GROUP BY job_id, position "
                                                "ORDER BY job_id, position")).scalars().all()
        upgrade(directory=str(MIGRATIONS_DIR))
        with db.engine.connect() as connection:
            kept = connection.execute(text("SELECT id, job_id, position, succeeded FROM stress_levels "
                                           "ORDER BY job_id, position")).all()
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            with pytest.raises(IntegrityError):
                connection.execute(text(level), {"job": "j1", "position": 1, "n": 1})
        db.engine.dispose()
    assert [row[0] for row in kept] == first_ids
    assert [tuple(row[1:]) for row in kept] == [("j1", 0, 3), ("j1", 1, 4), ("j2", 0, 5)]
    assert version == head
