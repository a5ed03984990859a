"""Evaluation jobs as database rows: the job, one cell per model x dataset, and every scored sample.

The job row has the same status columns as a stress job (``backend/stress/models.py``), so the one
``transition()`` function and the shared job machinery move it. A cell is what evalscope evaluates one
model on one dataset; its metrics carry their sample count and 95 % interval. A sample row is one item of
a cell's dataset, with what the model was asked, what it said, what was extracted from it, the
reference and its score (repeats aggregated per sample, each repeat kept in ``repeat_scores``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import db
from backend.db_types import Json, UtcDateTime
from backend.jobs.models import JobColumns, JobStatus
from backend.security.auth import created_by as actor_name

__all__ = ["CellStatus", "EvaluationCell", "EvaluationJob", "EvaluationSample", "JobStatus"]


class CellStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        return self not in (CellStatus.QUEUED, CellStatus.RUNNING)


class EvaluationJob(JobColumns, db.Model):
    """One ``evalscope eval`` job: models x datasets, on the shared job columns (``backend/jobs/models.py``).

    ``model_key`` is the evaluated models' keys joined by "," (catalogue keys or "manual:<name>"), for lists
    and filters; ``target`` is ``{"models": [target, ...], "judge": target | None}``, never a key.
    """

    __tablename__ = "evaluation_jobs"
    noun = "evaluation"

    label: Mapped[str | None] = mapped_column(String(100))
    estimated_requests: Mapped[int] = mapped_column(Integer, default=0)  # samples x repeats over all cells
    failed_requests: Mapped[int | None] = mapped_column(Integer)  # cells that failed
    created_by: Mapped[str | None] = mapped_column(String(100), default=actor_name)  # who started it (backend/security)

    cells: Mapped[list[EvaluationCell]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="EvaluationCell.position",
        passive_deletes=True)


class EvaluationCell(db.Model):
    """One model on one dataset within a job.

    ``metrics`` is ``{name: {"score", "n", "ci_low", "ci_high", "method"}}`` (method ``wilson`` or
    ``bootstrap``); a metric that could not be computed is absent and the cell has failed with the reason.
    ``live`` holds what the predictions and reviews files said so far (done, correct so far).
    """

    __tablename__ = "evaluation_cells"
    __table_args__ = (UniqueConstraint("job_id", "position", name="uq_evaluation_cells_job_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("evaluation_jobs.id", ondelete="CASCADE"),
                                        index=True)
    position: Mapped[int] = mapped_column(Integer)  # model index * datasets + dataset index
    model_key: Mapped[str] = mapped_column(String(200), index=True)
    target: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # provider, model_id, name; no key
    dataset_id: Mapped[str] = mapped_column(String(100), index=True)  # eval_datasets id or a built-in name
    dataset_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # content hash of the version used
    dataset_name: Mapped[str] = mapped_column(String(200))
    dataset_kind: Mapped[str] = mapped_column(String(16))  # mcq | qa | builtin
    benchmark: Mapped[str] = mapped_column(String(64))  # evalscope's benchmark name (general_mcq, ...)
    status: Mapped[str] = mapped_column(String(16), default=CellStatus.QUEUED.value)
    done: Mapped[int] = mapped_column(Integer, default=0)  # samples x repeats answered so far
    total: Mapped[int | None] = mapped_column(Integer)  # samples x repeats expected
    primary_metric: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    live: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    judge_input_tokens: Mapped[int | None] = mapped_column(Integer)
    judge_output_tokens: Mapped[int | None] = mapped_column(Integer)
    judge_cost: Mapped[float | None] = mapped_column(Float)  # USD, from config/pricing.yaml; None when unknown
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    job: Mapped[EvaluationJob] = relationship(back_populates="cells")

    @property
    def cell_status(self) -> CellStatus:
        return CellStatus(self.status)


class EvaluationSample(db.Model):
    """One scored item of a cell. ``score`` is the mean over repeats; ``correct`` is ``score == 1`` for
    proportions (None for a continuous metric such as ROUGE-L)."""

    __tablename__ = "evaluation_samples"
    __table_args__ = (
        UniqueConstraint("cell_id", "sample_index", name="uq_evaluation_samples_cell_index"),
        # "wrong answers of cell X, page N": equality on cell and correct, ordered by index.
        Index("ix_evaluation_samples_cell_correct", "cell_id", "correct", "sample_index"),
        # "samples of cells X and Y by sample id" (side by side).
        Index("ix_evaluation_samples_cell_sample_id", "cell_id", "sample_id"),
        Index("ix_evaluation_samples_cell_subset", "cell_id", "subset", "sample_index"),
        Index("ix_evaluation_samples_cell_score", "cell_id", "score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cell_id: Mapped[int] = mapped_column(Integer, ForeignKey("evaluation_cells.id", ondelete="CASCADE"))
    sample_index: Mapped[int] = mapped_column(Integer)  # evalscope's index within the cell (all subsets)
    sample_id: Mapped[str] = mapped_column(String(200))  # the dataset's own id when it has one, else the index
    subset: Mapped[str] = mapped_column(String(200), default="default")
    input_messages: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)  # [{role, content}]
    prediction: Mapped[str | None] = mapped_column(Text)  # the model's raw answer (first repeat)
    extracted: Mapped[str | None] = mapped_column(Text)  # what scoring read from it (a letter for MCQ)
    reference: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)  # primary metric, mean over repeats
    correct: Mapped[bool | None] = mapped_column(Boolean)
    scores: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # every metric of the sample (means)
    repeat_scores: Mapped[list[float]] = mapped_column(Json, default=list)  # primary metric per repeat
    judge_verdict: Mapped[str | None] = mapped_column(Text)  # the judge's raw text
    judge_explanation: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)  # the request failed (no prediction)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", Json, default=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.sample_index, "sample_id": self.sample_id, "subset": self.subset,
                "input_messages": self.input_messages, "prediction": self.prediction,
                "extracted": self.extracted, "reference": self.reference, "score": self.score,
                "correct": self.correct, "scores": self.scores, "repeat_scores": self.repeat_scores,
                "judge_verdict": self.judge_verdict, "judge_explanation": self.judge_explanation,
                "error": self.error, "metadata": self.meta}
