"""Exports of a job's results: the level table as CSV or JSON, the per-request rows as CSV, and one
self-contained HTML report (data and plotly.js inside the file) that draws its charts offline."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from flask import render_template

from backend.config import PROJECT_ROOT
from backend.results.figures import comparison_figures, level_figures, request_figures
from backend.results.service import RequestTable


def _metric(name: str, quantile: str) -> Any:
    return lambda level: level["metrics"][name][quantile]


LEVEL_COLUMNS: list[tuple[str, Any]] = [
    ("concurrency", lambda lv: lv["concurrency"]),
    ("complete", lambda lv: lv["complete"]),
    ("requests", lambda lv: lv["requests"]),
    ("succeeded", lambda lv: lv["succeeded"]),
    ("failed", lambda lv: lv["failed"]),
    ("error_rate", lambda lv: lv["error_rate"]),
    ("duration_s", lambda lv: lv["duration_s"]),
    ("req_per_s", lambda lv: lv["req_per_s"]),
    ("output_tokens_per_s", lambda lv: lv["output_tokens_per_s"]),
    ("total_tokens_per_s", lambda lv: lv["total_tokens_per_s"]),
    ("avg_input_tokens", lambda lv: lv["avg_input_tokens"]),
    ("avg_output_tokens", lambda lv: lv["avg_output_tokens"]),
    *[(f"{metric}_{q}", _metric(metric, q))
      for metric in ("latency_s", "ttft_ms", "tpot_ms", "itl_ms") for q in ("avg", "p50", "p90", "p95", "p99")],
    ("goodput_per_s", lambda lv: lv["goodput"]["per_s"]),
    ("good_fraction", lambda lv: lv["goodput"]["fraction"]),
    ("meets_slo", lambda lv: lv["slo"]["meets"]),
    ("usd_per_m_output_tokens", lambda lv: lv["cost"]["usd_per_m_output_tokens"]),
]
# The report embeds plotly.js's cartesian bundle (scatter, box...: all the report draws), of the same version
# as the plotly package's full bundle that pages load (static/vendor/README.md).
REPORT_PLOTLY = PROJECT_ROOT / "static" / "vendor" / "plotly-cartesian" / "plotly-cartesian.min.js"
REQUEST_COLUMNS = ("concurrency", "position", "seq", "start_s", "end_s", "success", "ttft_ms", "latency_s",
                   "tpot_ms", "itl_mean_ms", "itl_max_ms", "input_tokens", "output_tokens", "error")


def _cell(value: Any) -> Any:
    """A CSV cell: unknown is empty (never 0), booleans as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def levels_csv(results: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job_id", *(name for name, _ in LEVEL_COLUMNS)])
    for level in results["levels"]:
        writer.writerow([results["job"]["id"], *(_cell(value(level)) for _, value in LEVEL_COLUMNS)])
    return out.getvalue()


def requests_csv(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    concurrency = {level["position"]: level["concurrency"] for level in results["levels"]}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job_id", *REQUEST_COLUMNS])
    for row in rows:
        writer.writerow([results["job"]["id"], *(_cell(concurrency.get(row["position"]) if name == "concurrency"
                                                       else row[name]) for name in REQUEST_COLUMNS)])
    return out.getvalue()


def results_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2, allow_nan=False, default=str)


def report_html(results: dict[str, Any], table: RequestTable) -> str:
    """One file: the tables, the figures' JSON and plotly.js itself, so that it opens with no network."""
    figures = level_figures(results["levels"]) + request_figures(table, results["levels"])
    return render_template("results/report.html", results=results,
                           figures_json=_figures_json(figures),
                           plotly_js=REPORT_PLOTLY.read_text(encoding="utf-8").replace("</script", "<\\/script"))


def _figures_json(figures: list[dict[str, Any]]) -> str:
    return json.dumps(figures, allow_nan=False, default=str).replace("<", "\\u003c")


def comparison_csv(comparison: dict[str, Any]) -> str:
    """One row per concurrency and figure: each job's value, and its difference from the baseline."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    ids = comparison["ids"]
    others = [job_id for job_id in ids if job_id != comparison["baseline"]]
    writer.writerow(["concurrency", "figure", *ids, *(f"{job_id}_delta_pct" for job_id in others)])
    for row in comparison["table"]:
        writer.writerow([row["concurrency"], row["figure"], *(_cell(row["cells"][job_id]["value"]) for job_id in ids),
                         *(_cell(row["cells"][job_id]["delta"]["pct"]) for job_id in others)])
    return out.getvalue()


def comparison_json(comparison: dict[str, Any]) -> str:
    return json.dumps(comparison, indent=2, allow_nan=False, default=str)


def comparison_html(comparison: dict[str, Any]) -> str:
    return render_template("results/report_compare.html", comparison=comparison,
                           figures_json=_figures_json(comparison_figures(comparison["results"])),
                           plotly_js=REPORT_PLOTLY.read_text(encoding="utf-8").replace("</script", "<\\/script"))
