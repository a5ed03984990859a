"""The results pages: the list of finished stress tests, and one job's results."""

from __future__ import annotations

import json

from flask import Blueprint, abort, render_template, request
from sqlalchemy import select

from backend.db import db
from backend.errors import ApiError, NotFound
from backend.results import compare as comparing
from backend.results import service
from backend.results.figures import comparison_figures, level_figures, request_figures
from backend.results.metrics import DEFINITIONS
from backend.results.slo_args import BOUNDS, slo_from_args
from backend.stress.models import FINISHED, StressJob
from backend.validation import MAX_OFFSET, int_arg

bp = Blueprint("results_pages", __name__)

PAGE_SIZE = 25


@bp.app_context_processor
def _definitions() -> dict[str, object]:
    return {"definitions": DEFINITIONS}


@bp.get("/results")
def index():  # type: ignore[no-untyped-def]
    filters = {name: request.args.get(name, "").strip() for name in ("q", "model", "status", "since", "until")}
    problem = None
    try:
        offset = int_arg("offset", 0, 0, MAX_OFFSET)
        page = service.list_results(model=filters["model"] or None, status=filters["status"] or None,
                                    since=filters["since"] or None, until=filters["until"] or None,
                                    text=filters["q"] or None, limit=PAGE_SIZE, offset=offset)
    except ApiError as exc:
        problem = exc.message
        page = {"results": [], "total": 0, "limit": PAGE_SIZE, "offset": 0}
    models = db.session.scalars(select(StressJob.model_key).distinct().order_by(StressJob.model_key)).all()
    response = render_template("results/index.html", title="Results", page=page, problem=problem, models=models,
                               statuses=[s.value for s in FINISHED],
                               filters={k: v for k, v in filters.items() if v})
    return response, 400 if problem else 200


@bp.get("/results/<job_id>")
def job(job_id: str):  # type: ignore[no-untyped-def]
    try:
        row = service.stress_job(job_id)
    except NotFound:
        abort(404, description=f"There is no stress test {job_id}.")
    problem = None
    try:
        slo = slo_from_args(request.args, service.default_slo())
    except ApiError as exc:
        problem, slo = exc.message, service.default_slo()
    table = service.load_requests(row.id)
    results = service.job_results(row, slo, table)
    figures = level_figures(results["levels"]) + request_figures(table, results["levels"])
    slo_query = {name: request.args[name] for name in BOUNDS if name in request.args and not problem}
    return render_template("results/job.html", title=f"Results of {row.id}", results=results, problem=problem,
                           slo_query=slo_query,
                           figures=figures,
                           figures_json=json.dumps(figures, allow_nan=False, default=str).replace("<", "\\u003c")
                           ), 400 if problem else 200


@bp.get("/results/compare")
def compare():  # type: ignore[no-untyped-def]
    """``?ids=a,b,c`` (or ``id=a&id=b`` from the list's checkboxes), ``baseline``, and an SLO."""
    raw = request.args.get("ids") or ",".join(request.args.getlist("id"))
    try:
        ids = comparing.parse_ids(raw)
        slo = slo_from_args(request.args, service.default_slo())
        comparison = comparing.compare(ids, slo, baseline=request.args.get("baseline") or None)
    except NotFound as exc:
        abort(404, description=exc.message)
    except ApiError as exc:
        abort(400, description=exc.message)
    slo_query = {name: request.args[name] for name in BOUNDS if name in request.args}
    figures = comparison_figures(comparison["results"])
    return render_template("results/compare.html", title="Compare stress tests", comparison=comparison,
                           slo_query=slo_query,
                           figures_json=json.dumps(figures, allow_nan=False, default=str).replace("<", "\\u003c"))


HOME_LATEST = 3


def home_context() -> dict[str, object]:
    """The home page's results panel (templates/results/_home.html): the latest finished jobs with their
    headline figures against the default SLO (read from the packed per-level arrays: a few ms a job)."""
    slo = service.default_slo()
    jobs = db.session.scalars(select(StressJob).where(StressJob.status.in_([s.value for s in FINISHED]),
                                                StressJob.parent_id.is_(None))
                              .order_by(StressJob.finished_at.desc(), StressJob.id).limit(HOME_LATEST)).all()
    latest = []
    for job in jobs:
        results = service.job_results(job, slo)
        if results["levels"]:
            latest.append({"job": results["job"], "summary": results["summary"], "partial": results["partial"]})
    return {"latest": latest, "slo": slo.describe()}
