"""Column types that mean the same on SQLite and PostgreSQL.

- ``UtcDateTime``: a moment in time. ``timestamptz`` on PostgreSQL; on SQLite (which has no time zones) the
  UTC wall time. Always written as UTC and always read back timezone-aware (UTC), whichever database, so
  code never compares a naive value with an aware one.
- ``Json``: JSON on SQLite, ``JSONB`` on PostgreSQL (indexable, compact, keys normalised).

Models and migrations use these; a migration imports them so that the tables it creates match the models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

Json = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # a naive value is taken as UTC, as everything here is
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores the text it is given; keep it free of an offset so that text order is time order
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # a raw SQLite value from a function result
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
