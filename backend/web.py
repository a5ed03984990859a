"""What every HTML page shares: full page or HTMX fragment from one template, the home page, the icon."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from backend.catalog.registry import ModelSpec

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
    """The home page: each feature supplies its own panel (its ``home_context`` and ``_home.html``)."""
    from backend.analytics.pages import home_context as analytics_home
    from backend.catalog.service import get_catalog
    from backend.evaluations.pages import home_context as evaluations_home
    from backend.inference.pages import home_context as inference_home
    from backend.results.pages import home_context as results_home
    from backend.stress.pages import home_context as stress_home

    inference, stress, results = inference_home(), stress_home(), results_home()
    first_run = not (inference["recent_runs"] or stress["active_total"] or stress["finished_jobs"])
    return render_template("home/index.html", inference=inference, stress=stress, results=results,
                           evaluations=evaluations_home(), analytics=analytics_home(),
                           first_run=first_run, starter_models=starter_models(get_catalog().models))


# The simulator's models a first run is pointed at, in this order when the catalogue has them.
STARTER_MODELS = ("sim-fast", "sim-reasoning", "sim-vision")


def starter_models(configured: Mapping[str, ModelSpec], count: int = 3) -> list[str]:
    """Keys of up to ``count`` simulator models from the configured catalogue, the usual starters first."""
    simulated = [key for key, spec in configured.items() if spec.provider == "simulator"]
    preferred = [key for key in STARTER_MODELS if key in simulated]
    return (preferred + [key for key in simulated if key not in preferred])[:count]


@bp.get("/favicon.ico")
def favicon():  # type: ignore[no-untyped-def]
    """Browsers ask for /favicon.ico whatever the page says; the icon is the SVG that base.html links."""
    return redirect(url_for("static", filename="favicon.svg"), code=301)


@bp.get("/vendor/plotly.min.js")
def plotly_js():  # type: ignore[no-untyped-def]
    """plotly.js from the installed ``plotly`` package: no CDN, works offline. Pages add ``?v=<version>``,
    so the file can be cached for a year and a new version is a new URL."""
    response = send_file(plotly_js_path(), mimetype="text/javascript", max_age=YEAR_S, conditional=True)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response


YEAR_S = 365 * 24 * 3600


@lru_cache(maxsize=1)
def plotly_js_path() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


@lru_cache(maxsize=1)
def plotly_version() -> str:
    import plotly

    return str(plotly.__version__)


@bp.app_context_processor
def _vendor_urls() -> dict[str, Any]:
    return {"plotly_url": lambda: url_for("web.plotly_js", v=plotly_version())}
