"""The evaluation run's chart as a plotly figure (plain JSON, as backend/results/figures.py builds them):
each model's score per dataset with its 95 % interval as an asymmetric error bar (Wilson and bootstrap
intervals are not symmetric). A score that could not be computed is left out of its trace (a gap), and its
dataset is still on the axis, so it is never drawn as 0.
"""

from __future__ import annotations

from typing import Any

from backend.results.figures import _clean, _figure


def score_figure(scores: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``scores``: the run's headline score rows (model, dataset, metric, value, ci_low, ci_high, n), one per
    cell; a grouped bar chart, one trace per model, the datasets on x. None when there is nothing to draw
    (no cell has a score yet: a running job's empty axes would say nothing)."""
    if not any(s["value"] is not None for s in scores):
        return None
    datasets = list(dict.fromkeys(f"{s['dataset']} ({s['metric']})" for s in scores))
    traces = []
    for model in dict.fromkeys(s["model"] for s in scores):
        mine = {f"{s['dataset']} ({s['metric']})": s for s in scores if s["model"] == model}
        known = [(x, mine[x]) for x in datasets if x in mine and mine[x]["value"] is not None]
        traces.append({
            "type": "bar", "name": model, "x": [x for x, _ in known],
            "y": [_clean(s["value"], 4) for _, s in known],
            "error_y": {"type": "data", "symmetric": False,
                        "array": [_clean(s["ci_high"] - s["value"], 4) if s["ci_high"] is not None else None
                                  for _, s in known],
                        "arrayminus": [_clean(s["value"] - s["ci_low"], 4) if s["ci_low"] is not None else None
                                       for _, s in known]},
            "customdata": [s["n"] for _, s in known],
            "hovertemplate": "%{x}<br>%{y:.3f} (n=%{customdata})<extra>" + _escape(model) + "</extra>"})
    figure = _figure("Scores with 95 % intervals", traces, "dataset (metric)", "score", barmode="group",
                     hovermode="closest", yaxis={"rangemode": "tozero"})
    figure["layout"]["xaxis"]["categoryorder"] = "array"
    figure["layout"]["xaxis"]["categoryarray"] = datasets
    return figure


def _escape(text: str) -> str:
    """plotly renders hover templates as a small HTML subset: a model's name is text, not markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
