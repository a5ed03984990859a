"""Quality against speed and cost: for models with both an evaluation score and stress-test results, the
score against the output tokens/s at SLO capacity and against the cost per million output tokens there.

- **Speed and cost of a model** (``deployment``): from its most recent finished stress job with levels
  (``backend.results.service.job_results`` judged against the SLO asked for: the capacity, the level at
  capacity's output tokens/s and its cost) or its most recent completed capacity search (the capacity it
  measured, ``search_dict``), whichever finished last. A model with neither, no level within the SLO, or no
  price says why; it is never plotted at 0.
- **Score**: the leaderboard's cell for the chosen column (``column=<key>`` or ``dataset=<id>``; by default
  the column with the most models), with its n and interval.
- **Pareto frontier**: the models no other beats on both a higher score and a higher speed (or a lower
  cost). **Points per dollar** is the score in points (x 100) per dollar per million output tokens.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from backend.analytics import stats
from backend.analytics.leaderboard import Filters, leaderboard
from backend.db import db
from backend.errors import ApiError
from backend.results.metrics import Slo
from backend.stress.models import JobStatus, StressJob


def _stress_speed(model: str, slo: Slo) -> dict[str, Any] | None:
    from backend.results import service as results

    jobs = db.session.scalars(select(StressJob).where(StressJob.model_key == model,
                                                      StressJob.status == JobStatus.COMPLETED.value,
                                                      StressJob.search_id.is_(None),
                                                      StressJob.parent_id.is_(None))
                              .order_by(StressJob.finished_at.desc(), StressJob.created_at.desc()).limit(5)).all()
    job = next((job for job in jobs if job.levels), None)  # the latest with results
    if job is None:
        return None
    res = results.job_results(job, slo)
    cap = res["summary"]["capacity"]
    level = next((lv for lv in res["levels"] if lv["position"] == cap["position"]), None)
    cost = res["summary"]["cost_at_capacity"]
    return {"source": "stress", "id": job.id, "finished_at": job.finished_at, "capacity": cap["concurrency"],
            "capacity_reason": cap["reason"],
            "output_tokens_per_s": level["output_tokens_per_s"] if level else None,
            "usd_per_m_output_tokens": cost.get("usd_per_m_output_tokens"), "cost_reason": cost.get("reason")}


def _search_speed(model: str) -> dict[str, Any] | None:
    from backend.results.capacity_search import CapacitySearch, search_dict

    search = db.session.scalars(select(CapacitySearch).where(CapacitySearch.model_key == model,
                                                             CapacitySearch.status == JobStatus.COMPLETED.value)
                                .order_by(CapacitySearch.finished_at.desc())).first()
    if search is None:
        return None
    found = search_dict(search)
    probe = next((p for p in found["probes"] if found["capacity"] is not None
                  and p["concurrency"] == found["capacity"]), None)
    return {"source": "capacity_search", "id": search.id, "finished_at": search.finished_at,
            "capacity": found["capacity"], "capacity_reason": found.get("reason") or "",
            "output_tokens_per_s": probe["output_tokens_per_s"] if probe else None,
            "usd_per_m_output_tokens": found["cost_at_capacity"]["usd_per_m_output_tokens"]
            if found.get("cost_at_capacity") else None,
            "cost_reason": (found.get("cost_at_capacity") or {}).get("reason")}


def deployment(model: str, slo: Slo) -> dict[str, Any]:
    """The speed and cost at SLO capacity of a model's latest measurement, or why there is none."""
    found = [d for d in (_stress_speed(model, slo), _search_speed(model)) if d is not None]
    if not found:
        return {"source": None, "id": None, "finished_at": None, "capacity": None, "output_tokens_per_s": None,
                "usd_per_m_output_tokens": None, "reason": "no finished stress test or capacity search",
                "cost_reason": "no finished stress test or capacity search"}
    best = max(found, key=lambda d: d["finished_at"].replace(tzinfo=None) if d["finished_at"] else datetime.min)
    best["finished_at"] = best["finished_at"].isoformat() if best["finished_at"] else None
    reason = None
    if best["capacity"] is None:
        reason = f"no capacity within the SLO: {best['capacity_reason']}"
    elif best["output_tokens_per_s"] is None:
        reason = "no output tokens/s measured at capacity"
    best["reason"] = reason
    if best["usd_per_m_output_tokens"] is None and not best.get("cost_reason"):
        best["cost_reason"] = reason or "unknown"
    return best


def pick_column(board: dict[str, Any], column: str | None, dataset: str | None) -> dict[str, Any] | None:
    columns = board["columns"]
    if column:
        found = next((c for c in columns if c["key"] == column), None)
        if found is None:
            raise ApiError(f"column: no leaderboard column {column!r}", field="column")
        return found
    if dataset:
        columns = [c for c in columns if c["dataset_id"] == dataset]
        if not columns:
            raise ApiError(f"dataset: no completed run on {dataset!r}", field="dataset")
    return max(columns, key=lambda c: (c["models"], c["n"] or 0), default=None)


def quality_cost(flt: Filters, slo: Slo, column: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    board = leaderboard(flt)
    chosen = pick_column(board, column, dataset)
    rows = []
    if chosen is not None:
        for row in board["rows"]:
            cell = row["cells"].get(chosen["key"])
            if cell is None:
                continue
            dep = deployment(row["model"], slo)
            cost = dep["usd_per_m_output_tokens"]
            rows.append({"model": row["model"], "model_name": row["model_name"], "provider": row["provider"],
                         "score": cell["score"], "n": cell["n"], "ci_low": cell["ci_low"], "ci_high": cell["ci_high"],
                         "method": cell["method"], "cell_id": cell["cell_id"], "job_id": cell["job_id"],
                         "deployment": dep, "output_tokens_per_s": dep["output_tokens_per_s"],
                         "usd_per_m_output_tokens": cost,
                         "points_per_dollar": 100 * cell["score"] / cost if cost else None})
    speed_pts = [(r["model"], r["score"], r["output_tokens_per_s"]) for r in rows
                 if r["output_tokens_per_s"] is not None]
    cost_pts = [(r["model"], r["score"], r["usd_per_m_output_tokens"]) for r in rows
                if r["usd_per_m_output_tokens"] is not None]
    speed_front = stats.pareto_max(speed_pts, y_higher=True)
    cost_front = stats.pareto_max(cost_pts, y_higher=False)
    for r in rows:
        r["pareto_speed"] = r["model"] in speed_front
        r["pareto_cost"] = r["model"] in cost_front
    rows.sort(key=lambda r: -r["score"])
    value = [r for r in rows if r["points_per_dollar"] is not None]
    best_value = max(value, key=lambda r: r["points_per_dollar"]) if value else None
    return {"column": chosen, "columns": board["columns"], "slo": {**slo.as_dict(), "description": slo.describe()},
            "rows": rows, "best_value": best_value["model"] if best_value else None,
            "best_value_reason": None if best_value else "no model has both a score and a known cost at capacity",
            "without_speed": [r["model"] for r in rows if r["output_tokens_per_s"] is None]}


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    from backend.analytics.figures import figure

    out = []
    for key, title, x_title, front_key in (
            ("output_tokens_per_s", "Score against output tokens/s at SLO capacity (up and right is better)",
             "output tokens/s at capacity", "pareto_speed"),
            ("usd_per_m_output_tokens", "Score against cost per million output tokens (up and left is better)",
             "USD per million output tokens at capacity", "pareto_cost")):
        pts = [r for r in result["rows"] if r[key] is not None and r["score"] is not None]
        if not pts:  # nothing to place on this chart: the table says why for each model
            continue
        front = sorted((r for r in pts if r[front_key]), key=lambda r: r[key])
        traces = [{"type": "scatter", "mode": "markers+text", "name": "models", "x": [r[key] for r in pts],
                   "y": [r["score"] for r in pts], "text": [r["model_name"] for r in pts], "textposition": "top center",
                   "error_y": {"type": "data", "symmetric": False,
                               "array": [(r["ci_high"] - r["score"]) if r["ci_high"] is not None else None
                                         for r in pts],
                               "arrayminus": [(r["score"] - r["ci_low"]) if r["ci_low"] is not None else None
                                              for r in pts]}},
                  {"type": "scatter", "mode": "lines", "name": "Pareto frontier", "line": {"dash": "dot", "width": 2},
                   "x": [r[key] for r in front], "y": [r["score"] for r in front]}]
        out.append(figure(title, traces, x_title, "score", hovermode="closest"))
    return out


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    column = result["column"] or {}
    return [{"model": r["model"], "provider": r["provider"], "column": column.get("key"),
             "dataset": column.get("dataset_name"), "score": r["score"], "n": r["n"], "ci_low": r["ci_low"],
             "ci_high": r["ci_high"], "output_tokens_per_s": r["output_tokens_per_s"],
             "usd_per_m_output_tokens": r["usd_per_m_output_tokens"], "points_per_dollar": r["points_per_dollar"],
             "capacity": r["deployment"]["capacity"], "source": r["deployment"]["source"],
             "source_id": r["deployment"]["id"], "reason": r["deployment"].get("reason"),
             "cost_reason": r["deployment"].get("cost_reason"), "pareto_speed": r["pareto_speed"],
             "pareto_cost": r["pareto_cost"]} for r in result["rows"]]


TABLE_COLUMNS = ("model", "provider", "column", "dataset", "score", "n", "ci_low", "ci_high", "output_tokens_per_s",
                 "usd_per_m_output_tokens", "points_per_dollar", "capacity", "source", "source_id", "reason",
                 "cost_reason", "pareto_speed", "pareto_cost")
