"""Stress-test jobs for the web side: create, read, cancel, delete, follow. Rows only: the worker runs them."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from sqlalchemy import func, select

from backend.catalog.service import Catalog
from backend.db import db
from backend.errors import ApiError
from backend.jobs import events as job_events
from backend.jobs import logs as job_logs
from backend.jobs import service as job_service
from backend.jobs import storage as job_storage
from backend.jobs import wakeup
from backend.providers.base import ProviderError
from backend.security.targets import check_target
from backend.sse import sse_event
from backend.stress import secrets, spread
from backend.stress.command import job_paths
from backend.stress.datasets import get_dataset
from backend.stress.models import (
    ACTIVE,
    JobStatus,
    ShardBarrier,
    StressJob,
    StressLevel,
    StressSample,
    utcnow,
)
from backend.stress.outputs import tail
from backend.stress.params import StressParams, check_limits
from backend.text import cut_texts

log = logging.getLogger(__name__)


# --- creating ------------------------------------------------------------------------------------


def resolve_target(body: StressParams, catalog: Catalog, params: dict[str, Any]) -> dict[str, Any]:
    """Where a stress test's load goes (stored on its row; never the key): a catalogue model or a manual
    endpoint, checked against the parameters. Capacity searches resolve their probes' target with it too."""
    if body.manual_config is not None:
        manual = body.manual_config
        url = manual.api_url or manual.base_url.rstrip("/") + "/chat/completions"  # type: ignore[union-attr]
        if params.get("system") and not url.rstrip("/").endswith("/chat/completions"):
            raise ApiError("system: a system prompt needs a chat completions endpoint (…/chat/completions)",
                           field="system")
        check_target(url, "manual_config.api_url" if manual.api_url else "manual_config.base_url",
                     current_app.config["PEP"])
        if manual.model_name == "--":  # argparse drops a lone "--" even from --model=--: evalscope would get none
            raise ApiError("manual_config.model_name: '--' cannot be passed to evalscope as a model name",
                           field="manual_config.model_name")
        return {"kind": "manual", "key": f"manual:{manual.model_name}", "provider": "openai",
                "model_id": manual.model_name, "name": body.label or manual.model_name, "label": body.label,
                "api_url": manual.api_url, "base_url": manual.base_url, "chat_url": url,
                "api_key_given": manual.api_key is not None}
    assert body.model is not None
    spec = catalog.get(body.model)
    if spec is None:
        raise ApiError(f"model: unknown model {body.model!r}; known models: {', '.join(catalog.known_keys())}",
                       field="model", details={"known": catalog.known_keys()})
    try:
        target = catalog.target(spec)
    except ProviderError as exc:
        raise ApiError(f"model: {exc}", field="model", status=409, code="unavailable") from None
    if params["dataset"] == "random_vl" and not spec.capabilities.images:
        raise ApiError(f"dataset: {spec.key} cannot read images; random_vl needs an image-capable model",
                       field="dataset")
    if params["output_tokens"] > spec.max_tokens:
        raise ApiError(f"output_tokens: {spec.key} answers at most {spec.max_tokens} tokens", field="output_tokens")
    data: dict[str, Any] = {"kind": "catalog", "key": spec.key, "provider": target.provider,
                            "model_id": target.model_id, "name": body.label or spec.name, "label": body.label,
                            "catalog_provider": spec.provider, "api_key_env": spec.api_key_env}
    if target.provider == "bedrock":
        data["region"] = target.region
    else:
        data["chat_url"] = target.chat_url
        check_target(target.chat_url, "model", current_app.config["PEP"], trusted=True)  # operator's config
        data["instance_type"], data["instances"] = catalog.instance(spec)  # for the cost of its results
    return data


def create_job(body: StressParams, catalog: Catalog, config: dict[str, Any]) -> StressJob:
    settings = config["stress"]
    params = check_limits(body, settings)
    if params.get("dataset_file"):
        dataset = get_dataset(params["dataset_file"])
        if dataset is None:
            raise ApiError(f"dataset_file: no uploaded dataset {params['dataset_file']!r}", field="dataset_file")
        if dataset.format != params["dataset"]:
            raise ApiError(f"dataset_file: that file was uploaded as {dataset.format!r}, not {params['dataset']!r}",
                           field="dataset_file")
    target = resolve_target(body, catalog, params)
    host_shards = int(params["shards"]) if params.get("spread") == "hosts" else None
    if host_shards is not None and (problem := spread.spread_problem(host_shards, body.labels,
                                                                     float(settings["worker_stale_s"]))):
        raise ApiError(problem, field="shards", status=409, code="unavailable")
    job = StressJob(host_shards=host_shards, model_key=target["key"], target=target, params=params, labels=body.labels,
                    estimated_requests=sum(params["requests"]),
                    token_source="tokenizer" if params.get("tokenizer") else "server",
                    progress={"percent": 0.0, "level": 0, "levels": len(params["concurrency"]), "concurrency": None,
                              "processed": 0, "total": sum(params["requests"])})
    if body.manual_config is not None and body.manual_config.api_key is not None:
        job.api_key_encrypted = secrets.encrypt(config["server"]["secret_key"],
                                                body.manual_config.api_key.get_secret_value())
    db.session.add(job)
    db.session.flush()
    if host_shards is not None:  # never run itself: its shard jobs are, one per worker (backend/stress/spread.py)
        spread.create_shards(job, host_shards)
    else:
        wakeup.notify("queued", "stress", job.id)
    db.session.commit()
    log.info("stress job %s queued: %s, %d requests", job.id, job.model_key, job.estimated_requests)
    return job


# --- reading -------------------------------------------------------------------------------------


def worker_alive(settings: dict[str, Any]) -> bool:
    return job_service.worker_alive(float(settings["worker_stale_s"]))


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _fresh(value: Any, settings: dict[str, Any]) -> bool:
    if value is None:
        return False
    if value.tzinfo is None:  # SQLite hands back naive datetimes
        value = value.replace(tzinfo=UTC)
    return utcnow() - value <= timedelta(seconds=float(settings["worker_stale_s"]))


def job_dict(job: StressJob, settings: dict[str, Any], *, alive: bool | None = None,
             with_levels: bool = True, preview: int | None = None) -> dict[str, Any]:
    """The job as the API shows it; with ``preview``, a long prompt is cut (``params.prompt_chars``
    gives its length; the job's own route has it whole)."""
    status = job.job_status
    shards = spread.shards_of(job.id) if job.host_shards is not None else []
    if status in ACTIVE and shards:  # spread over hosts: the workers of its running shards
        worker_ok: bool | None = all(_fresh(shard.heartbeat_at, settings) for shard in shards
                                     if shard.job_status in ACTIVE)
    elif status in ACTIVE:
        worker_ok = _fresh(job.heartbeat_at, settings)
    elif status is JobStatus.QUEUED:
        worker_ok = worker_alive(settings) if alive is None else alive
        if worker_ok and job.labels:  # a worker runs, but can it take this job?
            worker_ok = job_service.worker_alive(float(settings["worker_stale_s"]), job.labels)
    else:
        worker_ok = None
    data = {
        "id": job.id,
        "status": job.status,
        "is_finished": job.is_finished,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "model": job.model_key,
        "created_by": job.created_by,  # who started it (backend/security)
        "target": dict(job.target),
        "params": dict(job.params),
        "estimated_requests": job.estimated_requests,
        "progress": dict(job.progress or {}),
        "failed_requests": job.failed_requests,
        "token_source": job.token_source,
        "cancel_requested": job.cancel_requested,
        "exit_code": job.exit_code,
        "worker_alive": worker_ok,
        "worker_id": job.worker_id,  # which worker, on which host, runs or ran it
        "worker_host": job.worker_host,
        "labels": list(job.labels or []),  # what a worker needs to take it
    }
    if job.host_shards is not None:  # spread over hosts: its shard jobs, each on its own worker
        data["shard_jobs"] = [{"id": shard.id, "index": int(shard.params["host_shard"][0]), "status": shard.status,
                               "worker_id": shard.worker_id, "worker_host": shard.worker_host,
                               "progress": dict(shard.progress or {}), "error": shard.error}
                              for shard in shards]
    if job.parent_id is not None:
        data["shard_of"] = {"id": job.parent_id, "index": int(job.params["host_shard"][0]),
                            "of": int(job.params["host_shard"][1])}
    if preview is not None:
        cut_texts(data["params"], ("prompt",), preview)
    if with_levels:
        data["levels"] = [level.as_dict() for level in job.levels]
    return data


def get_job(job_id: str) -> StressJob:
    return job_service.get_job(StressJob, job_id)


def list_jobs(settings: dict[str, Any], *, status: str | None, model: str | None, limit: int,
              offset: int) -> dict[str, Any]:
    query = select(StressJob).where(StressJob.parent_id.is_(None))  # a host shard is listed on its job's page
    if (wanted := job_service.statuses(status)) is not None:
        query = query.where(StressJob.status.in_(wanted))
    if model:
        query = query.where(StressJob.model_key == model)
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = db.session.scalars(query.order_by(StressJob.created_at.desc()).limit(limit).offset(offset)).all()
    alive = worker_alive(settings)
    preview = int(settings["preview_chars"])
    return {"jobs": [job_dict(job, settings, alive=alive, preview=preview) for job in jobs], "total": total,
            "worker": {"alive": alive}, "preview_chars": preview}


# --- changing ------------------------------------------------------------------------------------


def cancel_job(job_id: str) -> StressJob:
    """Cancel a job; a job spread over hosts cancels its shards too (queued ones at once; running ones as
    its workers' next tick sees, backend/stress/spread.py)."""
    job = job_service.cancel_job(StressJob, job_id)
    if job.host_shards is not None:
        for shard in spread.shards_of(job.id):
            if not shard.is_finished:
                job_service.cancel_job(StressJob, shard.id)
        db.session.refresh(job)
    return job


def _inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved, if it lies inside ``root``; None otherwise (a symlink out, a strange id)."""
    resolved = path.resolve()
    return resolved if resolved != root and resolved.is_relative_to(root) else None


def delete_job(job_id: str, settings: dict[str, Any]) -> None:
    job = get_job(job_id)
    if not job.is_finished:
        raise ApiError(f"job {job_id} is {job.status}; cancel it and wait until it has finished",
                       status=409, code="conflict")
    spread.check_deletable(job)
    for shard in spread.shards_of(job.id) if job.host_shards is not None else []:
        _delete_one(shard, settings)
    _delete_one(job, settings)
    db.session.commit()


def _delete_one(job: StressJob, settings: dict[str, Any]) -> None:
    paths = job_paths(settings, job.id)
    output_dir = _inside(paths.outputs_root, paths.output_dir)
    if output_dir is not None and output_dir.exists() and not paths.output_dir.is_symlink():
        shutil.rmtree(output_dir, ignore_errors=True)
    log_path = _inside(paths.logs_root, paths.log_path)
    if log_path is not None and log_path.is_file():
        log_path.unlink(missing_ok=True)
    db.session.execute(db.delete(StressSample).where(StressSample.job_id == job.id))
    db.session.execute(db.delete(StressLevel).where(StressLevel.job_id == job.id))
    job_logs.forget("stress", job.id)
    job_storage.forget("stress", job.id, current_app.config["PEP"])
    db.session.execute(db.delete(ShardBarrier).where(ShardBarrier.job_id == job.id))
    db.session.delete(job)


def log_tail(job_id: str, settings: dict[str, Any], lines: int) -> list[str]:
    """From the database (the worker copies the log there, jobs/logs.py); the file for a job it has not."""
    job = get_job(job_id)
    kept = job_logs.tail_lines("stress", job.id, lines)
    return kept if kept is not None else tail(job_paths(settings, job.id).log_path, lines)


# --- following -----------------------------------------------------------------------------------


def _progress_payload(job: StressJob) -> dict[str, Any]:
    progress = dict(job.progress or {})
    return {"percent": progress.get("percent", 0.0), "level": progress.get("level", 0),
            "levels": progress.get("levels"), "concurrency": progress.get("concurrency"),
            "processed": progress.get("processed", 0), "total": progress.get("total"),
            "phase": progress.get("phase"), "warmup": progress.get("warmup"), "status": job.status}


def _updates(job: StressJob, cursor: dict[str, Any]) -> list[bytes]:
    """A stress job's own events for one poll: new samples, progress when it changed, new levels."""
    events: list[bytes] = []
    samples = db.session.scalars(
        select(StressSample).where(StressSample.job_id == job.id, StressSample.id > cursor.get("sample", 0))
        .order_by(StressSample.id).limit(500)).all()
    for sample in samples:
        events.append(sse_event("sample", sample.as_dict()))
        cursor["sample"] = sample.id
    progress = _progress_payload(job)
    if progress != cursor.get("progress"):
        events.append(sse_event("progress", progress))
        cursor["progress"] = progress
    levels = job.levels
    sent = cursor.get("levels", 0)
    for level in levels[sent:]:
        events.append(sse_event("level", level.as_dict()))
    cursor["levels"] = max(sent, len(levels))
    return events


def follow(app: Flask, job_id: str, *, poll_s: float, heartbeat_s: float) -> Iterator[bytes]:
    """SSE for one job: progress, sample, level, status, and a final end (``backend/jobs/events.py``)."""
    settings = app.config["PEP"]["stress"]
    return job_events.follow(app, StressJob, job_id, updates=_updates, final=lambda job: job_dict(job, settings),
                             poll_s=poll_s, heartbeat_s=heartbeat_s)


# --- for the pages -------------------------------------------------------------------------------


def job_samples(job_id: str, limit: int) -> list[dict[str, Any]]:
    """The job's live metric samples, oldest first, evenly thinned to at most ``limit`` points."""
    total = db.session.scalar(select(func.count()).select_from(StressSample).where(StressSample.job_id == job_id))
    query = select(StressSample).where(StressSample.job_id == job_id).order_by(StressSample.id)
    if total and total > limit:
        step = -(-total // limit)
        numbered = query.add_columns(func.row_number().over(order_by=StressSample.id).label("n")).subquery()
        query = (select(StressSample).join(numbered, StressSample.id == numbered.c.id)
                 .where((numbered.c.n - 1) % step == 0).order_by(StressSample.id))
    return [sample.as_dict() for sample in db.session.scalars(query)]


def warmup_requests(warmup: int | str | None, concurrency: int) -> int:
    """Warm-up requests a level sends before its measured ones (``"concurrency"``: one per slot)."""
    return concurrency if warmup == "concurrency" else int(warmup or 0)


def _level_timing(level: StressLevel) -> dict[str, Any] | None:
    data = level.as_dict()
    latency = data["latency_s"].get("avg")
    if latency is None:
        return None
    return {"concurrency": level.concurrency, "latency_s": latency, "ttft_ms": data["ttft_ms"].get("avg"),
            "tpot_ms": data["tpot_ms"].get("avg"), "avg_output_tokens": level.avg_output_tokens}


def _completed_jobs(model_keys: list[str] | None, before: Any = None, limit: int = 200) -> list[StressJob]:
    query = select(StressJob).where(StressJob.status == JobStatus.COMPLETED.value, StressJob.parent_id.is_(None))
    if model_keys is not None:
        query = query.where(StressJob.model_key.in_(model_keys))
    if before is not None:
        query = query.where(StressJob.finished_at < before)
    return list(db.session.scalars(query.order_by(StressJob.created_at.desc()).limit(limit)))


def latest_timings(model_keys: list[str], before: Any = None) -> dict[str, dict[str, Any]]:
    """Per model, the lowest-concurrency level of its latest completed job: what one request cost then.

    The form's duration estimate starts from this; with no finished job of a model there is none.
    ``before`` keeps only jobs that had finished by then (what the form knew when a job was created).
    """
    found: dict[str, dict[str, Any]] = {}
    if not model_keys:
        return found
    for job in _completed_jobs(model_keys, before):
        if job.model_key in found or not job.levels:
            continue
        timing = _level_timing(min(job.levels, key=lambda row: row.concurrency))
        if timing is None:
            continue
        found[job.model_key] = {"job": job.id, **timing, "output_tokens": (job.params or {}).get("output_tokens")}
    return found


def startup_overhead(pause_s: float, before: Any = None) -> dict[str, Any] | None:
    """How long the latest completed job (any model) spent outside its levels' measured requests: evalscope
    loading, warm-up, the report at the end, the worker's polling. Its duration less each level's test
    duration, the pauses between levels and, per level, the warm-up "waves" at that level's mean latency."""
    for job in _completed_jobs(None, before, limit=20):
        levels = job.levels
        if not levels or job.started_at is None or job.finished_at is None \
                or any(level.duration_s is None for level in levels):
            continue
        seconds = (job.finished_at - job.started_at).total_seconds()
        seconds -= sum(level.duration_s or 0.0 for level in levels) + pause_s * (len(levels) - 1)
        warmup = (job.params or {}).get("warmup", 0)
        for level in levels:
            latency = (level.metrics or {}).get("latency_s", {}).get("avg") or 0.0
            seconds -= math.ceil(warmup_requests(warmup, level.concurrency) / level.concurrency) * latency
        return {"job": job.id, "seconds": round(max(seconds, 0.0), 1)}
    return None


def expected_output_tokens(timing: dict[str, Any], output_tokens: int, exact: bool) -> float:
    """How many tokens an answer will have: ``output_tokens`` is a limit, and when the earlier job's answers
    stopped by themselves short of its own limit, their mean length is what the model says (at most the limit)."""
    natural, limit = timing.get("avg_output_tokens"), timing.get("output_tokens")
    if exact or natural is None or not limit or natural >= 0.95 * limit:
        return float(output_tokens)
    return min(float(output_tokens), float(natural))


def per_request_s(timing: dict[str, Any], output_tokens: int, exact: bool = False) -> float:
    """One request's latency at low load, rescaled to the expected answer length through TTFT and TPOT."""
    tokens = expected_output_tokens(timing, output_tokens, exact)
    if timing.get("tpot_ms") is not None and timing.get("ttft_ms") is not None and tokens > 0:
        return (timing["ttft_ms"] + timing["tpot_ms"] * max(tokens - 1, 0)) / 1000.0
    return float(timing["latency_s"])


def estimate_seconds(params: dict[str, Any], timing: dict[str, Any], overhead_s: float, pause_s: float) -> float:
    """About how long a job takes, or more (static/js/stress_form.js computes the same as the form changes):
    the start-up overhead, the pauses between levels, and per level the number of request "waves"
    (measured and warm-up requests over the concurrency) times one request's latency at low load."""
    levels, counts = params["concurrency"], params["requests"]
    one = per_request_s(timing, int(params["output_tokens"]), bool(params.get("exact_output_tokens")))
    seconds = overhead_s + pause_s * max(len(levels) - 1, 0)
    for level, count in zip(levels, counts, strict=True):
        seconds += math.ceil((count + warmup_requests(params.get("warmup", 0), level)) / level) * one
    return seconds


def job_estimate(job: StressJob, pause_s: float) -> dict[str, Any] | None:
    """The estimate the form showed for this job when it was created (from the jobs finished by then)."""
    timing = latest_timings([job.model_key], before=job.created_at).get(job.model_key)
    if timing is None:
        return None
    overhead = startup_overhead(pause_s, before=job.created_at)
    seconds = estimate_seconds(dict(job.params), timing, overhead["seconds"] if overhead else 0.0, pause_s)
    return {"seconds": seconds, "timing": timing, "overhead": overhead}
