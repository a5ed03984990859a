from __future__ import annotations

import sqlite3
from pathlib import Path

from flask import Flask


def test_migrations_build_an_empty_database(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"inference_runs", "inference_results", "alembic_version"} <= tables
    assert {"stress_jobs", "stress_levels", "stress_samples", "stress_datasets", "stress_workers"} <= tables
    assert version == _head_revision()
    assert journal == "wal"


def _head_revision() -> str:
    """The newest migration, read from the migration scripts themselves."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from backend.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def test_health_and_ready(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").json == {"status": "ok", "database": "ok"}


def test_ready_reports_a_broken_database(app: Flask, tmp_path: Path) -> None:
    from backend.db import db

    with app.app_context():
        db.engine.dispose()
    (tmp_path / "app.db").unlink()
    (tmp_path / "app.db").mkdir()  # a directory where the file was: SQLite cannot open it
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
