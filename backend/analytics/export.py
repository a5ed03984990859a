"""Exports of the analytics tables as CSV, JSON and XLSX (the evaluation exports' writers,
``backend/evaluations/export.py``: unknown is empty, never 0; text stays text in XLSX), and the
leaderboard and a paired comparison as self-contained HTML reports that open and draw offline
(``templates/results/_report_base.html``, with plotly.js inside the file)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Response, render_template

from backend.analytics.figures import figures_json
from backend.errors import ApiError
from backend.evaluations.export import FORMATS, to_csv, to_json, to_xlsx
from backend.results.export import REPORT_PLOTLY

TABLE_FORMATS = ("csv", "json", "xlsx")


def check_format(kind: str, html: bool = False) -> str:
    allowed = (*TABLE_FORMATS, "html") if html else TABLE_FORMATS
    if kind not in allowed:
        raise ApiError(f"format: must be one of {', '.join(allowed)}", field="format")
    return kind


def table_response(kind: str, name: str, columns: Sequence[str], rows: list[dict[str, Any]],
                   payload: dict[str, Any]) -> Response:
    media, suffix = FORMATS[kind]
    if kind == "csv":
        body: str | bytes = to_csv(columns, rows)
    elif kind == "json":
        body = to_json({"columns": list(columns), "rows": [{c: r.get(c) for c in columns} for r in rows], **payload})
    else:
        body = to_xlsx([(name[:31], columns, rows)])
    return download(body, media, f"{name}.{suffix}")


def download(body: str | bytes, media: str, filename: str) -> Response:
    response = Response(body, content_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _plotly() -> str:
    return REPORT_PLOTLY.read_text(encoding="utf-8").replace("</script", "<\\/script")


def leaderboard_html(board: dict[str, Any]) -> str:
    return render_template("analytics/report_leaderboard.html", board=board, definitions=board["definitions"],
                           figures_json=figures_json([]), plotly_js=_plotly())


def compare_html(comparison: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    from backend.analytics.leaderboard import DEFINITIONS

    definitions = {"score": DEFINITIONS["score"],
                   "difference": "B minus A on the samples both have, in points (score x 100).",
                   "McNemar": "Exact test on the samples only one model got right: p from the binomial "
                              "distribution with probability 1/2.",
                   "paired bootstrap": "The samples resampled with their pairs; the 95 % interval of the mean "
                                       "difference is its 2.5th to 97.5th percentile."}
    return render_template("analytics/report_compare.html", cmp=comparison, definitions=definitions,
                           figures_json=figures_json(figures), plotly_js=_plotly())
