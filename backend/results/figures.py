"""The results charts as plotly figures (JSON-ready dicts): built once here, drawn by plotly.js in the
page (static/js/results.js) and inside the self-contained HTML report, so both show the same charts.

Per-request distributions are drawn from precomputed quartiles (a box per level), and the requests-over-
time scatter from at most ``MAX_POINTS`` requests per level (every k-th by start), so a level of 10,000
requests costs a few KB, not a megabyte.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from backend.db import db
from backend.results.models import StressRequest

MAX_POINTS = 1500
LAYOUT = {"margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 320, "legend": {"orientation": "h", "y": -0.25},
          "template": "plotly_white", "hovermode": "x unified"}


def _figure(title: str, traces: list[Any], x_title: str, y_title: str, **layout: Any) -> dict[str, Any]:
    figure = go.Figure(data=traces)
    figure.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, xaxis_title=x_title,
                         yaxis_title=y_title, **{**LAYOUT, **layout})
    return figure.to_plotly_json()


def _level_lines(levels: list[dict[str, Any]], series: list[tuple[str, Any]], title: str, y_title: str,
                 **layout: Any) -> dict[str, Any]:
    x = [level["concurrency"] for level in levels]
    partial = ["partial" if not level["complete"] else "" for level in levels]
    traces = [go.Scatter(x=x, y=[value(level) for level in levels], mode="lines+markers", name=name,
                         text=partial, connectgaps=False) for name, value in series]
    return _figure(title, traces, "concurrency", y_title, xaxis={"type": "log", "tickvals": x}, **layout)


def _metric(name: str, quantile: str) -> Any:
    return lambda level: level["metrics"][name][quantile]


def level_figures(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Charts against concurrency, and latency against throughput."""
    if not levels:
        return []
    figures = [
        _level_lines(levels, [("requests/s", lambda lv: lv["req_per_s"]),
                              ("goodput requests/s", lambda lv: lv["goodput"]["per_s"])],
                     "Request throughput and goodput", "requests/s"),
        _level_lines(levels, [("output tokens/s", lambda lv: lv["output_tokens_per_s"]),
                              ("total tokens/s", lambda lv: lv["total_tokens_per_s"])],
                     "Token throughput", "tokens/s"),
        _level_lines(levels, [(q, _metric("latency_s", q)) for q in ("p50", "p90", "p95", "p99")],
                     "Latency", "seconds"),
        _level_lines(levels, [(q, _metric("ttft_ms", q)) for q in ("p50", "p90", "p95", "p99")],
                     "Time to first token", "ms"),
        _level_lines(levels, [(f"TPOT {q}", _metric("tpot_ms", q)) for q in ("p50", "p99")]
                     + [(f"ITL {q}", _metric("itl_ms", q)) for q in ("p50", "p99")],
                     "Time per output token and inter-token latency", "ms"),
        _level_lines(levels, [("error rate", lambda lv: lv["error_rate"]),
                              ("good fraction", lambda lv: lv["goodput"]["fraction"])],
                     "Errors and the fraction of requests within the SLO", "fraction", yaxis={"range": [0, 1.05]}),
    ]
    knee = [level for level in levels if level["output_tokens_per_s"] is not None]
    figures.append(_figure(
        "Latency against throughput",
        [go.Scatter(x=[lv["output_tokens_per_s"] for lv in knee], y=[lv["metrics"]["latency_s"]["p95"] for lv in knee],
                    mode="lines+markers+text", text=[f"c={lv['concurrency']}" for lv in knee],
                    textposition="top center", name="p95 latency")],
        "output tokens/s", "p95 latency (s)", hovermode="closest"))
    return figures


def _quartiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75], method="inverted_cdf"))
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"q1": q1, "median": median, "q3": q3, "lowerfence": float(inside.min()),
            "upperfence": float(inside.max()), "mean": float(values.mean())}


def request_figures(job_id: str, levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distributions per level and each level's requests over time, from the per-request rows."""
    rows = db.session.execute(
        db.select(StressRequest.position, StressRequest.start_s, StressRequest.ttft_ms, StressRequest.latency_s)
        .where(StressRequest.job_id == job_id, StressRequest.success.is_(True))
        .order_by(StressRequest.position, StressRequest.seq)).all()
    if not rows:
        return []
    data = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    by_position = {level["position"]: level for level in levels}
    ttft_boxes, latency_boxes, over_time = [], [], []
    for position in np.unique(data[:, 0]).astype(int):
        level = by_position.get(int(position))
        if level is None:
            continue
        part = data[data[:, 0] == position]
        name = f"c={level['concurrency']}" + (" (partial)" if not level["complete"] else "")
        for column, boxes in ((2, ttft_boxes), (3, latency_boxes)):
            values = part[:, column][np.isfinite(part[:, column])]
            stats = _quartiles(values)
            if stats is not None:
                boxes.append(go.Box(name=name, q1=[stats["q1"]], median=[stats["median"]], q3=[stats["q3"]],
                                    lowerfence=[stats["lowerfence"]], upperfence=[stats["upperfence"]],
                                    mean=[stats["mean"]], x=[name], boxpoints=False))
        step = max(1, int(np.ceil(len(part) / MAX_POINTS)))
        sample = part[::step]
        over_time.append(go.Scatter(x=sample[:, 1], y=sample[:, 2], mode="markers", name=name,
                                      marker={"size": 4}))
    return [
        _figure("TTFT distribution per level", ttft_boxes, "level", "TTFT (ms)", showlegend=False,
                hovermode="closest"),
        _figure("Latency distribution per level", latency_boxes, "level", "latency (s)", showlegend=False,
                hovermode="closest"),
        _figure("TTFT by start time within each level (warm-up, queueing)", over_time,
                "seconds since the level's first request", "TTFT (ms)", hovermode="closest"),
    ]
