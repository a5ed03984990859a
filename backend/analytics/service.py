"""What the analytics API and pages call: one function per view, from already-parsed arguments (a
mapping of query arguments, read by the modules' own parsers; no HTTP request in here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.analytics import correlations as correlations_mod
from backend.analytics import leaderboard as leaderboard_mod
from backend.analytics import overview as overview_mod
from backend.analytics import paired, quality
from backend.analytics import trends as trends_mod
from backend.analytics.figures import figure
from backend.errors import ApiError
from backend.results.metrics import Slo
from backend.results.slo_args import slo_from_args


def _slo(args: Mapping[str, str]) -> Slo:
    from backend.results.service import default_slo

    return slo_from_args(args, default_slo())


def _version(args: Mapping[str, str]) -> str | None:
    raw = (args.get("version") or "").strip().lower()
    if raw and (len(raw) > 64 or any(c not in "0123456789abcdef" for c in raw)):
        raise ApiError("version: must be a content hash or its first hex digits", field="version")
    return raw or None


def leaderboard(args: Mapping[str, str]) -> dict[str, Any]:
    return leaderboard_mod.leaderboard(leaderboard_mod.filters_from(args))


def compare(args: Mapping[str, str]) -> dict[str, Any]:
    models = leaderboard_mod.parse_list(args.get("models"), "models")
    dataset = (args.get("dataset") or "").strip() or None
    if dataset is not None and (len(dataset) > 100 or not dataset.isprintable()):
        raise ApiError("dataset: not a valid dataset id", field="dataset")
    return paired.compare(models, dataset, version=_version(args), cells=args.get("cells") or None)


def compare_figures(cmp: dict[str, Any]) -> list[dict[str, Any]]:
    cells = [c for c in cmp["cells"] if c.get("score")]
    if not cells:
        return []
    trace = {"type": "bar", "name": "score on the common samples", "x": [c["model_name"] for c in cells],
             "y": [c["score"]["score"] for c in cells],
             "error_y": {"type": "data", "symmetric": False,
                         "array": [c["score"]["ci_high"] - c["score"]["score"] for c in cells],
                         "arrayminus": [c["score"]["score"] - c["score"]["ci_low"] for c in cells]},
             "text": [f"n={c['score']['n']}" for c in cells]}
    return [figure(f"{cmp['dataset_name']}: scores on the same {cmp['n']} samples (95 % intervals)", [trace],
                   "model", "score", hovermode="closest")]


def trends(args: Mapping[str, str]) -> dict[str, Any]:
    return trends_mod.trends(leaderboard_mod.filters_from(args))


def quality_cost(args: Mapping[str, str]) -> dict[str, Any]:
    return quality.quality_cost(leaderboard_mod.filters_from(args), _slo(args), column=args.get("column") or None,
                                dataset=args.get("dataset") or None)


def correlations(args: Mapping[str, str]) -> dict[str, Any]:
    return correlations_mod.correlations(leaderboard_mod.filters_from(args), _slo(args))


def overview() -> dict[str, Any]:
    return overview_mod.overview()
