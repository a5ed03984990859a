"""Stress-test jobs as database rows: the job, its per-level results and its live metric samples.

The row is the single source of truth. Every status change goes through ``transition``, a conditional
UPDATE that only applies when the row is in a state the change is allowed from, so a web process
cancelling and the worker finishing the same job cannot both win.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from backend.db import db


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


class StressJob(db.Model):
    __tablename__ = "stress_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    model_key: Mapped[str] = mapped_column(String(200), index=True)  # catalogue key or "manual:<name>"
    # Where the load goes: catalogue key, provider, model_id, name; for a manual endpoint its URL,
    # model_name and api_key_given. Never the key itself.
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # validated, see params.py
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)  # Fernet token; wiped when finished
    estimated_requests: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)
    pgid: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    failed_requests: Mapped[int | None] = mapped_column(Integer)
    token_source: Mapped[str | None] = mapped_column(String(16))  # "server" (usage) | "tokenizer"
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The capacity search this job is a probe of (backend/results/capacity_search.py); None otherwise.
    search_id: Mapped[str | None] = mapped_column(String(32), index=True)

    levels: Mapped[list[StressLevel]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="StressLevel.position",
        passive_deletes=True)

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    @property
    def is_finished(self) -> bool:
        return self.job_status.is_finished


class StressLevel(db.Model):
    """The results of one concurrency level, from evalscope's benchmark_summary/percentile files.

    One row per job and position: ingestion may be attempted again (a restarted worker), never twice stored.
    """

    __tablename__ = "stress_levels"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_stress_levels_job_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("stress_jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 0-based order in the sweep
    concurrency: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)
    succeeded: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    req_per_s: Mapped[float | None] = mapped_column(Float)
    output_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    total_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    avg_input_tokens: Mapped[float | None] = mapped_column(Float)
    avg_output_tokens: Mapped[float | None] = mapped_column(Float)
    # {"latency_s": {avg, p50, p90, p99}, "ttft_ms": {...}, "tpot_ms": {...}, "itl_ms": {...}}
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    raw_summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # NaN stored as null
    raw_percentiles: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    complete: Mapped[bool] = mapped_column(Boolean, default=True)  # False: cut short (cancel/interrupt)
    # The level's per-request figures as one array (backend/results/ingest.py, pack_columns), written with
    # its stress_requests rows: reading 10,000 rows back costs ~10 ms, the array ~0.1 ms.
    request_columns: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)

    job: Mapped[StressJob] = relationship(back_populates="levels")

    def as_dict(self) -> dict[str, Any]:
        empty = {"avg": None, "p50": None, "p90": None, "p99": None}
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "complete": self.complete,
            "duration_s": self.duration_s,
            "req_per_s": self.req_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
            "avg_input_tokens": self.avg_input_tokens,
            "avg_output_tokens": self.avg_output_tokens,
            **{name: (self.metrics or {}).get(name, dict(empty))
               for name in ("latency_s", "ttft_ms", "tpot_ms", "itl_ms")},
        }


class StressSample(db.Model):
    """A live metric point recorded while a level runs (about one a second), for live charts."""

    __tablename__ = "stress_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("stress_jobs.id", ondelete="CASCADE"), index=True)
    t: Mapped[float] = mapped_column(Float)  # seconds since the job started
    level: Mapped[int] = mapped_column(Integer)  # concurrency of the level running
    processed: Mapped[int] = mapped_column(Integer)  # requests done in the whole job
    ok: Mapped[int] = mapped_column(Integer)  # succeeded so far in this level
    errors: Mapped[int] = mapped_column(Integer)  # failed so far in this level
    ttft_ms: Mapped[float | None] = mapped_column(Float)  # mean over requests done since the last sample
    latency_s: Mapped[float | None] = mapped_column(Float)
    output_tokens_per_s: Mapped[float | None] = mapped_column(Float)  # completed tokens / wall time

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "t": self.t, "level": self.level, "processed": self.processed, "ok": self.ok,
                "errors": self.errors, "ttft_ms": self.ttft_ms, "latency_s": self.latency_s,
                "output_tokens_per_s": self.output_tokens_per_s}


class StressDataset(db.Model):
    """An uploaded prompt file; stored as data/datasets/<id>.<ext>, the client's name is display text only."""

    __tablename__ = "stress_datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    format: Mapped[str] = mapped_column(String(16))  # line_by_line | openqa | custom
    filename: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(Integer)
    records: Mapped[int] = mapped_column(Integer)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at.isoformat(), "format": self.format,
                "filename": self.filename, "size_bytes": self.size_bytes, "records": self.records}


class StressWorker(db.Model):
    """A worker process's heartbeat, so the API can say when no worker is running."""

    __tablename__ = "stress_workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


def transition(job_id: str | ColumnElement[Any], to: JobStatus, *extra_where: ColumnElement[bool],
               model: Any = None, **values: Any) -> bool:
    """Move a job to ``to`` if its current status allows it; True when this call made the change.

    The check and the write are one UPDATE, so concurrent callers (API and worker, or two workers
    claiming) cannot both move the same job. Finishing sets ``finished_at`` and wipes the encrypted
    key; starting sets ``started_at``. ``model`` is the job's table: a stress job by default, or
    another kind with the same status columns (a capacity search). The caller commits.
    """
    model = model or StressJob
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
                 .where(model.id == job_id, model.status.in_(sources), *extra_where)
                 .values(**changes)
                 .execution_options(synchronize_session=False))
    return db.session.execute(statement).rowcount == 1
