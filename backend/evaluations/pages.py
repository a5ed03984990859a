"""The evaluation pages: the list of runs, the new-run form, one run (live, then scores and the per-sample
review) and two models side by side; the home page's panel.

- ``/evaluations/<id>`` is one template with two fragments an htmx request gets instead of the page, chosen
  by the element it swaps (``HX-Target``): ``eval-live`` (the cells' progress and scores, which polls
  itself every ``POLL_S`` while the run is unfinished, and asks the browser to reload the page once it has
  finished, so that the chart and the review appear) and ``review`` (the sample table for the filters in
  the query, as the filter form and the pager ask for it). Without JavaScript the same links and forms
  load whole pages.
- ``/evaluations/side-by-side?a=<cell>&b=<cell>`` compares two cells on the same dataset content, from one
  run or two (``review.side_by_side``); the run page offers its cells and every comparable cell.
- The form posts to ``/evaluations/new``, which builds the API's body and calls the evaluation service
  (``service.create_job``), so the API and the form validate the same way; a refusal is shown next to the
  field it names.

Everything a model wrote is rendered escaped (autoescape, no ``|safe``); the chart's JSON is embedded with
``<`` escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import func, select

from backend.db import db
from backend.errors import ApiError, NotFound
from backend.evaluations import review, review_api
from backend.evaluations.figures import score_figure
from backend.evaluations.models import EvaluationCell, EvaluationJob
from backend.jobs import service as job_service
from backend.stress.models import FINISHED, JobStatus
from backend.validation import MAX_OFFSET, int_arg
from backend.web import is_htmx_fragment_request

bp = Blueprint("evaluation_pages", __name__)

LIST_PAGE_SIZE = 25
POLL_S = 2
HOME_LATEST = 3


def init_app(app: Flask) -> None:
    app.register_blueprint(review_api.bp)
    app.register_blueprint(bp)


def _figures_json(figures: list[dict[str, Any]]) -> str:
    return json.dumps(figures, allow_nan=False, default=str).replace("<", "\\u003c")


# --- the list ------------------------------------------------------------------------------------


def list_runs(*, model: str | None, status: str | None, limit: int, offset: int) -> dict[str, Any]:
    job, cell = EvaluationJob, EvaluationCell
    query = select(job)
    if model:
        query = query.where(job.id.in_(select(cell.job_id).where(cell.model_key == model)))
    if status:
        if status == "active":
            query = query.where(job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value,
                                                JobStatus.CANCELLING.value]))
        else:
            query = query.where(job.status == status)
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    rows = db.session.scalars(query.order_by(job.created_at.desc(), job.id.desc()).limit(limit).offset(offset)).all()
    return {"runs": [run_summary(row) for row in rows], "total": total, "limit": limit, "offset": offset}


def run_summary(job: EvaluationJob) -> dict[str, Any]:
    cells = [review.cell_dict(cell) for cell in job.cells]
    done = sum(c["done"] or 0 for c in cells)
    total = sum(c["total"] or 0 for c in cells) or job.estimated_requests or None
    return {"id": job.id, "label": job.label, "status": job.status, "is_finished": job.is_finished,
            "created": (job.created_at.isoformat() if job.created_at else "")[:19].replace("T", " "),
            "models": list(dict.fromkeys(c["model"] for c in cells)) or job.model_key.split(","),
            "datasets": list(dict.fromkeys(c["dataset"] for c in cells)), "cells": cells, "done": done,
            "total": total, "error": job.error}


@bp.get("/evaluations")
def runs():  # type: ignore[no-untyped-def]
    model = request.args.get("model", "").strip()
    status = request.args.get("status", "").strip()
    statuses = ["active", *(s.value for s in JobStatus)]
    problem = None
    if status and status not in statuses:
        problem, status = f"There is no status “{status}”.", ""
    try:
        offset = int_arg("offset", 0, 0, MAX_OFFSET)
    except ApiError as exc:
        problem, offset = exc.message, 0
    page = list_runs(model=model or None, status=status or None, limit=LIST_PAGE_SIZE, offset=offset)
    models = db.session.scalars(select(EvaluationCell.model_key).distinct().order_by(EvaluationCell.model_key)).all()
    filters = {name: value for name, value in (("model", model), ("status", status)) if value}
    return render_template("evaluations/list.html", title="Evaluations", page=page, models=models,
                           statuses=statuses, filters=filters, problem=problem,
                           workers=job_service.current_workers()), 400 if problem else 200


# --- one run -------------------------------------------------------------------------------------


def _job_or_404(job_id: str) -> EvaluationJob:
    try:
        return review.evaluation_job(job_id)
    except NotFound:
        abort(404, description=f"There is no evaluation {job_id}.")


def _review_context(job: EvaluationJob, args: Mapping[str, str]) -> dict[str, Any]:
    """The review's filters from the query and one page of samples; a bad argument is said on the page."""
    problem = None
    try:
        flt = review_api.sample_filter()
        page = review.samples_page(job, flt, limit=int_arg("limit", review.PAGE_SIZE, 1, review.MAX_PAGE_SIZE),
                                   after=args.get("after"), before=args.get("before"))
    except ApiError as exc:
        problem, flt = exc.message, review.SampleFilter()
        page = review.samples_page(job, flt)
    return {"review_page": page, "review_filter": flt, "review_problem": problem,
            "review_query": {k: v for k, v in flt.query_args().items()}}


def _run_context(job: EvaluationJob, *, live_only: bool = False) -> dict[str, Any]:
    """What the run page shows; ``live_only``: just what the live cells fragment needs (it polls)."""
    summary = run_summary(job)
    context = {"run": summary, "job": job, "scores": review.score_rows(job), "judge": review.judge_cost(job),
               "poll_s": POLL_S}
    if not live_only:
        context.update(subsets=review.subsets(job), choices=comparable_choices(job))
    return context


@bp.get("/evaluations/<job_id>")
def run(job_id: str):  # type: ignore[no-untyped-def]
    job = _job_or_404(job_id)
    if is_htmx_fragment_request() and request.headers.get("HX-Target") == "eval-live":
        response = make_response(render_template("evaluations/_live.html", **_run_context(job, live_only=True)))
        if job.is_finished and request.args.get("was") == "running":
            response.headers["HX-Refresh"] = "true"  # the scores, the chart and the review come with the page
        response.headers.add("Vary", "HX-Request")
        return response
    review_context = _review_context(job, request.args)
    if is_htmx_fragment_request():  # the filter form or the pager: the sample table only
        response = make_response(render_template("evaluations/_review.html", **review_context),
                                 400 if review_context["review_problem"] else 200)
        response.headers.add("Vary", "HX-Request")
        return response
    context = {**_run_context(job), **review_context}
    figure = score_figure([row for row in context["scores"] if row["primary"]])
    figures = [figure] if figure else []
    context.update(title=f"Evaluation {job.id}", figures_count=len(figures), figures_json=_figures_json(figures))
    response = make_response(render_template("evaluations/run.html", **context),
                             400 if context["review_problem"] else 200)
    response.headers.add("Vary", "HX-Request")
    return response


@bp.post("/evaluations/<job_id>/cancel")
def cancel(job_id: str):  # type: ignore[no-untyped-def]
    from backend.evaluations import service

    _job_or_404(job_id)
    notice = None
    try:
        service.cancel_job(job_id)
    except ApiError as exc:  # it finished on its own meanwhile
        notice = exc.message
    if is_htmx_fragment_request():
        job = _job_or_404(job_id)
        return render_template("evaluations/_live.html", notice=notice,
                               **_run_context(job, live_only=True)), 409 if notice else 200
    return redirect(url_for(".run", job_id=job_id), 303)


# --- side by side --------------------------------------------------------------------------------


@bp.get("/evaluations/side-by-side")
def side_by_side():  # type: ignore[no-untyped-def]
    try:
        a = review.parse_cell_id(request.args.get("a"), "a")
        b = review.parse_cell_id(request.args.get("b"), "b")
        offset = int_arg("offset", 0, 0, MAX_OFFSET)
        comparison = review.side_by_side(a, b, outcome=request.args.get("outcome") or None, offset=offset,
                                         limit=review.PAGE_SIZE)
    except NotFound as exc:
        abort(404, description=exc.message)
    except ApiError as exc:
        abort(400, description=exc.message)
    return render_template("evaluations/side_by_side.html", title="Side by side", cmp=comparison)


def comparable_choices(job: EvaluationJob) -> dict[int, list[dict[str, Any]]]:
    """For each cell of the run, the cells (this run's or others') it can be compared with."""
    return {cell.id: [review.cell_dict(other) for other in review.comparable_cells(cell)] for cell in job.cells}


# --- the form ------------------------------------------------------------------------------------

# The form's labels, so that a refusal names the field as the operator sees it.
FORM_LABELS = {"models": "Models", "manual_config": "Manual endpoint", "label": "Label", "datasets": "Datasets",
               "limit": "Sample limit", "temperature": "Temperature", "max_tokens": "Max tokens", "seed": "Seed",
               "few_shot": "Few-shot examples", "repeats": "Repeats", "judge": "Judge model", "metrics": "Metrics",
               "timeout_s": "Timeout per request", "retries": "Retries", "labels": "Worker labels", "body": "Form"}
FORM_FIELDS = ("models", "label", "labels", "datasets", "limit", "temperature", "max_tokens", "seed", "few_shot",
               "repeats", "judge")
NUMBERS = {"limit": int, "temperature": float, "max_tokens": int, "seed": int, "few_shot": int, "repeats": int}
DEFAULTS = {"limit": "20", "temperature": "0", "max_tokens": "256", "seed": "42", "few_shot": "0", "repeats": "1"}


class FormProblems(ApiError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        field, message = problems[0]
        super().__init__(f"{field}: {message}", field=field,
                         details={"errors": [{"field": f, "message": m} for f, m in problems]})


def form_body(form: Any) -> dict[str, Any]:
    """The API's body from the form (the API's validation runs on it afterwards). An empty sample limit is
    every item of the dataset; another empty number field is refused rather than silently defaulted."""
    body: dict[str, Any] = {"models": [key for key in form.getlist("models") if key],
                            "datasets": [ref for ref in form.getlist("datasets") if ref]}
    problems: list[tuple[str, str]] = []
    if not body["models"]:
        problems.append(("models", "choose at least one model"))
    if not body["datasets"]:
        problems.append(("datasets", "choose at least one dataset"))
    if form.get("label", "").strip():
        body["label"] = form["label"].strip()
    if form.get("labels", "").strip():
        body["labels"] = [part.strip() for part in form["labels"].split(",") if part.strip()]
    if form.get("judge", "").strip():
        body["judge"] = form["judge"].strip()
    for name, kind in NUMBERS.items():
        if name not in form:
            continue
        raw = form[name].strip()
        if not raw:
            if name == "limit":
                continue
            problems.append((name, f"enter {'a whole number' if kind is int else 'a number'}"))
            continue
        try:
            body[name] = kind(raw)
        except ValueError:
            problems.append((name, f"must be {'a whole number' if kind is int else 'a number'}"))
    if problems:
        raise FormProblems(problems)
    return body


def form_errors(exc: ApiError) -> dict[str, list[str]]:
    """Messages per form field, each starting with the field's label; others under ``""``."""
    reported = exc.details.get("errors") or [{"field": exc.details.get("field", ""), "message": exc.message}]
    errors: dict[str, list[str]] = {}
    for item in reported:
        field = (item.get("field") or "").split(".")[0].split("[")[0]
        message = item["message"].removeprefix(f"{item.get('field')}: ")
        slot = field if field in FORM_FIELDS else ""
        errors.setdefault(slot, []).append(f"{FORM_LABELS.get(field, field or 'Form')}: {message}")
    return errors


def _form_context(values: Mapping[str, Any], errors: dict[str, list[str]]) -> dict[str, Any]:
    from backend.catalog.service import get_catalog

    catalog = get_catalog()
    models = catalog.describe(catalog.all_specs())
    return {"title": "New evaluation", "models": models, "datasets": _dataset_choices(), "values": values,
            "errors": errors, "labels": FORM_LABELS}


def _dataset_choices() -> list[dict[str, Any]]:
    """The datasets the form offers: stored ones (bundled first) by id, then evalscope's built-in benchmarks
    by name, those not cached on this machine disabled with the reason."""
    from backend.evaluations import datasets

    choices = [{"ref": row.id, "name": row.name, "kind": row.kind, "items": row.items, "bundled": row.bundled,
                "available": True, "reason": None, "hash": row.content_hash} for row in datasets.list_datasets()]
    choices += [{"ref": item["name"], "name": item["name"], "kind": "builtin", "items": None, "bundled": False,
                 "available": item["available"], "reason": item["reason"], "hash": None}
                for item in datasets.builtin_benchmarks()]
    return choices


def _values(form: Mapping[str, Any] | None) -> dict[str, Any]:
    values: dict[str, Any] = {"models": [], "datasets": [], "label": "", "labels": "", "judge": "", **DEFAULTS}
    if form is not None:
        values.update({name: form.get(name, "") for name in ("label", "labels", "judge", *NUMBERS)})
        values["models"], values["datasets"] = form.getlist("models"), form.getlist("datasets")
    else:
        values["models"] = [key for key in request.args.getlist("model") if key]
        values["datasets"] = [ref for ref in request.args.getlist("dataset") if ref]
    return values


@bp.get("/evaluations/new")
def new():  # type: ignore[no-untyped-def]
    return render_template("evaluations/new.html", **_form_context(_values(None), {}))


@bp.post("/evaluations/new")
def create():  # type: ignore[no-untyped-def]
    from backend.catalog.service import get_catalog
    from backend.evaluations import service
    from backend.evaluations.params import EvaluationParams
    from backend.validation import parse_body

    try:
        params = parse_body(form_body(request.form), EvaluationParams)
        job = service.create_job(params, get_catalog(), current_app.config["PEP"])
    except ApiError as exc:
        return render_template("evaluations/new.html", **_form_context(_values(request.form), form_errors(exc))), 400
    target = url_for(".run", job_id=job.id)
    if is_htmx_fragment_request():
        response: Response = make_response("", 200)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)


# --- the home page -------------------------------------------------------------------------------


def home_context() -> dict[str, Any]:
    """The home page's evaluations panel (templates/evaluations/_home.html): the latest runs, each with its
    cells' headline scores (n and interval) or its progress."""
    rows = db.session.scalars(select(EvaluationJob).order_by(EvaluationJob.created_at.desc(),
                                                             EvaluationJob.id.desc()).limit(HOME_LATEST)).all()
    latest = []
    for row in rows:
        summary = run_summary(row)
        summary["headline"] = review.headline_scores(row)
        latest.append(summary)
    finished = {s.value for s in FINISHED}
    return {"latest": latest, "finished": finished}
