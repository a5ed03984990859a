"""Per-request rows of a stress test: what evalscope measured for each request, in our database.

Results are computed from these rows and the level rows (``stress_levels``), so a web host that cannot
see the worker's disk serves them too. A level's requests are stored in the same transaction as its
level row, so the two never disagree (and the level's uniqueness keeps them from being stored twice).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import db


class StressRequest(db.Model):
    __tablename__ = "stress_requests"
    __table_args__ = (Index("ix_stress_requests_job_position", "job_id", "position", "seq", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("stress_jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # the level's 0-based position in the sweep
    seq: Mapped[int] = mapped_column(Integer)  # order of start within the level
    start_s: Mapped[float | None] = mapped_column(Float)  # since the level's first request started
    end_s: Mapped[float | None] = mapped_column(Float)
    success: Mapped[bool] = mapped_column(Boolean)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float | None] = mapped_column(Float)
    tpot_ms: Mapped[float | None] = mapped_column(Float)
    itl_mean_ms: Mapped[float | None] = mapped_column(Float)  # mean gap between tokens of this request
    itl_max_ms: Mapped[float | None] = mapped_column(Float)  # its longest gap (a stall)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)  # what evalscope recorded of a failure, if anything
