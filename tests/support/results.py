"""Finished stress jobs made of fixed rows (level rows and per-request rows), for results tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask

from backend.db import db
from backend.results.ingest import pack_columns
from backend.results.models import StressRequest
from backend.stress.models import StressJob, StressLevel

EMPTY = {"avg": None, "p50": None, "p90": None, "p95": None, "p99": None}


def add_job(app: Flask, job_id: str, levels: list[dict[str, Any]], *, status: str = "completed",
            target: dict[str, Any] | None = None, created: datetime | None = None, model: str = "qwen3-8b",
            packed: bool = True) -> None:
    """A finished job with level rows and, for each level, per-request rows (``rows`` in the level), and
    with ``packed`` the level's packed array as the worker writes it."""
    with app.app_context():
        when = created or datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        db.session.add(StressJob(id=job_id, model_key=model, status=status, created_at=when,
                                 finished_at=when + timedelta(minutes=5),
                                 target=target or {"kind": "catalog", "key": model, "provider": "openai",
                                                   "catalog_provider": "emd", "name": "Qwen3 8B",
                                                   "instance_type": "g5.2xlarge", "instances": 1},
                                 params={"concurrency": [lv["concurrency"] for lv in levels], "dataset": "prompt",
                                         "output_tokens": 64, "stream": True},
                                 progress={}))
        db.session.flush()  # the job before its rows: nothing tells the session how they relate
        for position, level in enumerate(levels):
            rows = level.pop("rows")
            db.session.add(StressLevel(job_id=job_id, position=position, requests=len(rows),
                                       succeeded=sum(r["success"] for r in rows),
                                       failed=sum(not r["success"] for r in rows), raw_summary={},
                                       raw_percentiles=[], request_columns=pack_columns(rows) if packed else None,
                                       **level))
            db.session.add_all(StressRequest(job_id=job_id, position=position, seq=i, **row)
                               for i, row in enumerate(rows))
        db.session.commit()


def ok(ttft: float, tpot: float = 20.0, latency: float = 1.0, start: float = 0.0) -> dict[str, Any]:
    return {"success": True, "ttft_ms": ttft, "tpot_ms": tpot, "latency_s": latency, "start_s": start,
            "end_s": start + latency, "input_tokens": 10, "output_tokens": 50}


def failed(start: float = 0.0) -> dict[str, Any]:
    return {"success": False, "start_s": start, "end_s": start + 0.1}


def level(concurrency: int, rows: list[dict[str, Any]], *, duration: float = 10.0, out_tps: float = 500.0,
          complete: bool = True, latency_p50: float | None = 1.0) -> dict[str, Any]:
    return {"concurrency": concurrency, "rows": rows, "duration_s": duration, "req_per_s": len(rows) / duration,
            "output_tokens_per_s": out_tps, "total_tokens_per_s": out_tps * 1.2, "complete": complete,
            "avg_input_tokens": 10.0, "avg_output_tokens": 50.0,
            "metrics": {"latency_s": {**EMPTY, "p50": latency_p50}, "ttft_ms": dict(EMPTY), "tpot_ms": dict(EMPTY),
                        "itl_ms": dict(EMPTY)}}
