"""The database: one flask-sqlalchemy object, SQLite or PostgreSQL, and Alembic migrations applied on start.

SQLite (``database.path``) is the default: one machine, nothing to install. ``database.url`` (or
``DATABASE_URL``) names a PostgreSQL server instead, shared by several web and worker hosts. Its driver is
psycopg 3, which waits cooperatively under gevent (gunicorn's workers) on its own, from 3.1.14 on. The
SQLite settings (WAL, busy timeout) apply to SQLite connections only.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from flask import Flask
from flask_migrate import Migrate, upgrade
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
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


def database_url(config: dict) -> str:
    """The SQLAlchemy URL: ``database.url`` when set (PostgreSQL, through psycopg 3), else SQLite at
    ``database.path``."""
    url = config["database"].get("url")
    if not url:
        return f"sqlite:///{database_path(config)}"
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError(f"database.url: {parsed.get_backend_name()!r} is not supported (postgresql or sqlite)")
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")  # postgres:// and postgresql:// alike
    return parsed.render_as_string(hide_password=False)


def is_postgresql() -> bool:
    return db.engine.dialect.name == "postgresql"


def init_app(app: Flask) -> None:
    url = database_url(app.config["PEP"])
    if url.startswith("sqlite"):
        database_path(app.config["PEP"]).parent.mkdir(parents=True, exist_ok=True)
    else:
        # a connection dropped by the server or a load balancer is replaced, not handed to a request
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True, "pool_size": 10,
                                                             "max_overflow": 20})
    app.config.setdefault("SQLALCHEMY_DATABASE_URI", url)
    app.config.setdefault("SQLALCHEMY_ECHO", bool(app.config["PEP"]["database"]["echo"]))
    db.init_app(app)
    migrate.init_app(app, db)
    # Import the models so that Alembic and create_all see every table.
    from backend.inference import models as _inference_models  # noqa: F401
    from backend.results import capacity_search as _capacity_models  # noqa: F401
    from backend.results import models as _results_models  # noqa: F401
    from backend.stress import models as _stress_models  # noqa: F401

    if app.config["PEP"]["database"]["auto_migrate"]:
        migrate_to_head(app)


# The key of the PostgreSQL advisory lock that migrations are applied under (any fixed 64-bit number).
MIGRATION_LOCK = 0x7065_7000_6D69_6772


def migrate_to_head(app: Flask) -> None:
    """Apply migrations once, even when several gunicorn workers (or, on PostgreSQL, several hosts) start
    together: under a lock file beside the SQLite database, or a PostgreSQL advisory lock."""
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
                try:
                    upgrade(directory=str(MIGRATIONS_DIR))
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            return
        path = database_path(app.config["PEP"])
        with open(path.with_name(path.name + ".migrate.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                upgrade(directory=str(MIGRATIONS_DIR))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def ping() -> None:
    db.session.execute(text("SELECT 1"))
