"""/api/v1/leaderboard, /api/v1/analytics/* and /api/v1/stats/overview: JSON, and with ``format=`` an export
(csv, json, xlsx; html for the leaderboard and a comparison, a report that works offline).

- ``GET /api/v1/leaderboard?datasets=&group=mcq|qa|builtin&models=&provider=&since=&until=&pick=latest|best&runs=``
- ``GET /api/v1/analytics/compare?models=a,b[,c]&dataset=<id>[&version=<hash prefix>]`` or ``?cells=<id>,<id>``
- ``GET /api/v1/analytics/trends?`` (the leaderboard's filters)
- ``GET /api/v1/analytics/correlations?`` (the filters and an SLO: ``ttft_ms=&tpot_ms=&latency_s=&error_rate=``)
- ``GET /api/v1/analytics/quality-cost?column=<key>|dataset=<id>`` (the filters and an SLO)
- ``GET /api/v1/stats/overview``

Every bad argument is a 400 naming it.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from backend.analytics import correlations as correlations_mod
from backend.analytics import export, paired, quality, service
from backend.analytics import leaderboard as leaderboard_mod
from backend.analytics import trends as trends_mod
from backend.openapi import documented
from backend.openapi.models import DOWNLOAD, JSON

bp = Blueprint("analytics_api", __name__, url_prefix="/api/v1")


def _format(html: bool = False) -> str | None:
    kind = request.args.get("format")
    return export.check_format(kind, html) if kind is not None else None


@bp.get("/leaderboard")
@documented(responses={200: DOWNLOAD})
def leaderboard():  # type: ignore[no-untyped-def]
    kind = _format(html=True)
    board = service.leaderboard(request.args)
    if kind is None:
        return jsonify(board)
    if kind == "html":
        return export.download(export.leaderboard_html(board), "text/html; charset=utf-8", "leaderboard.html")
    return export.table_response(kind, "leaderboard", leaderboard_mod.TABLE_COLUMNS,
                                 leaderboard_mod.table_rows(board), {"filters": board["filters"]})


@bp.get("/analytics/compare")
@documented(responses={200: DOWNLOAD})
def compare():  # type: ignore[no-untyped-def]
    kind = _format(html=True)
    cmp = service.compare(request.args)
    if kind is None:
        return jsonify(cmp)
    name = f"compare-{'-'.join(str(c['cell_id']) for c in cmp['cells'])}"
    if kind == "html":
        return export.download(export.compare_html(cmp, service.compare_figures(cmp)), "text/html; charset=utf-8",
                               f"{name}.html")
    return export.table_response(kind, name, paired.PAIR_COLUMNS, paired.pair_rows(cmp),
                                 {"cells": cmp["cells"], "n": cmp["n"]})


@bp.get("/analytics/trends")
@documented(responses={200: DOWNLOAD})
def trends():  # type: ignore[no-untyped-def]
    kind = _format()
    result = service.trends(request.args)
    if kind is None:
        return jsonify(result)
    return export.table_response(kind, "trends", trends_mod.STEP_COLUMNS, trends_mod.step_rows(result),
                                 {"method": result["method"]})


@bp.get("/analytics/correlations")
@documented(responses={200: DOWNLOAD})
def correlations():  # type: ignore[no-untyped-def]
    kind = _format()
    result = service.correlations(request.args)
    if kind is None:
        return jsonify(result)
    return export.table_response(kind, "correlations", correlations_mod.TABLE_COLUMNS,
                                 correlations_mod.table_rows(result), {"method": result["method"]})


@bp.get("/analytics/quality-cost")
@documented(responses={200: DOWNLOAD})
def quality_cost():  # type: ignore[no-untyped-def]
    kind = _format()
    result = service.quality_cost(request.args)
    if kind is None:
        return jsonify(result)
    return export.table_response(kind, "quality-cost", quality.TABLE_COLUMNS, quality.table_rows(result),
                                 {"slo": result["slo"], "column": result["column"]})


@bp.get("/stats/overview")
@documented(responses={200: JSON})
def overview():  # type: ignore[no-untyped-def]
    return jsonify(service.overview())
