from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import inspect, text


@pytest.mark.empty_database
def test_migrations_build_an_empty_database(app: Flask) -> None:
    from backend.db import db

    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
        version = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert {"inference_runs", "inference_results", "alembic_version"} <= tables
    assert {"stress_jobs", "stress_levels", "stress_samples", "stress_datasets", "stress_workers"} <= tables
    assert version == _head_revision()


@pytest.mark.sqlite_only
def test_the_sqlite_file_is_in_wal_mode(app: Flask, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "app.db") as connection:
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
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


@pytest.mark.sqlite_only
def test_ready_reports_a_broken_database(app: Flask, tmp_path: Path) -> None:
    from backend.db import db

    with app.app_context():
        db.engine.dispose()
    (tmp_path / "app.db").unlink()
    (tmp_path / "app.db").mkdir()  # a directory where the file was: SQLite cannot open it
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"


def test_ready_reports_a_dropped_postgresql_database(app: Flask, _database: str) -> None:
    """PostgreSQL's counterpart: the app's database dropped under it (its connections closed by the server)."""
    if _database != "postgresql":
        pytest.skip("a PostgreSQL database: run with --database=postgresql")
    from tests.support import postgres

    assert app.test_client().get("/ready").status_code == 200  # a pooled connection to the database exists
    server_url, name = os.environ["DATABASE_URL"].rsplit("/", 1)
    postgres.drop_database(server_url + "/postgres", name)  # WITH (FORCE)
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
