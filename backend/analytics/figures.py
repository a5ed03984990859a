"""The analytics charts as plain plotly JSON dicts, with the results charts' layout
(``backend/results/figures.py``), drawn by static/js/results.js and inside the offline HTML reports."""

from __future__ import annotations

from typing import Any

from backend.results.figures import _figure


def figure(title: str, traces: list[dict[str, Any]], x_title: str, y_title: str, **layout: Any) -> dict[str, Any]:
    return _figure(title, traces, x_title, y_title, **layout)


def figures_json(figures: list[dict[str, Any]]) -> str:
    import json

    return json.dumps(figures, allow_nan=False, default=str).replace("<", "\\u003c")
