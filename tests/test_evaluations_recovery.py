"""An evaluation survives its worker being SIGKILLed: evalscope runs on in its own session, a new worker
re-attaches to it (or ends the job from its files when evalscope died too), and every cell is ingested
once with the same scores as an uninterrupted run would have."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from backend.db import db
from backend.evaluations.models import EvaluationJob
from tests.support.evaluations import (
    answered_right,
    bundled_id,
    catalogue_with_answerers,
    create,
    finished,
    job_of,
    make_app,
    wilson,
    worker_process,
)
from tests.support.simulator import SimulatorProcess
from tests.support.stress import group_gone, wait_for

LIMIT = 12
# 40 ms a token and 12 tokens: a sample takes about half a second, one at a time (batch_size 1).
SLOW = tuple(arg for model in ("sim-answer-a", "sim-answer-b")
             for arg in ("--profile", f"{model}:decode_base_ms=40,min_output_tokens=12,max_output_tokens=12"))


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(extra_args=SLOW) as sim:
        yield sim


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorProcess) -> Iterator[Any]:
    monkeypatch.setenv("ENVIRONMENT", "test")
    models = catalogue_with_answerers(tmp_path)
    app = make_app(tmp_path, slow_sim.port, models_file=models)
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = worker_process(tmp_path, slow_sim.port, models_file=models)
        processes.append(process)
        return process

    try:
        yield app, app.test_client(), start
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def _pgid(app: Any, job_id: str) -> int:
    with app.app_context():
        return wait_for(lambda: db.session.get(EvaluationJob, job_id, populate_existing=True).pgid, 30, "a pgid")


def _sample_counts(app: Any, job_id: str) -> list[tuple[int, int]]:
    with app.app_context():
        return [tuple(row) for row in db.session.execute(text(
            "SELECT c.position, count(s.id) FROM evaluation_cells c LEFT JOIN evaluation_samples s "
            "ON s.cell_id = c.id WHERE c.job_id = :job GROUP BY c.position ORDER BY c.position"), {"job": job_id})]


def test_worker_killed_mid_cell_is_re_attached(stack: Any) -> None:
    app, client, start = stack
    mcq = bundled_id(client, "mcq")
    first = start()
    job = create(client, models=["sim-answer-a", "sim-answer-b"], datasets=[mcq], limit=LIMIT, batch_size=1)
    pgid = _pgid(app, job["id"])
    wait_for(lambda: job_of(client, job["id"])["cells"][0]["progress"]["done"] >= 2, 60, "answers in cell 0")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    os.killpg(pgid, 0)  # evalscope lives on without its worker
    wait_for(lambda: job_of(client, job["id"])["worker_alive"] is False, 15, "the heartbeat to go stale")
    start()
    ended = finished(client, job["id"], timeout=120)
    assert ended["status"] == "completed", ended["error"]
    assert group_gone(pgid)
    _assert_both(app, ended, mcq)


def _assert_both(app: Any, job: dict[str, Any], mcq: str) -> None:
    from backend.evaluations import datasets

    with app.app_context():
        items = datasets.read_items(datasets.get_dataset(mcq), app.config["PEP"]["evaluations"])[:LIMIT]
    for cell in job["cells"]:
        right = sum(answered_right(cell["model"], item["id"]) for item in items)
        low, high = wilson(right, LIMIT)
        assert cell["status"] == "completed", cell
        acc = cell["metrics"]["acc"]
        assert acc["n"] == LIMIT and acc["score"] == pytest.approx(right / LIMIT)
        assert (acc["ci_low"], acc["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert _sample_counts(app, job["id"]) == [(0, LIMIT), (1, LIMIT)]  # every sample once


def test_worker_and_evalscope_killed_together_end_interrupted_with_what_finished(stack: Any) -> None:
    app, client, start = stack
    mcq = bundled_id(client, "mcq")
    first = start()
    job = create(client, models=["sim-answer-a", "sim-answer-b"], datasets=[mcq], limit=LIMIT, batch_size=1)
    pgid = _pgid(app, job["id"])
    wait_for(lambda: job_of(client, job["id"])["cells"][0]["status"] == "completed", 90, "cell 0 to be ingested")
    wait_for(lambda: job_of(client, job["id"])["cells"][1]["progress"]["done"] >= 1, 60, "answers in cell 1")
    first.send_signal(signal.SIGKILL)
    os.killpg(pgid, signal.SIGKILL)
    first.wait(timeout=10)
    wait_for(lambda: group_gone(pgid), 10, "evalscope to be gone")
    wait_for(lambda: job_of(client, job["id"])["worker_alive"] is False, 15, "the heartbeat to go stale")
    start()
    ended = finished(client, job["id"], timeout=60)
    assert ended["status"] == "interrupted"
    first_cell, second_cell = ended["cells"]
    assert first_cell["status"] == "completed" and first_cell["metrics"]["acc"]["n"] == LIMIT
    assert second_cell["status"] == "interrupted"
    assert "before this cell finished" in second_cell["error"]
    counts = dict(_sample_counts(app, job["id"]))
    assert counts[0] == LIMIT and counts[1] < LIMIT
