"""Copy a SQLite database of the platform into PostgreSQL, then verify it row for row.

    python -m backend.dbcopy --from data/app.db --to postgresql://user:password@host/pep

Both databases are first brought to the newest migration (the source as the platform would on its next
start), so their tables are the same. The target must be empty: nothing is merged or overwritten. Tables
are copied parents first, in batches, with the models' own column types (JSON, timestamps, blobs), so what
PostgreSQL holds is what the platform wrote; integer keys' sequences are moved past the copied ids. Then
every table is read back from both sides in key order and compared value for value; any difference is
named (table, key, column) and the command exits 1. Stop the platform (web and worker) before copying.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Engine, Table, Text, cast, func, insert, inspect, null, select, text

BATCH = 2000


class CopyError(RuntimeError):
    """The copy cannot start or did not verify; the message says why."""


# Every module that defines tables: a table missing here is refused by ``_check_tables`` (never skipped).
MODEL_MODULES = ("backend.evaluations.dataset_models", "backend.evaluations.models", "backend.inference.models",
                 "backend.jobs.logs", "backend.jobs.models", "backend.jobs.storage",
                 "backend.results.capacity_search", "backend.results.models", "backend.stress.models")


def import_models() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)


def _check_tables(engine: Engine, tables: Sequence[Table]) -> None:
    """Every table of the migrated database is one the copy knows the columns of."""
    unknown = set(inspect(engine).get_table_names()) - {t.name for t in tables} - {"alembic_version"}
    if unknown:
        raise CopyError(f"tables without a model here: {', '.join(sorted(unknown))} (add its module to "
                        "backend/dbcopy.py's MODEL_MODULES)")


def _engine(overrides: dict[str, Any]) -> Engine:
    """The database's engine, migrated to the newest revision. Only the database part of the platform is
    set up: the whole app would also store its bundled evaluation datasets, and the target, with those rows
    in it, would no longer be empty (nor the source as it was)."""
    from flask import Flask

    from backend import db, logging_setup
    from backend.config import load_config

    import_models()
    app = Flask(__name__)
    app.config["PEP"] = load_config(overrides={"database": {**overrides, "auto_migrate": True}})
    logging_setup.init_app(app)
    db.init_app(app)  # the models and the migrations
    with app.app_context():
        return db.db.engine


def _rows(engine: Engine, table: Table) -> Iterator[dict[str, Any]]:
    """The table's rows in key order. A JSON column is read as its text, so that SQL NULL (``None`` here,
    written back as ``null()``) and a stored JSON ``null`` (``JSON.NULL``) stay apart: the models' JSON type
    reads both as ``None`` and would write every ``None`` as JSON ``null``."""
    key = list(table.primary_key.columns) or list(table.columns)
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    columns = [cast(c, Text).label(c.name) if c.name in json_columns else c for c in table.columns]
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=BATCH).execute(select(*columns).order_by(*key))
        for row in result.mappings():
            values = dict(row)
            for name in json_columns:
                if values[name] is not None:
                    decoded = json.loads(values[name])
                    values[name] = JSON.NULL if decoded is None else decoded
            yield values


def _insertable(row: dict[str, Any], table: Table) -> dict[str, Any]:
    return {name: null() if value is None and isinstance(table.c[name].type, JSON) else value
            for name, value in row.items()}


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _reset_sequences(connection: Any, table: Table) -> None:
    for column in table.primary_key.columns:
        if column.autoincrement is True or (column.autoincrement == "auto" and column.type.python_type is int):
            sequence = connection.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                          {"t": table.name, "c": column.name}).scalar()
            if sequence:
                highest = f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1"
                connection.execute(text(f"SELECT setval(:s, {highest}, false)"), {"s": sequence})


def copy(source_path: Path, target_url: str, out: Any = sys.stdout) -> dict[str, int]:
    """Copy and verify; the number of rows of each table."""
    from backend.db import db

    if not source_path.is_file():
        raise CopyError(f"--from: {source_path} is not a file")
    source = _engine({"path": str(source_path), "url": None})  # whatever DATABASE_URL says
    target = _engine({"url": target_url})
    if target.dialect.name != "postgresql":
        raise CopyError("--to: must be a postgresql:// URL")
    tables = list(db.metadata.sorted_tables)
    _check_tables(source, tables)
    _check_tables(target, tables)
    with target.connect() as connection:
        busy = [t.name for t in tables if connection.execute(select(func.count()).select_from(t)).scalar()]
    if busy:
        raise CopyError(f"--to: the target database is not empty ({', '.join(busy)} have rows); "
                        "copy into a new database")
    counts: dict[str, int] = {}
    with target.begin() as connection:  # all or nothing
        for table in tables:
            counts[table.name] = 0
            for batch in _batches(_rows(source, table)):
                connection.execute(insert(table), [_insertable(row, table) for row in batch])
                counts[table.name] += len(batch)
            _reset_sequences(connection, table)
            print(f"copied {table.name}: {counts[table.name]} rows", file=out)
    differences = verify(source, target, tables)
    if differences:
        raise CopyError("the copy does not match its source:\n" + "\n".join(differences[:20]))
    print(f"verified: {sum(counts.values())} rows in {len(tables)} tables, every value equal", file=out)
    return counts


def verify(source: Engine, target: Engine, tables: Sequence[Table]) -> list[str]:
    """Every row of every table, in key order, compared value for value; the differences found."""
    differences: list[str] = []
    for table in tables:
        key = [c.name for c in table.primary_key.columns]
        left, right = _rows(source, table), _rows(target, table)
        position = 0
        while True:
            a, b = next(left, None), next(right, None)
            if a is None and b is None:
                break
            if a is None or b is None:
                differences.append(f"{table.name}: {'the target' if a is None else 'the source'} has fewer rows "
                                   f"(after {position})")
                break
            for column, value in a.items():
                if b[column] != value:
                    differences.append(f"{table.name} {tuple(a[k] for k in key)}: {column} differs")
            position += 1
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.dbcopy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, type=Path, help="the SQLite file (data/app.db)")
    parser.add_argument("--to", dest="target", required=True, help="postgresql://user:password@host/database")
    args = parser.parse_args(argv)
    try:
        copy(args.source, args.target)
    except CopyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
