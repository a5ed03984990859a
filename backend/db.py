"""The database: one flask-sqlalchemy object, SQLite pragmas, and Alembic migrations applied on start."""

from __future__ import annotations

import fcntl
from pathlib import Path

from flask import Flask
from flask_migrate import Migrate, upgrade
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

from backend.config import resolve_path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate(directory=str(MIGRATIONS_DIR), render_as_batch=True)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        # WAL lets the worker write while web processes read; busy_timeout waits out short write locks.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def database_path(config: dict) -> Path:
    return resolve_path(config["database"]["path"])


def init_app(app: Flask) -> None:
    path = database_path(app.config["PEP"])
    path.parent.mkdir(parents=True, exist_ok=True)
    app.config.setdefault("SQLALCHEMY_DATABASE_URI", f"sqlite:///{path}")
    app.config.setdefault("SQLALCHEMY_ECHO", bool(app.config["PEP"]["database"]["echo"]))
    db.init_app(app)
    migrate.init_app(app, db)
    # Import the models so that Alembic and create_all see every table.
    from backend.inference import models as _inference_models  # noqa: F401
    from backend.results import capacity_search as _capacity_models  # noqa: F401
    from backend.results import models as _results_models  # noqa: F401
    from backend.stress import models as _stress_models  # noqa: F401

    if app.config["PEP"]["database"]["auto_migrate"]:
        migrate_to_head(app, path)


def migrate_to_head(app: Flask, path: Path) -> None:
    """Apply migrations once, even when several gunicorn workers start together."""
    lock_path = path.with_name(path.name + ".migrate.lock")
    with open(lock_path, "w") as lock, app.app_context():
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            upgrade(directory=str(MIGRATIONS_DIR))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ping() -> None:
    db.session.execute(text("SELECT 1"))
