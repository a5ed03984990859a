"""Correlations across models: between every two leaderboard columns (Spearman's rho over the models that
have a score in both, with that number), and between each column's score and the models' output
tokens/s at SLO capacity (``backend/analytics/quality.py``). Fewer than 3 models, or a column where every
model scores the same, cannot be computed and says so."""

from __future__ import annotations

from itertools import combinations
from typing import Any

from backend.analytics import stats
from backend.analytics.leaderboard import Filters, leaderboard
from backend.analytics.quality import deployment
from backend.results.metrics import Slo


def correlations(flt: Filters, slo: Slo, with_speed: bool = True) -> dict[str, Any]:
    board = leaderboard(flt)
    columns = board["columns"]
    scores = {c["key"]: {m["model"]: m["cells"][c["key"]]["score"] for m in board["rows"] if c["key"] in m["cells"]}
              for c in columns}
    pairs = []
    for a, b in combinations(columns, 2):
        models = sorted(set(scores[a["key"]]) & set(scores[b["key"]]))
        result = stats.spearman([scores[a["key"]][m] for m in models], [scores[b["key"]][m] for m in models])
        pairs.append({"a": a["key"], "b": b["key"], "a_label": a["label"], "b_label": b["label"], **result,
                      "models": models})
    speed: list[dict[str, Any]] = []
    if with_speed:
        models = sorted({m for per in scores.values() for m in per})
        speeds = {m: deployment(m, slo)["output_tokens_per_s"] for m in models}
        for c in columns:
            have = sorted(m for m in scores[c["key"]] if speeds.get(m) is not None)
            result = stats.spearman([scores[c["key"]][m] for m in have], [speeds[m] for m in have])
            speed.append({"column": c["key"], "label": c["label"], **result, "models": have})
    return {"columns": columns, "pairs": pairs, "speed": speed,
            "slo": {**slo.as_dict(), "description": slo.describe()},
            "method": "Spearman's rank correlation (scipy.stats.spearmanr) over the models with both values"}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"kind": "dataset-dataset", "a": p["a"], "b": p["b"], "rho": p["rho"], "p": p["p"], "n": p["n"],
             "reason": p["reason"]} for p in result["pairs"]]
    rows += [{"kind": "dataset-speed", "a": s["column"], "b": "output_tokens_per_s_at_capacity", "rho": s["rho"],
              "p": s["p"], "n": s["n"], "reason": s["reason"]} for s in result["speed"]]
    return rows


TABLE_COLUMNS = ("kind", "a", "b", "rho", "p", "n", "reason")
