"""Stress-test jobs as database rows: the job, its per-level results and its live metric samples.

The statuses, the shared job columns, the worker's row and the one status function are in
``backend/jobs/models.py`` (every job kind shares them); this module re-exports them for its callers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from backend.db import db
from backend.db_types import Json, UtcDateTime
from backend.jobs import models as jobs_models
from backend.jobs.models import (
    ACTIVE,
    ALLOWED,
    FINISHED,
    JobColumns,
    JobStatus,
    JobWorker,
    TransitionError,
    new_job_id,
    utcnow,
)
from backend.security.auth import created_by as actor_name

__all__ = ["ACTIVE", "ALLOWED", "FINISHED", "JobStatus", "ShardBarrier", "StressDataset", "StressJob",
           "StressLevel", "StressSample", "StressWorker", "TransitionError", "new_job_id", "transition", "utcnow"]

# The worker's heartbeat row (table ``stress_workers``), shared by every kind.
StressWorker = JobWorker


class StressJob(JobColumns, db.Model):
    """A stress test: the shared job columns (``backend/jobs/models.py``) and what only stress tests have."""

    __tablename__ = "stress_jobs"
    noun: ClassVar[str] = "stress job"

    estimated_requests: Mapped[int] = mapped_column(Integer, default=0)
    failed_requests: Mapped[int | None] = mapped_column(Integer)
    token_source: Mapped[str | None] = mapped_column(String(16))  # "server" (usage) | "tokenizer"
    # The capacity search this job is a probe of (backend/results/capacity_search.py); None otherwise.
    search_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_by: Mapped[str | None] = mapped_column(String(100), default=actor_name)  # who started it (backend/security)
    # Spread over worker hosts (backend/stress/spread.py): a job whose levels run as ``host_shards`` shard
    # jobs, each claimed by a worker, is never run itself; a shard job names it in ``parent_id``.
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True)
    host_shards: Mapped[int | None] = mapped_column(Integer)

    levels: Mapped[list[StressLevel]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="StressLevel.position",
        passive_deletes=True)


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
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    raw_summary: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # NaN stored as null
    raw_percentiles: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    complete: Mapped[bool] = mapped_column(Boolean, default=True)  # False: cut short (cancel/interrupt)
    # The level's per-request figures as one array (backend/results/ingest.py, pack_columns), written with
    # its stress_requests rows: reading 10,000 rows back costs ~10 ms, the array ~0.1 ms.
    request_columns: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    # A host shard's level (backend/stress/spread.py): its every inter-token gap (float32 .npy), so the
    # level of the job it belongs to gets the percentiles of the union; None for other levels.
    gap_columns: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)

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
            # the load generators' CPU over the level, and whether one was saturated (None: not recorded)
            "client": (self.metrics or {}).get("client"),
        }


class ShardBarrier(db.Model):
    """A shard's arrival at a level of a job spread over hosts (``shard`` >= 0), or the level's common start
    (``shard`` -1), in wall-clock seconds: how shards on several hosts agree when to start a level."""

    __tablename__ = "shard_barriers"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)


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
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    format: Mapped[str] = mapped_column(String(16))  # line_by_line | openqa | custom
    filename: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(Integer)
    records: Mapped[int] = mapped_column(Integer)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at.isoformat(), "format": self.format,
                "filename": self.filename, "size_bytes": self.size_bytes, "records": self.records}


def transition(job_id: str | ColumnElement[Any], to: JobStatus, *where: ColumnElement[bool],
               model: Any = None, **values: Any) -> bool:
    """``backend.jobs.models.transition`` with the table last: a stress job unless ``model`` names another
    (the form this module's callers have always used)."""
    return jobs_models.transition(model or StressJob, job_id, to, *where, **values)
