"""Trends: each model's score on each dataset over time, from every completed cell.

A series is one model on one leaderboard column (one dataset version, sample count and metric), so a
new dataset version starts a new series rather than a step in the old one. Between two consecutive runs
the difference (later minus earlier) has a 95 % interval from the two runs' own intervals (MOVER,
``backend/analytics/stats.py``); a drop whose whole interval is below zero is flagged as a regression,
with both runs linked; a smaller dip is shown but not flagged.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from typing import Any

from backend.analytics import stats
from backend.analytics.leaderboard import Filters, column_key, scored_cells


def _point(cell: dict[str, Any]) -> dict[str, Any]:
    return {"cell_id": cell["cell_id"], "job_id": cell["job_id"], "score": cell["score"], "n": cell["n"],
            "ci_low": cell["ci_low"], "ci_high": cell["ci_high"], "method": cell["method"],
            "finished_at": cell["finished_at"].isoformat() if cell["finished_at"] else None}


def trends(flt: Filters | None = None) -> dict[str, Any]:
    cells = scored_cells(flt)
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        grouped[(cell["model"], column_key(cell))].append(cell)
    series, regressions = [], []
    for (model, key), items in sorted(grouped.items()):
        first = items[0]
        points = [_point(c) for c in items]
        steps = []
        for before, after in pairwise(points):
            diff = stats.mover_difference(before, after)
            regression = diff["ci_high"] is not None and diff["ci_high"] < 0
            step = {"from": before, "to": after, **diff, "regression": regression,
                    "dip": diff["diff"] is not None and diff["diff"] < 0 and not regression}
            steps.append(step)
            if regression:
                regressions.append({"model": model, "column": key, "dataset_name": first["dataset_name"], **step})
        series.append({"model": model, "model_name": first["model_name"], "column": key,
                       "dataset_id": first["dataset_id"], "dataset_name": first["dataset_name"],
                       "dataset_hash": first["dataset_hash"], "version": (first["dataset_hash"] or "")[:8] or None,
                       "n": first["n"], "metric": first["metric"], "points": points, "steps": steps})
    return {"series": series, "regressions": regressions,
            "method": "difference of consecutive runs with a MOVER 95 % interval from each run's own interval; "
                      "a regression is a drop whose whole interval is below zero"}


def step_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in result["series"]:
        for point in s["points"]:
            step = next((st for st in s["steps"] if st["to"]["cell_id"] == point["cell_id"]), None)
            rows.append({"model": s["model"], "column": s["column"], "dataset": s["dataset_name"],
                         "dataset_hash": s["dataset_hash"], "metric": s["metric"], "job_id": point["job_id"],
                         "cell_id": point["cell_id"], "finished_at": point["finished_at"], "score": point["score"],
                         "n": point["n"], "ci_low": point["ci_low"], "ci_high": point["ci_high"],
                         "diff_from_previous": step["diff"] if step else None,
                         "diff_ci_low": step["ci_low"] if step else None,
                         "diff_ci_high": step["ci_high"] if step else None,
                         "regression": step["regression"] if step else None})
    return rows


STEP_COLUMNS = ("model", "column", "dataset", "dataset_hash", "metric", "job_id", "cell_id", "finished_at", "score",
                "n", "ci_low", "ci_high", "diff_from_previous", "diff_ci_low", "diff_ci_high", "regression")


def figure(result: dict[str, Any]) -> dict[str, Any]:
    from backend.analytics.figures import figure as make

    traces = []
    for s in result["series"]:
        pts = s["points"]
        traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{s['model_name']} · {s['dataset_name']}"
                       + (f" v{s['version']}" if s["version"] else ""),
                       "x": [p["finished_at"] for p in pts], "y": [p["score"] for p in pts],
                       "error_y": {"type": "data", "symmetric": False,
                                   "array": [(p["ci_high"] - p["score"]) if p["ci_high"] is not None else None
                                             for p in pts],
                                   "arrayminus": [(p["score"] - p["ci_low"]) if p["ci_low"] is not None else None
                                                  for p in pts]},
                       "text": [f"n={p['n']} run {p['job_id']}" for p in pts]})
    return make("Score over time (95 % intervals)", traces, "finished", "score", hovermode="closest")
