"""The ``eval_datasets`` table: one row per distinct dataset content (its id is derived from the hash)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import db
from backend.db_types import Json, UtcDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


class EvalDataset(db.Model):
    """A multiple-choice (``mcq``) or question-answering (``qa``) dataset stored under
    ``evaluations.datasets_dir/<id>/`` in the layout evalscope's ``general_mcq`` / ``general_qa`` read.

    ``content_hash`` is the sha256 of the normalised stored files (``datasets.content_hash``); the same
    content uploaded again is the same row, a changed file is a new row. ``name`` and the file names are
    display text from the first upload only.
    """

    __tablename__ = "eval_datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(8))  # mcq | qa
    name: Mapped[str] = mapped_column(String(100))
    bundled: Mapped[bool] = mapped_column(Boolean, default=False)
    filename: Mapped[str] = mapped_column(String(200))
    dev_filename: Mapped[str | None] = mapped_column(String(200))
    items: Mapped[int] = mapped_column(Integer)
    dev_items: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(Integer)  # the normalised stored files together
    # {"choices": {"A": 10, ...}} (answer letters) or {"reference_chars": {...}}; see datasets.summarise
    summary: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "content_hash": self.content_hash,
            "created_at": self.created_at.isoformat(),
            "kind": self.kind,
            "name": self.name,
            "bundled": self.bundled,
            "filename": self.filename,
            "dev_filename": self.dev_filename,
            "items": self.items,
            "dev_items": self.dev_items,
            "size_bytes": self.size_bytes,
            "summary": self.summary or {},
        }
