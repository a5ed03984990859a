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
  The log tail is an htmx widget that polls every few seconds only while the job is unfinished; the page
  reads it once more when the job ends, and the finished log neither polls nor says it does.

What the pages say of a job comes from its row: the phase the worker records with the progress
(``starting``, ``warmup``, ``first``, ``running``, ``pause``, ``finishing``), the duration counted in the
browser from the server's figure, the input tokens its levels measured, and the duration estimate the
form gave when it was created (``service.job_estimate``) against what it took. "Run again…" opens the form
with every stored setting of a job (``?from_job=<id>``); the playground's link prefills the model, the
prompt, the system prompt, max tokens and temperature (``_from_link``). Messages name fields by the
form's labels (``FORM_LABELS``).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import func, select

from backend.catalog.service import get_catalog
from backend.db import db
from backend.errors import ApiError, NotFound
from backend.inference import service as inference_service
from backend.jobs import service as job_service
from backend.results import capacity_search
from backend.sse import PING, sse_event, sse_response
from backend.stress import datasets, service
from backend.stress.models import FINISHED, JobStatus, StressJob, StressLevel
from backend.stress.params import (
    DEFAULT_PROMPT,
    FILE_DATASETS,
    PRESETS,
    TOKENIZER_DATASETS,
    StressParams,
    available_tokenizers,
)
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
    "manual_config.api_key": "manual_key", "warmup_count": "warmup",
}
FORM_FIELDS = {
    "target", "manual_url", "manual_model", "manual_key", "label", "labels", "concurrency", "requests", "warmup",
    "input_tokens", "output_tokens", "dataset", "prompt", "system", "dataset_file", "tokenizer", "image_width",
    "image_height", "image_count", "temperature", "connect_timeout_s", "read_timeout_s", "total_timeout_s",
    "shards", "spread",
}
MANUAL = "__manual__"


def _settings() -> dict[str, Any]:
    return current_app.config["PEP"]["stress"]


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def decorate(job: dict[str, Any]) -> dict[str, Any]:
    """A job dict with what the templates show: its duration so far, and the input tokens its requests
    really had (the levels' mean, weighted by their successful requests) when its levels report them."""
    started, finished = _parse_time(job.get("started_at")), _parse_time(job.get("finished_at"))
    end = finished or (datetime.now(UTC) if started and not job["is_finished"] else None)
    job["duration_s"] = (end - started).total_seconds() if started and end else None
    job["created"] = (job.get("created_at") or "")[:19].replace("T", " ")
    measured = [(level["avg_input_tokens"], level["succeeded"]) for level in job.get("levels") or []
                if level.get("avg_input_tokens") is not None and level.get("succeeded")]
    job["measured_input_tokens"] = (sum(tokens * n for tokens, n in measured) / sum(n for _, n in measured)
                                    if measured else None)
    job["input_length_used"] = (job.get("params") or {}).get("dataset") in TOKENIZER_DATASETS
    return job


def home_context() -> dict[str, Any]:
    """What the home page's stress panel shows (templates/stress/_home.html)."""
    settings = _settings()
    active = service.list_jobs(settings, status="queued,running,cancelling", model=None, limit=10, offset=0)
    finished = service.list_jobs(settings, status=",".join(s.value for s in FINISHED), model=None, limit=5,
                                 offset=0)
    return {"active_jobs": [decorate(job) for job in active["jobs"]], "active_total": active["total"],
            "finished_jobs": [decorate(job) for job in finished["jobs"]], "worker_alive": active["worker"]["alive"]}


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
                      worker=page["worker"], workers=job_service.current_workers(), status=status, model=model,
                      problems=problems,
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
    return sse_response(stream, "stress_list")


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

# The form's labels, so that every message names a field as the operator sees it ("Temperature: ...").
FORM_LABELS = {
    "target": "Model", "manual_url": "Base URL or chat completions URL", "manual_model": "Model name",
    "manual_key": "API key", "label": "Label", "labels": "Worker labels", "concurrency": "Concurrency levels",
    "requests": "Requests per level", "warmup": "Warm-up requests", "input_tokens": "Input tokens",
    "output_tokens": "Output tokens", "shards": "Load generators", "spread": "Spread over",
    "temperature": "Temperature", "dataset": "Dataset", "prompt": "Prompt",
    "system": "System prompt", "dataset_file": "Uploaded file", "tokenizer": "Tokenizer",
    "image_width": "Image width", "image_height": "Image height", "image_count": "Images per request",
    "connect_timeout_s": "Connect timeout", "read_timeout_s": "Read timeout",
    "total_timeout_s": "Timeout per request", "stream": "Stream the answers",
    "exact_output_tokens": "Force exactly the output tokens",
    # "Find the capacity within an SLO" (mode=capacity): a capacity search instead of a sweep
    "start": "Start at", "max_concurrency": "Highest concurrency", "precision": "Precision",
    "repeats": "Repeats per probe", "probe_requests": "Requests per probe", "requests_per_slot": "Requests per slot",
    "slo": "SLO", "slo_percentile": "Percentile", "slo_ttft_ms": "TTFT limit", "slo_tpot_ms": "TPOT limit",
    "slo_latency_s": "Latency limit", "slo_error_pct": "Error rate limit",
}
# The capacity search's fields (their API names: SLO limits under "slo", the requests per probe "requests").
CAPACITY_FIELDS = ("start", "max_concurrency", "precision", "repeats", "probe_requests", "requests_per_slot",
                   "slo", "slo_percentile", "slo_ttft_ms", "slo_tpot_ms", "slo_latency_s", "slo_error_pct")
CAPACITY_SLOTS = {"requests": "probe_requests", "slo.percentile": "slo_percentile", "slo.ttft_ms": "slo_ttft_ms",
                  "slo.tpot_ms": "slo_tpot_ms", "slo.latency_s": "slo_latency_s", "slo.error_rate": "slo_error_pct"}
FORM_FIELDS |= set(CAPACITY_FIELDS)
WARMUP_MODES = ("concurrency", "none", "fixed")
_DATASET_NAMES = {key: name for key, name, _ in DATASETS}
_QUOTED_DATASET = re.compile(r"\bdataset '(\w+)'")
_NOT_DATASET = re.compile(r"\bnot '(\w+)'")


class FormProblems(ApiError):
    """What the form's own reading of the fields found (before the API's validation), every field at once."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        field, message = problems[0]
        super().__init__(f"{field}: {message}", field=field,
                         details={"errors": [{"field": f, "message": m} for f, m in problems]})


def _numbers(raw: str) -> list[int]:
    parts = [part for part in raw.replace(";", ",").replace(" ", ",").split(",") if part]
    if not parts:
        raise ValueError("required")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ValueError("whole numbers separated by commas, for example 1, 4, 8") from None


def _form_number(raw: str, kind: type[int] | type[float]) -> int | float:
    """A form field as the number the API takes (the API itself refuses "10" for 10). An empty field (what a
    browser sends for text typed into a number field) is refused rather than left to the API's default,
    which need not be what the form showed."""
    what = "a whole number" if kind is int else "a number"
    if not raw:
        raise ValueError(f"enter {what}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"must be {what}") from None


def form_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The API's request body from the form's fields (the same validation runs on it afterwards)."""
    body: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
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
        problems.append(("target", "choose a model or a manual endpoint"))
    if form.get("label", "").strip():
        body["label"] = form["label"].strip()
    if form.get("labels", "").strip():
        body["labels"] = [part.strip() for part in form["labels"].split(",") if part.strip()]
    for name in ("concurrency", "requests") if form.get("mode") != "capacity" else ():
        try:
            numbers = _numbers(form.get(name, ""))
        except ValueError as exc:
            problems.append((name, str(exc)))
            continue
        body[name] = numbers[0] if name == "requests" and len(numbers) == 1 else numbers
    warmup = form.get("warmup")
    if warmup is None:  # not a field of this submission (a client of its own): the API's default
        pass
    elif warmup == "fixed":
        try:
            body["warmup"] = _form_number(form.get("warmup_count", "").strip(), int)
        except ValueError as exc:
            problems.append(("warmup", str(exc)))
    elif warmup in WARMUP_MODES:
        body["warmup"] = "concurrency" if warmup == "concurrency" else 0
    else:
        problems.append(("warmup", "choose one of the choices"))
    dataset = form.get("dataset", "prompt")
    body["dataset"] = dataset
    if dataset == "prompt":
        body["prompt"] = form.get("prompt", "")
        if form.get("system", "").strip():
            body["system"] = form["system"]
    if dataset in FILE_DATASETS:
        body["dataset_file"] = form.get("dataset_file") or None
    if dataset in TOKENIZER_DATASETS and form.get("tokenizer"):
        body["tokenizer"] = form["tokenizer"]
    names = ["output_tokens", "temperature", "connect_timeout_s", "read_timeout_s", "total_timeout_s", "shards"]
    if dataset in TOKENIZER_DATASETS:
        names.insert(0, "input_tokens")
    if dataset == "random_vl":
        names += ["image_width", "image_height", "image_count"]
    for name in names:
        if name not in form:  # not sent at all (a client of its own, not the page): the API's default
            continue
        try:
            body[name] = _form_number(form[name].strip(), float if name == "temperature" else int)
        except ValueError as exc:
            problems.append((name, str(exc)))
    body["stream"] = form.get("stream") == "on"
    body["exact_output_tokens"] = form.get("exact_output_tokens") == "on"
    if form.get("spread"):
        body["spread"] = form["spread"]
    if problems:
        raise FormProblems(problems)
    return body


def search_body(form: Mapping[str, str]) -> dict[str, Any]:
    """A capacity search's body from the form (mode=capacity): the workload as ``form_body`` reads it, then
    the search's own fields; an empty SLO limit is no limit, the error rate is given in %."""
    problems: list[tuple[str, str]] = []
    try:
        body = form_body(form)
    except FormProblems as exc:
        body = {}
        problems += [(item["field"], item["message"]) for item in exc.details["errors"]]
    start = form.get("start", "1").strip()
    if start == "auto":
        body["start"] = "auto"
    else:
        try:
            body["start"] = _form_number(start, int)
        except ValueError as exc:
            problems.append(("start", str(exc)))
    precision = form.get("precision", "1").strip()
    body["precision"] = int(precision) if precision.isdigit() else precision
    for name, key in (("max_concurrency", "max_concurrency"), ("repeats", "repeats"),
                      ("probe_requests", "requests"), ("requests_per_slot", "requests_per_slot")):
        try:
            body[key] = _form_number(form.get(name, "").strip(), int)
        except ValueError as exc:
            problems.append((name, str(exc)))
    slo: dict[str, Any] = {}
    for name in ("slo_percentile", "slo_ttft_ms", "slo_tpot_ms", "slo_latency_s", "slo_error_pct"):
        raw = form.get(name, "").strip()
        if not raw and name != "slo_percentile":
            continue  # no limit
        try:
            value = _form_number(raw, float)
        except ValueError as exc:
            problems.append((name, str(exc)))
            continue
        if name == "slo_error_pct":
            if not 0 <= value <= 100:
                problems.append((name, "must be between 0 and 100 %"))
            slo["error_rate"] = value / 100.0
        else:
            slo[name.removeprefix("slo_")] = value
    body["slo"] = slo
    if problems:
        raise FormProblems(problems)
    return body


def _plain(message: str) -> str:
    """A message with the API's names of datasets replaced by the form's."""
    message = _QUOTED_DATASET.sub(lambda m: f"the “{_DATASET_NAMES.get(m[1], m[1])}” dataset", message)
    message = _NOT_DATASET.sub(lambda m: f"not “{_DATASET_NAMES[m[1]]}”" if m[1] in _DATASET_NAMES else m[0],
                               message)
    return message.replace("needs base_url or api_url", "enter one")


def form_errors(exc: ApiError, *, capacity: bool = False) -> dict[str, list[str]]:
    """Messages per form field, each a sentence that starts with the field's label; what names no field
    of the form goes under ``""`` (shown at the top). ``capacity``: the fields of a capacity search."""
    reported = exc.details.get("errors") or [{"field": exc.details.get("field", ""), "message": exc.message}]
    errors: dict[str, list[str]] = {}
    slots = {**FORM_SLOTS, **CAPACITY_SLOTS} if capacity else FORM_SLOTS
    for item in reported:
        field = item.get("field") or ""
        base = field.split("[")[0]
        slot = slots.get(field) or slots.get(base) or base
        message = _plain(item["message"].removeprefix(f"{field}: "))
        label = FORM_LABELS.get(slot)
        if label:
            index = re.search(r"\[(\d+)\]", field)
            where = f" (level {int(index[1]) + 1})" if index and base in ("concurrency", "requests") else ""
            message = f"{label}{where}: {message}"
        errors.setdefault(slot if slot in FORM_FIELDS else "", []).append(message)
    return errors


def _default_values() -> dict[str, Any]:
    defaults = next(p for p in PRESETS if p["key"] == "quick")["params"]
    return {
        "target": "", "manual_url": "", "manual_model": "", "label": "", "labels": "",
        "concurrency": ", ".join(map(str, defaults["concurrency"])),
        "requests": ", ".join(map(str, defaults["requests"])), "warmup": "concurrency", "warmup_count": "",
        "input_tokens": defaults["input_tokens"], "output_tokens": defaults["output_tokens"],
        "dataset": "prompt", "prompt": DEFAULT_PROMPT, "system": "", "dataset_file": "", "tokenizer": "",
        "image_width": 224, "image_height": 224, "image_count": 1, "stream": True, "exact_output_tokens": False,
        "temperature": defaults["temperature"], "connect_timeout_s": 10, "read_timeout_s": 120,
        "total_timeout_s": 600, "shards": 1, "spread": "processes", "preset": "quick", **_capacity_defaults(),
    }


def _capacity_defaults() -> dict[str, Any]:
    """The capacity fields as the form first shows them: the configured default SLO (results.slo)."""
    slo = current_app.config["PEP"]["results"]["slo"]

    def blank(value: float | None) -> str:
        return "" if value is None else f"{value:g}"

    return {"mode": "sweep", "start": "1", "max_concurrency": min(64, int(_settings()["max_parallel"])),
            "precision": "1", "repeats": 2, "probe_requests": 10, "requests_per_slot": 2,
            "slo_percentile": blank(slo.get("percentile")), "slo_ttft_ms": blank(slo.get("ttft_ms")),
            "slo_tpot_ms": blank(slo.get("tpot_ms")), "slo_latency_s": blank(slo.get("latency_s")),
            "slo_error_pct": blank(None if slo.get("error_rate") is None else slo["error_rate"] * 100)}


def form_values(source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the form shows: the standard defaults, then ``source`` (a refused submission)."""
    values = _default_values()
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


def _form_context(values: dict[str, Any], errors: dict[str, list[str]], notes: Iterable[str] = (),
                  prefilled: Mapping[str, str] | None = None) -> dict[str, Any]:
    catalog = get_catalog()
    models = catalog.describe(catalog.all_specs())
    settings = _settings()
    return {
        "title": "New stress test", "values": values, "errors": errors, "notes": list(notes), "models": models,
        "prefilled": dict(prefilled or {}), "labels": FORM_LABELS,
        "presets": PRESETS, "datasets": DATASETS, "uploads": datasets.list_datasets(),
        "tokenizers": list(available_tokenizers(settings)), "manual": MANUAL,
        "timings": service.latest_timings([model["key"] for model in models] + _manual_keys()),
        "overhead": service.startup_overhead(float(settings["level_pause_s"])),
        "limits": {**{key: int(settings[key]) for key in ("max_parallel", "max_levels", "max_requests", "max_tokens",
                                                          "level_pause_s", "max_dataset_bytes")},
                   "max_shards": int(settings.get("max_shards", 8))},
        "worker_alive": service.worker_alive(settings),
    }


def _manual_keys() -> list[str]:
    """The keys under which jobs of manual endpoints are stored (``manual:<model name>``), for estimates."""
    return list(db.session.scalars(select(StressJob.model_key).distinct()
                                   .where(StressJob.model_key.startswith("manual:")).limit(200)))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _from_link(args: Mapping[str, str]) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """The form prefilled from a link: the playground's "Stress-test this prompt" sends ``from=playground``,
    ``model`` (or ``manual_url`` and ``manual_model``), ``prompt``, and when set ``system``, ``max_tokens``
    and ``temperature``; ``run=<playground run id>`` stands for its prompt and system prompt."""
    values = _default_values()
    source = "the playground" if args.get("from") == "playground" or args.get("run") else "the link"
    came: list[str] = []
    notes: list[str] = []
    prefilled: dict[str, str] = {}
    if args.get("model"):
        if args["model"] in get_catalog().known_keys():
            values["target"] = args["model"]
            came.append(f"the model ({args['model']})")
            prefilled["target"] = f"from {source}"
        else:
            notes.append(f"“{args['model']}” is not in the catalogue: choose a target.")
    elif args.get("manual_url") or args.get("manual_model"):
        values.update(target=MANUAL, manual_url=args.get("manual_url", ""), manual_model=args.get("manual_model", ""))
        came.append("the manual endpoint's URL and model name (not its API key: type it again if it needs one)")
        prefilled.update(manual_url=f"from {source}", manual_model=f"from {source}",
                         manual_key="not copied: type it again if the endpoint needs one")
    prompt, system = args.get("prompt"), args.get("system")
    if prompt is None and args.get("run"):  # texts too long for a link: read from the stored run
        run = inference_service.get_run(args["run"])
        if run is None:
            notes.append(f"There is no playground run {args['run']}.")
        else:
            prompt = run.prompt
            system = run.system if system is None else system
    if prompt is not None and prompt.strip():
        values.update(dataset="prompt", prompt=prompt[:MAX_QUERY_PROMPT], preset="")
        came.append("the prompt")
        prefilled["prompt"] = f"from {source}"
    if system is not None and system.strip():
        values.update(dataset="prompt", system=system[:MAX_QUERY_PROMPT], preset="")
        came.append("the system prompt")
        prefilled["system"] = f"from {source}"
    for name, field, kind in (("max_tokens", "output_tokens", int), ("temperature", "temperature", float)):
        raw = (args.get(name) or "").strip()
        if not raw:
            continue
        try:
            number = kind(raw)
            if not math.isfinite(number):
                raise ValueError(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            notes.append(f"{name} “{raw}” from {source} is not {what}: {FORM_LABELS[field]} keeps "
                         f"{values[field]}.")
            continue
        values.update({field: number, "preset": ""})
        came.append(f"{name.replace('_', ' ')} {number:g} as {FORM_LABELS[field]}")
        prefilled[field] = f"{name.replace('_', ' ')} from {source}"
    if came:
        notes.insert(0, f"From {source}: {_join(came)}. Everything else is the Quick check preset's.")
    return values, notes, prefilled


def _from_job(job_id: str) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """The form with every setting of a stored job ("Run again…"); a manual endpoint's key is never kept."""
    values = _default_values()
    row = db.session.get(StressJob, job_id) if job_id.isalnum() else None
    if row is None:
        return values, [f"There is no stress test {job_id} to copy: the form shows the defaults."], {}
    params, target = dict(row.params or {}), dict(row.target or {})
    notes = [f"Every setting copied from stress test {row.id} ({target.get('name') or row.model_key}, "
             f"{row.status})."]
    prefilled: dict[str, str] = {}
    if target.get("kind") == "manual":
        values.update(target=MANUAL, manual_url=target.get("api_url") or target.get("base_url") or "",
                      manual_model=target.get("model_id") or "")
        notes.append("Its manual endpoint is copied without its API key, which is never kept: type the key "
                     "again if the endpoint needs one.")
        prefilled["manual_key"] = f"not copied from job {row.id}: type it again if the endpoint needs one"
    elif row.model_key in get_catalog().known_keys():
        values["target"] = row.model_key
    else:
        notes.append(f"Its model “{row.model_key}” is no longer in the catalogue: choose a target.")
    counts = list(params.get("requests") or [])
    warmup = params.get("warmup", 0)
    values.update(
        label=target.get("label") or "", labels=", ".join(row.labels or []), preset="",
        concurrency=", ".join(map(str, params.get("concurrency") or [])),
        requests=str(counts[0]) if counts and len(set(counts)) == 1 else ", ".join(map(str, counts)),
        warmup="concurrency" if warmup == "concurrency" else ("fixed" if warmup else "none"),
        warmup_count=str(warmup) if warmup and warmup != "concurrency" else "",
        dataset=params.get("dataset", "prompt"), prompt=params.get("prompt") or "", system=params.get("system") or "",
        dataset_file=params.get("dataset_file") or "",
        tokenizer="" if params.get("tokenizer") in (None, "default") else params["tokenizer"],
        stream=bool(params.get("stream", True)), exact_output_tokens=bool(params.get("exact_output_tokens")),
        spread=params.get("spread") or "processes",
    )
    for name in ("input_tokens", "output_tokens", "temperature", "connect_timeout_s", "read_timeout_s",
                 "total_timeout_s", "image_width", "image_height", "image_count", "shards"):
        if params.get(name) is not None:
            values[name] = params[name]
    if params.get("dataset_file") and datasets.get_dataset(params["dataset_file"]) is None:
        notes.append(f"Its uploaded file {params['dataset_file']} is no longer there: upload it again.")
    if params.get("tokenizer") and params["tokenizer"] not in available_tokenizers(_settings()):
        notes.append(f"Its tokenizer “{params['tokenizer']}” is no longer configured: choose another.")
    return values, notes, prefilled


@bp.get("/stress-tests/new")
def new():  # type: ignore[no-untyped-def]
    """The form; ``?from_job=<id>`` copies a job's settings, and a link from the playground prefills the
    model, the prompt and its generation settings (``_from_link``)."""
    if request.args.get("from_job"):
        values, notes, prefilled = _from_job(request.args["from_job"])
    else:
        values, notes, prefilled = _from_link(request.args)
    if request.args.get("mode") == "capacity":  # "New capacity search" on the searches' list
        values["mode"] = "capacity"
    return render_template("stress/new.html", **_form_context(values, {}, notes, prefilled))


@bp.post("/stress-tests/new")
def create():  # type: ignore[no-untyped-def]
    if request.form.get("mode") == "capacity":
        return _create_search()
    try:
        body = parse_body(form_body(request.form), StressParams)
        job = service.create_job(body, get_catalog(), current_app.config["PEP"])
    except ApiError as exc:
        errors = form_errors(exc)
        if is_htmx_fragment_request():
            # The field errors land next to their fields out of band; the form keeps what was typed.
            return render_template("stress/_form_errors.html", errors=errors, slots=sorted(FORM_FIELDS)), 400
        return render_template("stress/new.html", **_form_context(form_values(request.form), errors)), 400
    return _created(url_for(".job", job_id=job.id))


def _create_search():  # type: ignore[no-untyped-def]
    """The form in "find the capacity" mode: a capacity search, then its live page."""
    try:
        search = capacity_search.create_search(search_body(request.form), get_catalog(), current_app.config["PEP"])
    except ApiError as exc:
        errors = form_errors(exc, capacity=True)
        if is_htmx_fragment_request():
            return render_template("stress/_form_errors.html", errors=errors, slots=sorted(FORM_FIELDS)), 400
        return render_template("stress/new.html", **_form_context(form_values(request.form), errors)), 400
    return _created(url_for("capacity_pages.page", search_id=search.id))


def _created(target: str):  # type: ignore[no-untyped-def]
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
    pause_s = float(settings["level_pause_s"])
    return {"job": job, "title": f"Stress test {job['id']}", "worker_alive": service.worker_alive(settings),
            "catalog_name": getattr(get_catalog().get(row.model_key), "name", None),
            "estimate": service.job_estimate(row, pause_s), "level_pause_s": pause_s,
            "dataset_names": _DATASET_NAMES}


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
    row = _job_or_404(job_id)
    # Counted, not loaded: levels loaded into the session would be deleted twice (service and cascade).
    levels = db.session.scalar(select(func.count()).select_from(StressLevel).where(StressLevel.job_id == row.id))
    what = (f"Deleted stress test {row.id} ({(row.target or {}).get('name') or row.model_key}, {row.status}): "
            f"{levels} level{'s' if levels != 1 else ''} of results, its log and its output files.")
    try:
        service.delete_job(job_id, _settings())
    except ApiError as exc:
        if is_htmx_fragment_request():
            return render_template("errors/_fragment.html", message=exc.message), 409, \
                {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
        abort(409, description=exc.message)
    flash(what, "info")
    target = url_for(".jobs")
    if is_htmx_fragment_request():
        response = make_response("", 200)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)
