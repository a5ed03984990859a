"""The worker SIGKILLed while it ingests an evaluation's cell (its samples flushed into a transaction never
committed): nothing of the cell is stored, and a new worker ingests every cell exactly once, with the
scores the simulator's documented rule gives. (Stress levels: tests/test_stress_recovery.py; a worker
killed mid-cell: tests/test_evaluations_recovery.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text

from tests.support.evaluations import (
    answered_right,
    bundled_id,
    catalogue_with_answerers,
    create,
    eval_settings,
    finished,
    make_app,
    worker_process,
)
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess
from tests.support.stress import wait_for

pytestmark = pytest.mark.timeout(180)

LIMIT = 4

DIES_WHILE_INGESTING = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from backend.db import db
    from backend.evaluations import kind
    from backend.jobs import worker

    ingest, marker = kind.EvaluationKind._ingest, Path(sys.argv[1])

    def ingest_then_die(self, cell, *args, **kwargs):
        ingest(self, cell, *args, **kwargs)
        db.session.flush()  # the cell's samples are in the database, in a transaction never committed
        marker.write_text(f"flushed {cell.position}")
        os.kill(os.getpid(), signal.SIGKILL)

    kind.EvaluationKind._ingest = ingest_then_die
    sys.argv[1:] = []
    sys.exit(worker.main())
""")


def samples_per_cell(app: Flask, job_id: str) -> list[tuple[int, str, int]]:
    from backend.db import db

    with app.app_context():  # the app's database, SQLite or PostgreSQL
        return [tuple(row) for row in db.session.execute(text(
            "SELECT c.position, c.status, count(s.id) FROM evaluation_cells c LEFT JOIN evaluation_samples s "
            "ON s.cell_id = c.id WHERE c.job_id = :job GROUP BY c.position, c.status ORDER BY c.position"),
            {"job": job_id})]


def test_killed_while_ingesting_a_cell(tmp_path: Path, simulator: SimulatorProcess,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    models = catalogue_with_answerers(tmp_path)
    app = make_app(tmp_path, simulator.port, models_file=models)
    client = app.test_client()
    env = {  # as worker_process gives its worker
           **os.environ, "ENVIRONMENT": "test", "PEP_DATABASE__PATH": str(tmp_path / "app.db"),
           "PEP_LOGGING__DIR": str(tmp_path / "logs"), "PEP_CATALOG__MODELS_FILE": models,
           "SIMULATOR_PORT": str(simulator.port), "PEP_STRESS__POLL_INTERVAL_S": "0.2",
           "PEP_STRESS__WORKER_STALE_S": "3",
           **{f"PEP_EVALUATIONS__{key.upper()}": str(value) for key, value in eval_settings(tmp_path).items()}}
    marker = tmp_path / "ingesting"
    with (tmp_path / "dying-worker.out").open("ab") as out:
        dying = subprocess.Popen([sys.executable, "-c", DIES_WHILE_INGESTING, str(marker)], cwd=PROJECT_ROOT,
                                 env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    mcq = bundled_id(client, "mcq")
    job = create(client, models=["sim-answer-a"], datasets=[mcq], limit=LIMIT)
    wait_for(lambda: dying.poll() is not None, 90, "the worker to die in the middle of ingesting")
    assert dying.returncode == -signal.SIGKILL and marker.read_text() == "flushed 0"
    [(position, status, samples)] = samples_per_cell(app, job["id"])
    assert (position, samples) == (0, 0) and status != "completed"  # what it flushed was rolled back

    survivor = worker_process(tmp_path, simulator.port, models_file=models)
    try:
        ended = finished(client, job["id"], timeout=120)
    finally:
        survivor.terminate()
        survivor.wait(timeout=30)
    assert ended["status"] == "completed", ended["error"]
    assert samples_per_cell(app, job["id"]) == [(0, "completed", LIMIT)]  # ingested once
    from backend.evaluations import datasets

    with app.app_context():
        items = datasets.read_items(datasets.get_dataset(mcq), app.config["PEP"]["evaluations"])[:LIMIT]
    right = sum(answered_right("sim-answer-a", item["id"]) for item in items)
    [cell] = ended["cells"]
    assert cell["metrics"]["acc"]["n"] == LIMIT and cell["metrics"]["acc"]["score"] == pytest.approx(right / LIMIT)
