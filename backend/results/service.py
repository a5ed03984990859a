"""The results of stress jobs, read from the database only (level rows and per-request rows).

``job_results`` gives everything one job's page, its API route and its exports show: the per-level
table (with goodput, the SLO verdict and the cost of each level), the summary cards, the capacity,
and the SLO and prices they were judged with. ``list_results`` pages through finished jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import func, or_, select

from backend.db import db
from backend.errors import ApiError, NotFound
from backend.results.cost import Cost, Pricing, level_cost
from backend.results.ingest import PACKED, unpack_columns
from backend.results.metrics import Columns, Slo, Verdict, capacity, goodput, judge
from backend.results.models import StressRequest
from backend.stress.models import FINISHED, StressJob, StressLevel

METRICS = ("latency_s", "ttft_ms", "tpot_ms", "itl_ms")
QUANTILES = ("avg", "p50", "p90", "p95", "p99")


def settings() -> dict[str, Any]:
    return current_app.config["PEP"]["results"]


def default_slo() -> Slo:
    return Slo.from_mapping(settings()["slo"])


def pricing() -> Pricing:
    return Pricing.load(settings()["pricing_file"])


def stress_job(job_id: str) -> StressJob:
    """A stress job, finished or not (a running job's results are its finished levels so far)."""
    job = db.session.get(StressJob, job_id)
    if job is None:
        raise NotFound(f"no stress job {job_id!r}")
    return job


# --- one job -------------------------------------------------------------------------------------


@dataclass
class RequestTable:
    """A job's per-request rows as one float array (NaN where a figure is missing), sorted by level and
    start: columns position, success, start_s, ttft_ms, tpot_ms, latency_s. Read in one query."""

    data: np.ndarray

    COLUMNS = ("position", *PACKED)

    def positions(self) -> list[int]:
        return [int(p) for p in np.unique(self.data[:, 0])] if len(self.data) else []

    def rows_of(self, position: int) -> np.ndarray:
        return self.data[self.data[:, 0] == position]

    def columns(self, position: int) -> Columns:
        part = self.rows_of(position)
        return Columns(success=part[:, 1] == 1.0, ttft_ms=part[:, 3], tpot_ms=part[:, 4], latency_s=part[:, 5])


def _raw_rows(statement: Any) -> list[tuple[Any, ...]]:
    """The rows of a query as the driver's plain tuples. SQLAlchemy's Row objects cost ~12 µs a row:
    1.3 s for the 100,000 requests of a large job, against 0.1 s from the driver's cursor."""
    return db.session.connection().execute(statement).cursor.fetchall()


def load_requests(job_id: str) -> RequestTable:
    """From each level's packed array when every level has one (written with its rows at ingestion),
    otherwise from the per-request rows themselves."""
    packed = _raw_rows(select(StressLevel.position, StressLevel.request_columns)
                       .where(StressLevel.job_id == job_id).order_by(StressLevel.position))
    arrays = [(position, unpack_columns(blob) if blob else None) for position, blob in packed]
    if arrays and all(array is not None for _, array in arrays):
        parts = [np.column_stack([np.full(len(array), float(position)), array]) for position, array in arrays]
        return RequestTable(data=np.vstack(parts) if parts else np.empty((0, len(RequestTable.COLUMNS))))
    rows = _raw_rows(select(*(getattr(StressRequest, name) for name in RequestTable.COLUMNS))
                     .where(StressRequest.job_id == job_id).order_by(StressRequest.position, StressRequest.seq))
    data = np.array(rows, dtype=float) if rows else np.empty((0, len(RequestTable.COLUMNS)))
    return RequestTable(data=data)  # None becomes NaN in a float array


def _level_row(level: StressLevel, columns: Columns | None, slo: Slo, prices: Pricing,
               target: dict[str, Any]) -> tuple[dict[str, Any], Verdict]:
    data = level.as_dict()
    data["position"] = level.position
    data["metrics"] = {name: {q: (level.metrics or {}).get(name, {}).get(q) for q in QUANTILES} for name in METRICS}
    data["error_rate"] = level.failed / level.requests if level.requests else None
    data["client"] = (level.metrics or {}).get("client")  # load generators' CPU; "saturated" when one was
    data["per_request_rows"] = len(columns) if columns is not None else 0
    if columns is not None and len(columns):
        data["goodput"] = goodput(columns, slo, level.duration_s).as_dict()
    else:
        data["goodput"] = {"good": None, "total": None, "fraction": None, "per_s": None,
                           "reason": "no per-request rows for this level"}
    verdict = judge(data, columns if columns is not None else [], slo)
    data["slo"] = verdict.as_dict()
    data["cost"] = level_cost(prices, target, data).as_dict()
    return data, verdict


def _best(levels: list[dict[str, Any]], key: Any, highest: bool) -> dict[str, Any] | None:
    """The level with the best value of ``key`` (None values never win), with that value."""
    scored = [(value, level) for level in levels if (value := key(level)) is not None]
    if not scored:
        return None
    value, level = (max if highest else min)(scored, key=lambda pair: pair[0])
    return {"value": value, "concurrency": level["concurrency"], "partial": not level["complete"]}


def job_results(job: StressJob, slo: Slo | None = None, table: RequestTable | None = None) -> dict[str, Any]:
    """Everything the results page shows of one job; ``table`` when the caller has loaded it already."""
    slo = slo or default_slo()
    prices = pricing()
    table = table if table is not None else load_requests(job.id)
    present = set(table.positions())
    target = dict(job.target)
    rows = [_level_row(level, table.columns(level.position) if level.position in present else None, slo, prices,
                       target) for level in job.levels]
    levels = [row for row, _ in rows]
    found = capacity(levels, [verdict for _, verdict in rows])
    at_capacity = next((level for level in levels if level["position"] == found.position), None)
    requests = sum(level["requests"] for level in levels)
    failed = sum(level["failed"] for level in levels)
    summary = {
        "peak_req_per_s": _best(levels, lambda lv: lv["req_per_s"], highest=True),
        "peak_output_tokens_per_s": _best(levels, lambda lv: lv["output_tokens_per_s"], highest=True),
        "lowest_p50_latency_s": _best(levels, lambda lv: lv["latency_s"]["p50"], highest=False),
        "error_rate": {"value": failed / requests if requests else None, "failed": failed, "requests": requests},
        "capacity": found.as_dict(),
        "cost_at_capacity": (at_capacity["cost"] if at_capacity is not None
                             else Cost(None, "no capacity: no level meets the SLO").as_dict()),
    }
    return {
        "job": _job_summary(job),
        "slo": {**slo.as_dict(), "description": slo.describe()},
        "pricing": {"as_of": prices.as_of, "region": prices.region},
        "summary": summary,
        "levels": levels,
        "partial": any(not level["complete"] for level in levels),
    }


def _job_summary(job: StressJob) -> dict[str, Any]:
    params = dict(job.params)
    return {"id": job.id, "status": job.status, "model": job.model_key, "name": (job.target or {}).get("name"),
            "target": {k: v for k, v in dict(job.target).items() if k not in ("api_key_env",)},
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": job.error, "token_source": job.token_source,
            "search_id": job.search_id,  # the capacity search this job is a probe of, if any
            "workload": {key: params.get(key) for key in ("dataset", "input_tokens", "output_tokens", "stream",
                                                           "temperature", "tokenizer", "dataset_file")},
            "concurrency": params.get("concurrency"), "requests": params.get("requests")}


def request_rows(job_id: str) -> list[dict[str, Any]]:
    """Every per-request row of a job, for the CSV export."""
    names = ("position", "seq", "start_s", "end_s", "success", "ttft_ms", "latency_s", "tpot_ms", "itl_mean_ms",
             "itl_max_ms", "input_tokens", "output_tokens", "error")
    query = (select(*(getattr(StressRequest, name) for name in names)).where(StressRequest.job_id == job_id)
             .order_by(StressRequest.position, StressRequest.seq))
    rows = [dict(zip(names, row, strict=True)) for row in _raw_rows(query)]
    for row in rows:
        row["success"] = bool(row["success"])  # the driver's 0/1
    return rows


# --- many jobs -----------------------------------------------------------------------------------


def _date(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(f"{name}: must be a date (YYYY-MM-DD)", field=name) from None


def list_results(*, model: str | None, status: str | None, since: str | None, until: str | None,
                 text: str | None, limit: int, offset: int) -> dict[str, Any]:
    """Finished jobs, newest first, with their headline figures from the level rows."""
    finished = [s.value for s in FINISHED]
    # a host shard's levels are a part of its job's (backend/stress/spread.py): the job is listed, not it
    query = select(StressJob).where(StressJob.status.in_(finished), StressJob.parent_id.is_(None))
    if status:
        if status not in finished:
            raise ApiError(f"status: must be one of {', '.join(finished)}", field="status")
        query = query.where(StressJob.status == status)
    if model:
        query = query.where(StressJob.model_key == model)
    if (start := _date(since, "since")) is not None:
        query = query.where(StressJob.created_at >= start)
    if (end := _date(until, "until")) is not None:
        query = query.where(StressJob.created_at < end)
    if text:
        query = query.where(or_(StressJob.id.icontains(text, autoescape=True),
                                StressJob.model_key.icontains(text, autoescape=True),
                                StressJob.target["name"].as_string().icontains(text, autoescape=True)))
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = db.session.scalars(query.order_by(StressJob.created_at.desc(), StressJob.id)
                              .limit(limit).offset(offset)).all()
    items = []
    for job in jobs:
        levels = job.levels
        items.append({**_job_summary(job), "levels": len(levels),
                      "partial": any(not level.complete for level in levels),
                      "peak_req_per_s": max((lv.req_per_s for lv in levels if lv.req_per_s is not None), default=None),
                      "peak_output_tokens_per_s": max((lv.output_tokens_per_s for lv in levels
                                                       if lv.output_tokens_per_s is not None), default=None)})
    return {"results": items, "total": total, "limit": limit, "offset": offset}
