"""The stress-test pages: the jobs list (live), the new-job form, and one job (live charts, log, cancel).

Live updates, and why they take the shape they do:

- The jobs list (and the home page's panel) opens **one** EventSource per page, on ``/stress-tests/live``,
  with the ids of the unfinished jobs it shows. The stream renders each job's status-and-progress cell
  as HTML and sends it as event ``job-<id>`` only when it changed, which htmx's SSE extension swaps into
  that job's cell. One connection and one small query per poll however many jobs are listed, rather
  than one EventSource per job (a page of 50 running jobs would open 50 streams, over the browser's
  per-host connection limit on HTTP/1.1); when every listed job has finished the stream says ``close``
  and the extension closes it.
- A job page follows the JSON stream ``/api/v1/stress-tests/<id>/events`` from ``static/js/stress_job.js``:
  the charts need the numbers (plotly), not HTML. The summary and the per-level table are re-read as
  HTML fragments (this module) when the status changes or a level ends, a handful of requests per job.
  The log tail is an htmx widget that polls every few seconds only while the job is unfinished.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
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
from sqlalchemy import select

from backend.catalog.service import get_catalog
from backend.db import db
from backend.errors import ApiError, NotFound
from backend.inference import service as inference_service
from backend.sse import PING, SSE_HEADERS, sse_event
from backend.stress import datasets, service
from backend.stress.models import JobStatus, StressJob
from backend.stress.params import DEFAULT_PROMPT, FILE_DATASETS, PRESETS, StressParams, available_tokenizers
from backend.validation import parse_body
from backend.web import is_htmx_fragment_request, render

bp = Blueprint("stress_pages", __name__)

LIST_PAGE_SIZE = 50
LOG_LINES = 200
MAX_CHART_SAMPLES = 3000
MAX_LIVE_JOBS = 200
MAX_QUERY_PROMPT = 200_000
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

DATASETS = [
    ("prompt", "Fixed prompt", "the same prompt for every request"),
    ("random", "Random tokens", "random prompts of the input length (needs a local tokenizer)"),
    ("random_vl", "Random + images", "random prompts with generated images (image models, tokenizer)"),
    ("line_by_line", "File: line by line", "one prompt per line of an uploaded file"),
    ("openqa", "File: OpenQA", "JSON Lines with a 'question' per line"),
    ("custom", "File: custom", "one plain-text prompt per line"),
]

# Where each field the service names is shown on the form.
FORM_SLOTS = {
    "model": "target", "manual_config": "manual_url", "manual_config.base_url": "manual_url",
    "manual_config.api_url": "manual_url", "manual_config.model_name": "manual_model",
    "manual_config.api_key": "manual_key",
}
FORM_FIELDS = {
    "target", "manual_url", "manual_model", "manual_key", "label", "concurrency", "requests", "input_tokens",
    "output_tokens", "dataset", "prompt", "dataset_file", "tokenizer", "image_width", "image_height",
    "image_count", "temperature", "connect_timeout_s", "read_timeout_s", "total_timeout_s",
}
MANUAL = "__manual__"


def _settings() -> dict[str, Any]:
    return current_app.config["PEP"]["stress"]


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def decorate(job: dict[str, Any]) -> dict[str, Any]:
    """A job dict with what the templates show: its duration so far and the per-level request counts."""
    started, finished = _parse_time(job.get("started_at")), _parse_time(job.get("finished_at"))
    end = finished or (datetime.now(UTC) if started and not job["is_finished"] else None)
    job["duration_s"] = (end - started).total_seconds() if started and end else None
    job["created"] = (job.get("created_at") or "")[:19].replace("T", " ")
    return job


# --- the jobs list -------------------------------------------------------------------------------


@bp.get("/stress-tests")
def jobs():  # type: ignore[no-untyped-def]
    status = request.args.get("status", "").strip()
    model = request.args.get("model", "").strip()
    problems = []
    if status and status not in {s.value for s in JobStatus} and status != "active":
        problems.append(f"There is no status “{status}”.")
        status = ""
    wanted = ",".join(s.value for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)) \
        if status == "active" else status
    page = service.list_jobs(_settings(), status=wanted or None, model=model or None, limit=LIST_PAGE_SIZE, offset=0)
    jobs = [decorate(job) for job in page["jobs"]]
    response = render("stress/list.html", "stress/_list.html", jobs=jobs, total=page["total"],
                      worker=page["worker"], status=status, model=model, problems=problems,
                      statuses=["active", *(s.value for s in JobStatus)], model_options=_model_options(),
                      live_ids=[job["id"] for job in jobs if not job["is_finished"]])
    if problems:
        response.status_code = 400
    return response


def _model_options() -> list[tuple[str, str]]:
    names = {spec.key: spec.name for spec in get_catalog().models.values()}
    keys = db.session.scalars(select(StressJob.model_key).distinct().order_by(StressJob.model_key)).all()
    return [(key, names.get(key, key)) for key in keys]


@bp.get("/stress-tests/live")
def live():  # type: ignore[no-untyped-def]
    """HTML over SSE for the jobs list and the home page: one event ``job-<id>`` per changed job."""
    ids = list(dict.fromkeys(i for i in request.args.getlist("id") if i.isalnum()))[:MAX_LIVE_JOBS]
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = _settings()
    stream = live_cells(app, ids, poll_s=float(settings["sse_poll_s"]), heartbeat_s=float(settings["heartbeat_s"]))
    return Response(stream, headers=SSE_HEADERS, direct_passthrough=True)


def live_cells(app: Flask, ids: list[str], *, poll_s: float, heartbeat_s: float) -> Iterator[bytes]:
    yield PING
    last: dict[str, str] = {}
    settings = app.config["PEP"]["stress"]
    last_write = time.monotonic()
    try:
        while ids:
            events: list[bytes] = []
            with app.app_context():
                rows = db.session.scalars(select(StressJob).where(StressJob.id.in_(ids))).all()
                alive = service.worker_alive(settings)
                open_ids = []
                for row in rows:
                    job = decorate(service.job_dict(row, settings, alive=alive, with_levels=False))
                    state = json.dumps([job["status"], job["progress"], job["worker_alive"]], sort_keys=True)
                    if last.get(row.id) != state:
                        last[row.id] = state
                        html = render_template("stress/_live.html", job=job, live=True)
                        events.append(sse_event(f"job-{row.id}", html))
                    if not row.is_finished:
                        open_ids.append(row.id)
                db.session.remove()
            ids = open_ids
            if events:
                yield b"".join(events)
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= heartbeat_s:
                yield PING
                last_write = time.monotonic()
            if ids:
                time.sleep(poll_s)
        yield sse_event("close", "all listed jobs have finished")
    except GeneratorExit:  # the page went away
        return


# --- the form ------------------------------------------------------------------------------------


def _numbers(raw: str, name: str) -> list[int] | int:
    parts = [part for part in raw.replace(";", ",").replace(" ", ",").split(",") if part]
    if not parts:
        raise ApiError(f"{name}: required", field=name)
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise ApiError(f"{name}: whole numbers separated by commas, for example 1, 4, 8", field=name) from None
    return numbers


def _form_number(raw: str, name: str, kind: type[int] | type[float]) -> int | float:
    """A form field as the number the API takes (the API itself refuses "10" for 10)."""
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ApiError(f"{name}: must be {what}", field=name) from None


def form_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The API's request body from the form's fields (the same validation runs on it afterwards)."""
    body: dict[str, Any] = {}
    target = form.get("target", "").strip()
    if target == MANUAL:
        url = form.get("manual_url", "").strip()
        manual: dict[str, Any] = {"model_name": form.get("manual_model", "").strip()}
        manual["api_url" if url.rstrip("/").endswith("/chat/completions") else "base_url"] = url or None
        if form.get("manual_key"):
            manual["api_key"] = form["manual_key"]
        body["manual_config"] = manual
    elif target:
        body["model"] = target
    else:
        raise ApiError("target: choose a model or a manual endpoint", field="target")
    if form.get("label", "").strip():
        body["label"] = form["label"].strip()
    body["concurrency"] = _numbers(form.get("concurrency", ""), "concurrency")
    requests_per_level = _numbers(form.get("requests", ""), "requests")
    body["requests"] = requests_per_level[0] if len(requests_per_level) == 1 else requests_per_level
    dataset = form.get("dataset", "prompt")
    body["dataset"] = dataset
    if dataset == "prompt":
        body["prompt"] = form.get("prompt", "")
    if dataset in FILE_DATASETS:
        body["dataset_file"] = form.get("dataset_file") or None
    if dataset in ("random", "random_vl") and form.get("tokenizer"):
        body["tokenizer"] = form["tokenizer"]
    names = ["input_tokens", "output_tokens", "temperature", "connect_timeout_s", "read_timeout_s", "total_timeout_s"]
    if dataset == "random_vl":
        names += ["image_width", "image_height", "image_count"]
    for name in names:
        value = form.get(name, "").strip()
        if value:
            body[name] = _form_number(value, name, float if name == "temperature" else int)
    body["stream"] = form.get("stream") == "on"
    body["exact_output_tokens"] = form.get("exact_output_tokens") == "on"
    return body


def form_errors(exc: ApiError) -> dict[str, list[str]]:
    """Messages per form field; what names no field of the form goes under ``""`` (shown at the top)."""
    reported = exc.details.get("errors") or [{"field": exc.details.get("field", ""), "message": exc.message}]
    errors: dict[str, list[str]] = {}
    for item in reported:
        field = item.get("field") or ""
        slot = FORM_SLOTS.get(field, field.split("[")[0])
        message = item["message"]
        prefix = f"{field}: "
        if slot in FORM_FIELDS:
            message = message.removeprefix(prefix)
        else:
            slot = ""
        errors.setdefault(slot, []).append(message)
    return errors


def form_values(source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the form shows: the standard defaults, then ``source`` (the query or a refused submission)."""
    defaults = next(p for p in PRESETS if p["key"] == "quick")["params"]
    values: dict[str, Any] = {
        "target": "", "manual_url": "", "manual_model": "", "label": "",
        "concurrency": ", ".join(map(str, defaults["concurrency"])),
        "requests": ", ".join(map(str, defaults["requests"])),
        "input_tokens": defaults["input_tokens"], "output_tokens": defaults["output_tokens"],
        "dataset": "prompt", "prompt": DEFAULT_PROMPT, "dataset_file": "", "tokenizer": "",
        "image_width": 224, "image_height": 224, "image_count": 1, "stream": True, "exact_output_tokens": False,
        "temperature": defaults["temperature"], "connect_timeout_s": 10, "read_timeout_s": 120,
        "total_timeout_s": 600, "preset": "quick",
    }
    if source is not None:
        for name in values:
            if name in ("stream", "exact_output_tokens"):
                continue
            if name in source:
                values[name] = source[name]
        if "submitted" in source:
            values["stream"] = source.get("stream") == "on"
            values["exact_output_tokens"] = source.get("exact_output_tokens") == "on"
            values["preset"] = ""
    return values


def _form_context(values: dict[str, Any], errors: dict[str, list[str]], notes: Iterable[str] = ()) -> dict[str, Any]:
    catalog = get_catalog()
    models = catalog.describe(catalog.all_specs())
    settings = _settings()
    return {
        "title": "New stress test", "values": values, "errors": errors, "notes": list(notes), "models": models,
        "presets": PRESETS, "datasets": DATASETS, "uploads": datasets.list_datasets(),
        "tokenizers": list(available_tokenizers(settings)), "manual": MANUAL,
        "timings": service.latest_timings([model["key"] for model in models]),
        "limits": {key: int(settings[key]) for key in ("max_parallel", "max_levels", "max_requests", "max_tokens",
                                                       "level_pause_s", "max_dataset_bytes")},
        "worker_alive": service.worker_alive(settings),
    }


@bp.get("/stress-tests/new")
def new():  # type: ignore[no-untyped-def]
    """The form; ``?model=<key>&prompt=<text>`` (or ``&run=<playground run id>``) prefill it."""
    args = request.args
    values = form_values()
    notes = []
    known = get_catalog().known_keys()
    if args.get("model"):
        if args["model"] in known:
            values["target"] = args["model"]
        else:
            notes.append(f"“{args['model']}” is not in the catalogue: choose a target.")
    elif args.get("manual_url") or args.get("manual_model"):
        values.update(target=MANUAL, manual_url=args.get("manual_url", ""), manual_model=args.get("manual_model", ""))
        notes.append("Manual endpoint prefilled from the playground: enter its API key again if it needs one.")
    prompt = args.get("prompt")
    if prompt is None and args.get("run"):
        run = inference_service.get_run(args["run"])
        if run is None:
            notes.append(f"There is no playground run {args['run']}.")
        else:
            prompt = run.prompt
    if prompt is not None and prompt.strip():
        values.update(dataset="prompt", prompt=prompt[:MAX_QUERY_PROMPT], preset="")
        notes.append("Prompt prefilled from the playground. Images and the system prompt are not part of "
                     "a stress test.")
    return render_template("stress/new.html", **_form_context(values, {}, notes))


@bp.post("/stress-tests/new")
def create():  # type: ignore[no-untyped-def]
    try:
        body = parse_body(form_body(request.form), StressParams)
        job = service.create_job(body, get_catalog(), current_app.config["PEP"])
    except ApiError as exc:
        errors = form_errors(exc)
        if is_htmx_fragment_request():
            # The field errors land next to their fields out of band; the form keeps what was typed.
            return render_template("stress/_form_errors.html", errors=errors, slots=sorted(FORM_FIELDS)), 400
        return render_template("stress/new.html", **_form_context(form_values(request.form), errors)), 400
    target = url_for(".job", job_id=job.id)
    if is_htmx_fragment_request():
        response = make_response("", 200)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)


# --- one job -------------------------------------------------------------------------------------


def _job_or_404(job_id: str) -> StressJob:
    try:
        return service.get_job(job_id)
    except NotFound:
        abort(404, description=f"There is no stress test {job_id}.")


def _job_context(row: StressJob) -> dict[str, Any]:
    settings = _settings()
    job = decorate(service.job_dict(row, settings))
    return {"job": job, "title": f"Stress test {job['id']}", "worker_alive": service.worker_alive(settings),
            "catalog_name": getattr(get_catalog().get(row.model_key), "name", None)}


@bp.get("/stress-tests/<job_id>")
def job(job_id: str):  # type: ignore[no-untyped-def]
    """The page; an HTMX request gets the summary and the per-level table (what changes as a job runs)."""
    row = _job_or_404(job_id)
    context = _job_context(row)
    if not is_htmx_fragment_request():
        context["lines"] = _log_lines(row.id)
        # A running job's samples arrive over its event stream; a finished one has none, so they come here.
        context["samples"] = service.job_samples(row.id, MAX_CHART_SAMPLES) if row.is_finished else []
    return render("stress/job.html", "stress/_job_state.html", **context)


def _log_lines(job_id: str) -> list[str]:
    """The log's tail without the terminal colour codes evalscope writes."""
    return [ANSI_ESCAPE.sub("", line) for line in service.log_tail(job_id, _settings(), LOG_LINES)]


@bp.get("/stress-tests/<job_id>/log")
def job_log(job_id: str):  # type: ignore[no-untyped-def]
    row = _job_or_404(job_id)
    return render_template("stress/_log.html", job=decorate(service.job_dict(row, _settings(), with_levels=False)),
                           lines=_log_lines(row.id))


@bp.post("/stress-tests/<job_id>/cancel")
def cancel(job_id: str):  # type: ignore[no-untyped-def]
    _job_or_404(job_id)
    try:
        row = service.cancel_job(job_id)
    except ApiError as exc:  # already finished on its own
        row = _job_or_404(job_id)
        if not is_htmx_fragment_request():
            return redirect(url_for(".job", job_id=job_id), 303)
        return render_template("stress/_job_state.html", notice=exc.message, **_job_context(row)), 409
    if is_htmx_fragment_request():
        return render_template("stress/_job_state.html", **_job_context(row))
    return redirect(url_for(".job", job_id=row.id), 303)


@bp.post("/stress-tests/<job_id>/delete")
def delete(job_id: str):  # type: ignore[no-untyped-def]
    _job_or_404(job_id)
    try:
        service.delete_job(job_id, _settings())
    except ApiError as exc:
        if is_htmx_fragment_request():
            return render_template("errors/_fragment.html", message=exc.message), 409, \
                {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
        abort(409, description=exc.message)
    target = url_for(".jobs")
    if is_htmx_fragment_request():
        response = make_response("", 200)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)
