"""``python -m backend.dbcopy``: a SQLite database filled through the app (an inference run against the
simulator, a stress job with levels, per-request rows and samples, an evaluation with cells and samples, a
worker row) copied into a fresh PostgreSQL database. Counts are read from both sides with plain drivers
(sqlite3, psycopg), values through the app on PostgreSQL. This test needs a PostgreSQL server in either
pass of scripts/test.sh: it uses the ``postgres_server_url`` fixture itself."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from flask import Flask

from backend.app import create_app
from backend.db import db
from tests.conftest import TEST_MODELS
from tests.support import postgres, results, stress_rows
from tests.support.analytics import add_run
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess

PROMPT = "Grüße, 世界: naïve café ✓ — ünïcode 🚀"
TARGET = {"kind": "catalog", "key": "qwen3-8b", "provider": "openai", "catalog_provider": "emd",
          "name": "Qwen3 8B — 世界", "instance_type": "g5.2xlarge", "instances": 1}
CREATED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def source(tmp_path: Path, simulator: SimulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """An app on a SQLite file (whichever database the run's other tests use) with rows in every kind of
    table the platform writes."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": TEST_MODELS}, "simulator": {"port": simulator.port}})
    answer = app.test_client().post("/api/v1/inference", json={"model": "sim-fast", "prompt": PROMPT})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    results.add_job(app, "stress1", [results.level(1, [results.ok(100.0), results.ok(120.0), results.failed()]),
                                     results.level(2, [results.ok(150.0, start=0.5), results.ok(160.0)])],
                    target=TARGET, created=CREATED)
    stress_rows.add_sample(app, "stress1", 0, ok=2, errors=1)
    stress_rows.add_sample(app, "stress1", 1, ok=2, errors=0, t=2.0)
    stress_rows.add_fake_worker(app, "worker-1")
    add_run(app, "eval1", [{"model": "sim-answer-a", "dataset": "mcq", "right": [True, False, True, True]},
                           {"model": "sim-answer-b", "dataset": "mcq", "right": [False, False, True, True]}])
    from backend.results.capacity_search import CapacitySearch

    with app.app_context():  # a search not started: its estimate and pending probe SQL NULL
        db.session.add(CapacitySearch(id="search1", model_key="sim-fast", target=TARGET, max_concurrency=8,
                                      requests=4, slo={"ttft_ms": 500}))
        db.session.commit()
        db.engine.dispose()
    return app


@pytest.fixture
def target(postgres_server_url: str) -> Iterator[str]:
    """A new empty PostgreSQL database (not the test's own one, in the PostgreSQL pass): its URL."""
    url, name = postgres.create_database(postgres_server_url)
    yield url.replace("postgresql+psycopg://", "postgresql://")  # as an operator types it
    postgres.drop_database(postgres_server_url, name)


def run_dbcopy(source_path: Path, target_url: str) -> subprocess.CompletedProcess[str]:
    # DATABASE_URL set, as where an operator runs the platform on PostgreSQL: --from is still the source
    env = {**os.environ, "ENVIRONMENT": "test", "DATABASE_URL": target_url,
           "PEP_LOGGING__DIR": str(source_path.parent / "dbcopy-logs")}
    return subprocess.run([sys.executable, "-m", "backend.dbcopy", "--from", str(source_path), "--to", target_url],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def sqlite_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        names = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != 'alembic_version'")]
        return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def postgres_counts(url: str, names: list[str]) -> dict[str, int]:
    with psycopg.connect(url) as connection:
        return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def null_json_counts(connection: sqlite3.Connection | psycopg.Connection, columns: list[tuple[str, str]]
                     ) -> list[int]:
    """How many rows hold SQL NULL (not JSON null) in each (table, column)."""
    return [connection.execute(f'SELECT count(*) FROM "{t}" WHERE "{c}" IS NULL').fetchone()[0] for t, c in columns]


def json_columns() -> list[tuple[str, str]]:
    from sqlalchemy import JSON

    return [(table.name, column.name) for table in db.metadata.sorted_tables for column in table.columns
            if isinstance(column.type, JSON)]


def test_a_sqlite_database_is_copied_into_postgresql(source: Flask, target: str, tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    before = sqlite_counts(path)
    for table in ("inference_runs", "inference_results", "stress_jobs", "stress_levels", "stress_requests",
                  "stress_samples", "stress_workers", "evaluation_jobs", "evaluation_cells", "evaluation_samples",
                  "capacity_searches", "eval_datasets"):
        assert before[table] > 0, table
    assert (before["stress_requests"], before["evaluation_samples"]) == (5, 8)
    with sqlite3.connect(path) as connection:
        [(output,)] = connection.execute("SELECT output FROM inference_results").fetchall()
    assert output

    done = run_dbcopy(path, target)
    assert done.returncode == 0, done.stderr
    assert f"verified: {sum(before.values())} rows in {len(before)} tables, every value equal" in done.stdout
    assert postgres_counts(target, list(before)) == before
    with sqlite3.connect(path) as lite, psycopg.connect(target) as pg:
        columns = json_columns()
        assert null_json_counts(lite, [("capacity_searches", "estimate")]) == [1]
        assert null_json_counts(pg, columns) == null_json_counts(lite, columns)  # SQL NULL stays SQL NULL

    app = create_app({"database": {"url": target}, "logging": {"dir": str(tmp_path / "pg-logs")},
                      "catalog": {"models_file": TEST_MODELS}})
    from backend.evaluations.models import EvaluationSample
    from backend.inference.models import InferenceRun
    from backend.results.models import StressRequest
    from backend.stress.models import StressJob, StressLevel

    with app.app_context():
        assert db.engine.dialect.name == "postgresql"
        [run] = db.session.scalars(db.select(InferenceRun)).all()
        assert run.prompt == PROMPT and run.models == ["sim-fast"] and run.status == "completed"
        assert run.created_at.tzinfo is not None and run.created_at.utcoffset().total_seconds() == 0
        assert [(r.model, r.status, r.output) for r in run.results] == [("sim-fast", "completed", output)]
        job = db.session.get(StressJob, "stress1")
        assert job.created_at == CREATED and job.created_at.utcoffset().total_seconds() == 0
        assert job.finished_at == datetime(2026, 11, 30, 12, 5, tzinfo=UTC)
        assert job.target == TARGET and job.params["concurrency"] == [1, 2]
        ttfts = db.session.scalars(db.select(StressRequest.ttft_ms).where(StressRequest.job_id == "stress1")
                                   .order_by(StressRequest.position, StressRequest.seq)).all()
        assert ttfts == [100.0, 120.0, None, 150.0, 160.0]
        samples = db.session.scalars(db.select(EvaluationSample).order_by(EvaluationSample.id)).all()
        assert samples[0].input_messages == [{"role": "user", "content": "question s0"}]
        assert [s.correct for s in samples] == [True, False, True, True, False, False, True, True]

        # the sequences continue after the copied ids
        highest = db.session.scalar(db.select(db.func.max(StressLevel.id)))
        level = StressLevel(job_id="stress1", position=2, concurrency=4, requests=1, succeeded=1, failed=0,
                            metrics={}, raw_summary={}, raw_percentiles=[])
        db.session.add(level)
        db.session.commit()
        assert level.id == highest + 1
        for table in ("inference_results", "stress_requests", "stress_samples", "evaluation_cells",
                      "evaluation_samples"):
            copied = db.session.execute(db.text(f"SELECT max(id) FROM {table}")).scalar_one()
            fresh = db.session.execute(db.text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))")
                                       ).scalar_one()
            assert fresh == copied + 1, table
        db.engine.dispose()


def test_a_target_with_rows_is_refused(source: Flask, target: str, tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    assert run_dbcopy(path, target).returncode == 0
    counts = postgres_counts(target, list(sqlite_counts(path)))
    again = run_dbcopy(path, target)
    assert again.returncode == 1
    assert again.stderr.startswith("error: --to: the target database is not empty (")
    assert "stress_jobs" in again.stderr and "copy into a new database" in again.stderr
    assert postgres_counts(target, list(counts)) == counts  # nothing added, nothing overwritten


def test_a_missing_source_is_refused(tmp_path: Path, target: str) -> None:
    done = run_dbcopy(tmp_path / "nothing.db", target)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: --from: {tmp_path / 'nothing.db'} is not a file"


def test_a_table_the_copy_has_no_model_for_is_refused(source: Flask, target: str, tmp_path: Path) -> None:
    """Not skipped: a table of a model module dbcopy does not import would otherwise be left behind."""
    with sqlite3.connect(tmp_path / "app.db") as connection:
        connection.execute("CREATE TABLE plugin_rows (id INTEGER PRIMARY KEY, note TEXT)")
    done = run_dbcopy(tmp_path / "app.db", target)
    assert done.returncode == 1
    assert done.stderr.startswith("error: tables without a model here: plugin_rows (add its module to "
                                  "backend/dbcopy.py's MODEL_MODULES)")
    assert postgres_counts(target, ["stress_jobs", "inference_runs"]) == {"stress_jobs": 0, "inference_runs": 0}
