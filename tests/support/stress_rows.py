"""Stress-job rows written straight into a database, for page and browser tests that need a job in a given
state (finished with failures, running in a given phase) without running evalscope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask

from backend.db import db
from backend.stress.models import StressJob, StressLevel, StressSample, StressWorker

PARAMS: dict[str, Any] = {
    "concurrency": [1, 2], "requests": [3, 4], "input_tokens": 64, "output_tokens": 32, "dataset": "prompt",
    "prompt": "Hello there", "stream": True, "temperature": 0.0, "connect_timeout_s": 10, "read_timeout_s": 120,
    "total_timeout_s": 600, "exact_output_tokens": False, "warmup": 0, "tokenizer": None, "dataset_file": None,
}
METRIC = {"avg": 1.0, "p50": 1.0, "p90": 1.2, "p99": 1.5}


def add_job(app: Flask, model: str = "sim-fast", status: str = "completed", params: dict[str, Any] | None = None,
            target: dict[str, Any] | None = None, **values: Any) -> str:
    """A job row; ``params`` are merged over ``PARAMS``, ``values`` are columns (progress, started_at, ...)."""
    merged = {**PARAMS, **(params or {})}
    total = sum(merged["requests"])
    finished = status in ("completed", "failed", "cancelled", "interrupted")
    levels = len(merged["concurrency"])
    values.setdefault("progress", {"percent": 100.0 if status == "completed" else 0.0,
                                   "level": levels if finished else 0, "levels": levels, "concurrency": None,
                                   "processed": total if status == "completed" else 0, "total": total})
    with app.app_context():
        job = StressJob(model_key=model, status=status,
                        target=target or {"kind": "catalog", "key": model, "name": model, "provider": "openai",
                                          "model_id": model, "label": None},
                        params=merged, estimated_requests=total, token_source="server", **values)
        db.session.add(job)
        db.session.commit()
        return job.id


def add_level(app: Flask, job_id: str, position: int, concurrency: int, *, succeeded: int, failed: int,
              duration_s: float | None = 1.0, avg_input_tokens: float | None = 16.0,
              metrics: dict[str, Any] | None = None) -> None:
    with app.app_context():
        db.session.add(StressLevel(
            job_id=job_id, position=position, concurrency=concurrency, requests=succeeded + failed,
            succeeded=succeeded, failed=failed, duration_s=duration_s, req_per_s=1.0, output_tokens_per_s=20.0,
            total_tokens_per_s=30.0, avg_input_tokens=avg_input_tokens if succeeded else None,
            avg_output_tokens=32.0 if succeeded else None,
            metrics=metrics or {name: dict(METRIC) for name in ("latency_s", "ttft_ms", "tpot_ms", "itl_ms")}))
        db.session.commit()


def add_sample(app: Flask, job_id: str, level: int, *, ok: int, errors: int, t: float = 1.0) -> None:
    with app.app_context():
        db.session.add(StressSample(job_id=job_id, t=t, level=level, processed=ok + errors, ok=ok, errors=errors,
                                    ttft_ms=10.0 if ok else None, latency_s=0.5 if ok else None,
                                    output_tokens_per_s=10.0))
        db.session.commit()


def update_job(app: Flask, job_id: str, **values: Any) -> None:
    with app.app_context():
        job = db.session.get(StressJob, job_id)
        for name, value in values.items():
            setattr(job, name, value)
        db.session.commit()


def delete_jobs(app: Flask, *job_ids: str) -> None:
    with app.app_context():
        for job_id in job_ids:
            db.session.execute(db.delete(StressSample).where(StressSample.job_id == job_id))
            db.session.execute(db.delete(StressLevel).where(StressLevel.job_id == job_id))
            db.session.execute(db.delete(StressJob).where(StressJob.id == job_id))
        db.session.commit()


def add_fake_worker(app: Flask, worker_id: str, alive_for: timedelta = timedelta(hours=1)) -> None:
    """A worker row whose heartbeat stays fresh for ``alive_for``: a real worker leaves the jobs it "follows"
    alone (it re-attaches only jobs whose worker has gone quiet)."""
    now = datetime.now(UTC)
    with app.app_context():
        db.session.add(StressWorker(id=worker_id, pid=0, started_at=now, heartbeat_at=now + alive_for))
        db.session.commit()


def delete_worker(app: Flask, worker_id: str) -> None:
    with app.app_context():
        db.session.execute(db.delete(StressWorker).where(StressWorker.id == worker_id))
        db.session.commit()
