"""What every HTML page shares: full page or HTMX fragment from one template, and the home page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, make_response, render_template, request

bp = Blueprint("web", __name__)


def is_htmx_fragment_request() -> bool:
    """An HTMX request wants the fragment, except a history restore, which needs the whole page."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def render(page: str, fragment: str, **context: Any) -> Response:
    """``page`` for a normal request, ``fragment`` (a partial the page includes) for HTMX; Vary says so."""
    response = make_response(render_template(fragment if is_htmx_fragment_request() else page, **context))
    response.headers.add("Vary", "HX-Request")
    return response


@bp.get("/")
def home():  # type: ignore[no-untyped-def]
    from backend.inference import service as inference_service

    recent = [run.as_dict() for run in inference_service.recent_runs(limit=8)]
    return render_template("home/index.html", recent_runs=recent)


@bp.get("/stress-tests")
def stress_tests():  # type: ignore[no-untyped-def]
    return render_template("placeholder/coming.html", title="Stress tests",
                           text="Stress tests with EvalScope arrive with the stress-test feature. "
                                "Until then, use the Playground to compare models.")


@bp.get("/results")
def results():  # type: ignore[no-untyped-def]
    return render_template("placeholder/coming.html", title="Results",
                           text="Charts, comparisons and exports of stress-test results arrive with the results "
                                "feature. Past playground runs are in History.")
