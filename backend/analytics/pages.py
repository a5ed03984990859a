"""The analytics pages: ``/leaderboard``, ``/analytics/compare``, ``/analytics/trends``,
``/analytics/quality-cost`` and ``/analytics/correlations`` (one page per view, linked from each other),
and the home page's analytics panel. Each page reads its query with the API's parsers and calls the same
service function; a refused argument is shown on the page (status 400) with an empty result. Charts are
plotly JSON in ``<script type="application/json" id="figures-data">`` drawn by static/js/results.js."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, render_template, request

from backend.analytics import quality, service
from backend.analytics import trends as trends_mod
from backend.analytics.figures import figures_json
from backend.errors import ApiError

bp = Blueprint("analytics_pages", __name__)

HOME_LEADERS = 4


def _run(call: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return call(), None
    except ApiError as exc:
        return None, exc.message


def _page(template: str, result: dict[str, Any] | None, problem: str | None, **context: Any):  # type: ignore[no-untyped-def]
    return render_template(template, result=result, problem=problem, args=request.args, **context), \
        400 if problem else 200


@bp.get("/leaderboard")
def leaderboard():  # type: ignore[no-untyped-def]
    board, problem = _run(lambda: service.leaderboard(request.args))
    return _page("analytics/leaderboard.html", board, problem, title="Leaderboard",
                 export_args={k: v for k, v in request.args.items() if k != "format"})


@bp.get("/analytics/compare")
def compare():  # type: ignore[no-untyped-def]
    asked = bool(request.args.get("models") or request.args.get("cells"))
    cmp, problem = _run(lambda: service.compare(request.args)) if asked else (None, None)
    figures = service.compare_figures(cmp) if cmp else []
    board = service.leaderboard({})
    return _page("analytics/compare.html", cmp, problem, title="Paired comparison", board=board,
                 figures_json=figures_json(figures), figures_count=len(figures),
                 export_args={k: v for k, v in request.args.items() if k != "format"})


@bp.get("/analytics/trends")
def trends():  # type: ignore[no-untyped-def]
    result, problem = _run(lambda: service.trends(request.args))
    figures = [trends_mod.figure(result)] if result and result["series"] else []
    return _page("analytics/trends.html", result, problem, title="Trends", figures_json=figures_json(figures),
                 figures_count=len(figures))


@bp.get("/analytics/quality-cost")
def quality_cost():  # type: ignore[no-untyped-def]
    result, problem = _run(lambda: service.quality_cost(request.args))
    figures = quality.figures(result) if result and result["rows"] else []
    return _page("analytics/quality_cost.html", result, problem, title="Quality against speed and cost",
                 figures_json=figures_json(figures), figures_count=len(figures),
                 export_args={k: v for k, v in request.args.items() if k != "format"})


@bp.get("/analytics/correlations")
def correlations():  # type: ignore[no-untyped-def]
    result, problem = _run(lambda: service.correlations(request.args))
    return _page("analytics/correlations.html", result, problem, title="Correlations")


def home_context() -> dict[str, Any]:
    """The home page's analytics panel (templates/analytics/_home.html): counts and the current leaders."""
    data = service.overview()
    data["leaders"] = data["leaders"][:HOME_LEADERS]
    return data
