"""The results charts as plotly figures (``{"data": [...], "layout": {...}}`` in plotly.js's JSON schema):
built once here, drawn by plotly.js in the page (static/js/results.js) and inside the self-contained HTML
report, so both show the same charts. They are written as plain dicts: building them through
``plotly.graph_objects`` validated every attribute and cost ~50 ms a figure, more than serving the page.

Per-request distributions are drawn from precomputed quartiles (a box per level), and the requests-over-
time scatter from at most ``MAX_POINTS`` requests per level (every k-th by start), so a level of 10,000
requests costs a few KB, not a megabyte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from backend.results.service import RequestTable

MAX_POINTS = 400

LAYOUT: dict[str, Any] = {"margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 320,
                          "legend": {"orientation": "h", "y": -0.25}, "hovermode": "x unified",
                          "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff",
                          "font": {"family": "system-ui, sans-serif", "size": 12}}
GRID = {"gridcolor": "#e5e7eb", "zerolinecolor": "#d1d5db"}


def _clean(value: Any, digits: int = 5) -> float | None:
    """A number for the chart: None for unknown (a gap in the line, never 0), a few significant digits."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _figure(title: str, traces: list[dict[str, Any]], x_title: str, y_title: str, *,
            xaxis: dict[str, Any] | None = None, yaxis: dict[str, Any] | None = None, **layout: Any) -> dict[str, Any]:
    return {"data": traces,
            "layout": {**LAYOUT, "title": {"text": title, "x": 0, "font": {"size": 14}},
                       "xaxis": {"title": {"text": x_title}, **GRID, **(xaxis or {})},
                       "yaxis": {"title": {"text": y_title}, **GRID, **(yaxis or {})}, **layout}}


def _level_lines(levels: list[dict[str, Any]], series: list[tuple[str, Callable[[dict[str, Any]], Any]]],
                 title: str, y_title: str, **layout: Any) -> dict[str, Any]:
    x = [level["concurrency"] for level in levels]
    partial = ["partial level" if not level["complete"] else "" for level in levels]
    traces = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "text": partial,
               "y": [_clean(value(level)) for level in levels]} for name, value in series]
    return _figure(title, traces, "concurrency", y_title, xaxis={"type": "log", "tickvals": x}, **layout)


def _metric(name: str, quantile: str) -> Callable[[dict[str, Any]], Any]:
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
        [{"type": "scatter", "mode": "lines+markers+text", "name": "p95 latency",
          "x": [_clean(lv["output_tokens_per_s"]) for lv in knee],
          "y": [_clean(lv["metrics"]["latency_s"]["p95"]) for lv in knee],
          "text": [f"c={lv['concurrency']}" for lv in knee], "textposition": "top center"}],
        "output tokens/s", "p95 latency (s)", hovermode="closest"))
    return figures


def _box(name: str, values: np.ndarray) -> dict[str, Any] | None:
    """A box from precomputed quartiles (nearest rank), whiskers at the last values within 1.5 IQR."""
    if not len(values):
        return None
    q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75], method="inverted_cdf"))
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"type": "box", "name": name, "x": [name], "q1": [_clean(q1)], "median": [_clean(median)],
            "q3": [_clean(q3)], "lowerfence": [_clean(float(inside.min()))],
            "upperfence": [_clean(float(inside.max()))], "mean": [_clean(float(values.mean()))], "boxpoints": False}


def request_figures(table: RequestTable, levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distributions per level and each level's requests over time, from the per-request rows."""
    if not len(table.data):
        return []
    ttft_boxes, latency_boxes, over_time = [], [], []
    for level in levels:
        part = table.rows_of(level["position"])
        part = part[part[:, 1] == 1.0]  # successful requests
        if not len(part):
            continue
        name = f"c={level['concurrency']}" + (" (partial)" if not level["complete"] else "")
        for column, boxes in ((3, ttft_boxes), (5, latency_boxes)):
            values = part[:, column]
            if (box := _box(name, values[np.isfinite(values)])) is not None:
                boxes.append(box)
        step = max(1, math.ceil(len(part) / MAX_POINTS))
        sample = part[::step]
        over_time.append({"type": "scatter", "mode": "markers", "name": name, "marker": {"size": 4},
                          "x": [_clean(v, 4) for v in sample[:, 2]], "y": [_clean(v, 4) for v in sample[:, 3]]})
    return [
        _figure("TTFT distribution per level", ttft_boxes, "level", "TTFT (ms)", showlegend=False,
                hovermode="closest"),
        _figure("Latency distribution per level", latency_boxes, "level", "latency (s)", showlegend=False,
                hovermode="closest"),
        _figure("TTFT by start time within each level (warm-up, queueing)", over_time,
                "seconds since the level's first request", "TTFT (ms)", hovermode="closest"),
    ]


def _job_name(result: dict[str, Any]) -> str:
    job = result["job"]
    return f"{job['name'] or job['model']} ({job['id']})"


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower x (latency) and higher y (throughput), by x."""
    frontier = []
    best_y = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best_y:
            frontier.append((x, y))
            best_y = y
    return frontier


def comparison_figures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compared jobs overlaid against concurrency, and throughput against p95 latency (Pareto)."""
    def lines(title: str, y_title: str, read: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        traces = [{"type": "scatter", "mode": "lines+markers", "name": _job_name(result),
                   "x": [lv["concurrency"] for lv in result["levels"]],
                   "y": [_clean(read(lv)) for lv in result["levels"]],
                   "text": ["partial level" if not lv["complete"] else "" for lv in result["levels"]]}
                  for result in results]
        ticks = sorted({lv["concurrency"] for result in results for lv in result["levels"]})
        return _figure(title, traces, "concurrency", y_title, xaxis={"type": "log", "tickvals": ticks})

    figures = [
        lines("Output tokens/s", "tokens/s", lambda lv: lv["output_tokens_per_s"]),
        lines("Requests/s", "requests/s", lambda lv: lv["req_per_s"]),
        lines("Goodput", "requests/s within the SLO", lambda lv: lv["goodput"]["per_s"]),
        lines("p95 time to first token", "ms", lambda lv: lv["metrics"]["ttft_ms"]["p95"]),
        lines("p95 latency", "seconds", lambda lv: lv["metrics"]["latency_s"]["p95"]),
        lines("Error rate", "fraction", lambda lv: lv["error_rate"]),
    ]
    traces, everything = [], []
    for result in results:
        levels = [lv for lv in result["levels"] if lv["complete"] and lv["output_tokens_per_s"] is not None
                  and lv["metrics"]["latency_s"]["p95"] is not None]
        points = [(lv["metrics"]["latency_s"]["p95"], lv["output_tokens_per_s"]) for lv in levels]
        everything.extend(points)
        traces.append({"type": "scatter", "mode": "lines+markers+text", "name": _job_name(result),
                       "x": [_clean(x) for x, _ in points], "y": [_clean(y) for _, y in points],
                       "text": [f"c={lv['concurrency']}" for lv in levels], "textposition": "top center"})
    frontier = pareto(everything)
    traces.append({"type": "scatter", "mode": "lines", "name": "Pareto front", "line": {"dash": "dot", "width": 2},
                   "x": [_clean(x) for x, _ in frontier], "y": [_clean(y) for _, y in frontier]})
    figures.append(_figure("Output tokens/s against p95 latency (up and left is better)", traces,
                           "p95 latency (s)", "output tokens/s", hovermode="closest"))
    return figures
