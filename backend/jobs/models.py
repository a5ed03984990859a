"""Job rows for every kind: the statuses, the one transition function, the shared columns, the worker row.

The row is the single source of truth. Every status change of every kind (stress jobs, capacity searches,
evaluation jobs) goes through ``transition``, a conditional UPDATE that applies only when the row is in a
status the change is allowed from, so a web process cancelling and a worker finishing the same job (or two
workers claiming it) cannot both win.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import Boolean, Integer, String, Text, update
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from backend.db import db
from backend.db_types import Json, UtcDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED})
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})

# Which status each status may move to; finished statuses move nowhere.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.CANCELLING, JobStatus.COMPLETED, JobStatus.FAILED,
                                  JobStatus.INTERRUPTED}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.COMPLETED, JobStatus.FAILED,
                                     JobStatus.INTERRUPTED}),
}


class TransitionError(ValueError):
    """A status change that the state machine never allows (a programming error, not a race)."""


class JobColumns:
    """The columns every job kind's row has (``stress_jobs``, ``evaluation_jobs``), and its status.

    A kind's model is ``class XJob(JobColumns, db.Model)`` with its ``__tablename__``, its own columns and
    ``noun`` (what a 404 calls it). The definitions are exactly those of migration 0002's ``stress_jobs``
    (types, nullability, indexes): a table that uses the mixin gets the same columns.
    """

    noun: ClassVar[str] = "job"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    model_key: Mapped[str] = mapped_column(String(200), index=True)  # catalogue key or "manual:<name>"
    # Where the job goes: catalogue key, provider, model_id, name; for a manual endpoint its URL,
    # model_name and api_key_given. Never the key itself.
    target: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # validated by the kind
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)  # Fernet token; wiped when finished
    pid: Mapped[int | None] = mapped_column(Integer)
    pgid: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(64))  # the worker that runs it
    worker_host: Mapped[str | None] = mapped_column(String(255))  # the host its process runs on
    labels: Mapped[list[str] | None] = mapped_column(Json)  # what a worker must have to take it (placement.py)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # that worker's last tick
    progress: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # the kind's shape
    error: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    @property
    def is_finished(self) -> bool:
        return self.job_status.is_finished


class JobWorker(db.Model):
    """A worker process's heartbeat (one worker runs every kind), so pages and the API can say when no
    worker is running and recovery can tell a live worker's jobs from orphans. The table keeps the name it
    had when only stress tests had a worker.

    Each heartbeat renews the worker's lease (``lease_until``: the heartbeat plus ``stress.worker_stale_s``);
    once it has expired, any live worker ends the jobs it held as interrupted (backend/jobs/worker.py)."""

    __tablename__ = "stress_workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[list[str] | None] = mapped_column(Json)
    capacity: Mapped[dict[str, int] | None] = mapped_column(Json)  # kind name -> jobs it runs at once
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def lease_valid(self, now: datetime) -> bool:
        return self.lease_until is not None and self.lease_until >= now


def transition(model: Any, job_id: str | ColumnElement[Any], to: JobStatus, *where: ColumnElement[bool],
               **values: Any) -> bool:
    """Move the ``model`` row ``job_id`` to ``to`` if its status allows it; True when this call made the change.

    ``model`` is the kind's table (``StressJob``, ``CapacitySearch``, ``EvaluationJob``: any with ``id``,
    ``status``, ``started_at``, ``finished_at`` and ``api_key_encrypted``). The check and the write are one
    UPDATE, so concurrent callers cannot both move the same row; ``where`` adds conditions to it (the claim's
    limit, a version). Finishing sets ``finished_at`` and wipes the encrypted key; starting sets
    ``started_at``; ``values`` are written with the change. The caller commits.
    """
    sources = [source.value for source, targets in ALLOWED.items() if to in targets]
    if not sources:
        raise TransitionError(f"no status may move to {to!r}")
    changes: dict[str, Any] = {"status": to.value, **values}
    now = utcnow()
    if to is JobStatus.RUNNING:
        changes.setdefault("started_at", now)
    if to.is_finished:
        changes.setdefault("finished_at", now)
        changes["api_key_encrypted"] = None
    statement = (update(model)
                 .where(model.id == job_id, model.status.in_(sources), *where)
                 .values(**changes)
                 .execution_options(synchronize_session=False))
    return db.session.execute(statement).rowcount == 1
