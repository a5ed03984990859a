"""Evaluation jobs, the web side: create (rows only, never a process), list, read, cancel, follow, log.

A job is created ``queued`` with one ``evaluation_cells`` row per model x dataset (models outer), each
recording the dataset's id, content hash and name as they were at creation; the worker runs them
(``backend/evaluations/kind.py``). Names and behaviour follow ``/api/v1/stress-tests``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC
from typing import Any

from flask import Flask, current_app
from sqlalchemy import func, select

from backend.catalog.service import Catalog
from backend.db import db
from backend.errors import ApiError
from backend.evaluations.command import CommandError, job_paths, model_args
from backend.evaluations.models import EvaluationCell, EvaluationJob
from backend.evaluations.outputs import tail
from backend.evaluations.params import EvaluationParams, check_limits, metrics_for
from backend.jobs import events as job_events
from backend.jobs import logs as job_logs
from backend.jobs import service as job_service
from backend.jobs import wakeup
from backend.jobs.models import ACTIVE, JobStatus
from backend.providers.base import ProviderError
from backend.security.targets import check_target
from backend.sse import sse_event
from backend.stress import secrets

log = logging.getLogger("backend.evaluations.service")


# --- creating ------------------------------------------------------------------------------------


def _catalog_target(key: str, catalog: Catalog, field: str, max_tokens: int | None) -> dict[str, Any]:
    spec = catalog.get(key)
    if spec is None:
        raise ApiError(f"{field}: unknown model {key!r}; known models: {', '.join(catalog.known_keys())}",
                       field=field, details={"known": catalog.known_keys()})
    try:
        target = catalog.target(spec)
    except ProviderError as exc:
        raise ApiError(f"{field}: {exc}", field=field, status=409, code="unavailable") from None
    if max_tokens is not None and max_tokens > spec.max_tokens:
        raise ApiError(f"max_tokens: {spec.key} answers at most {spec.max_tokens} tokens", field="max_tokens")
    data: dict[str, Any] = {"kind": "catalog", "key": spec.key, "provider": target.provider,
                            "model_id": target.model_id, "name": spec.name, "catalog_provider": spec.provider,
                            "api_key_env": spec.api_key_env}
    if target.provider == "bedrock":
        data["region"] = target.region
    else:
        data["chat_url"] = target.chat_url
        check_target(target.chat_url, field, current_app.config["PEP"], trusted=True)  # operator's config
    return data


def _manual_target(body: EvaluationParams) -> dict[str, Any]:
    manual = body.manual_config
    assert manual is not None
    url = manual.api_url or manual.base_url.rstrip("/") + "/chat/completions"  # type: ignore[union-attr]
    if not url.rstrip("/").endswith("/chat/completions"):
        raise ApiError("manual_config.api_url: evalscope needs a chat completions endpoint (…/chat/completions)",
                       field="manual_config.api_url")
    check_target(url, "manual_config.api_url" if manual.api_url else "manual_config.base_url",
                 current_app.config["PEP"])
    target = {"kind": "manual", "key": f"manual:{manual.model_name}", "provider": "openai",
              "model_id": manual.model_name, "name": body.label or manual.model_name, "chat_url": url,
              "api_url": manual.api_url, "base_url": manual.base_url, "api_key_given": manual.api_key is not None}
    try:  # refused now, naming the field, rather than when the worker builds evalscope's command
        model_args(target)
    except CommandError as exc:
        raise ApiError(f"manual_config.model_name: {exc} (letters, digits and _.:/@+- only, starting with a "
                       "letter or digit)", field="manual_config.model_name") from None
    return target


def resolve_datasets(refs: list[str], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Each dataset reference as it is now: a stored dataset (by id) or a built-in benchmark that the
    machine has cached; anything else is refused naming the item."""
    from backend.evaluations import datasets

    builtins: dict[str, dict[str, Any]] | None = None
    resolved = []
    for index, ref in enumerate(refs):
        field = f"datasets[{index}]"
        dataset = datasets.get_dataset(ref)
        if dataset is not None:
            resolved.append({"id": dataset.id, "hash": dataset.content_hash, "name": dataset.name,
                             "kind": dataset.kind, "benchmark": datasets.BENCHMARKS[dataset.kind],
                             "items": dataset.items, "dev_items": dataset.dev_items})
            continue
        if builtins is None:
            builtins = {b["name"]: b for b in datasets.builtin_benchmarks()}
        builtin = builtins.get(ref)
        if builtin is None:
            raise ApiError(f"{field}: no dataset {ref!r} (upload one, or name a built-in benchmark: "
                           f"{', '.join(builtins)})", field=field)
        if not builtin["available"]:
            raise ApiError(f"{field}: {builtin['reason']}", field=field, details={"benchmark": ref})
        resolved.append({"id": ref, "hash": None, "name": ref, "kind": "builtin", "benchmark": ref,
                         "items": None, "dev_items": 0})
    return resolved


def create_job(body: EvaluationParams, catalog: Catalog, config: dict[str, Any]) -> EvaluationJob:
    settings = config["evaluations"]
    params = check_limits(body, settings)
    targets = [_catalog_target(key, catalog, f"models[{i}]", body.max_tokens) for i, key in enumerate(body.models)]
    if body.manual_config is not None:
        targets.append(_manual_target(body))
    judge = _catalog_target(body.judge, catalog, "judge", None) if body.judge else None
    datasets = resolve_datasets(body.datasets, settings)
    for index, dataset in enumerate(datasets):
        if params["few_shot"] and dataset["kind"] == "mcq" and params["few_shot"] > dataset["dev_items"]:
            raise ApiError(f"few_shot: {dataset['name']} has {dataset['dev_items']} few-shot items",
                           field="few_shot")
        if dataset["kind"] != "builtin" and not metrics_for(dataset["kind"], params.get("metrics"), judge is not None):
            raise ApiError(f"metrics: none of them applies to datasets[{index}] ({dataset['kind']})",
                           field="metrics")
    if judge is not None and not any(d["kind"] == "qa" for d in datasets):
        raise ApiError("judge: a judge scores question-answering datasets, and none is chosen", field="judge")
    repeats = int(params["repeats"])
    job = EvaluationJob(model_key=",".join(t["key"] for t in targets)[:200], label=body.label,
                        target={"models": targets, "judge": judge}, params=params, labels=body.labels)
    total = 0
    for m, target in enumerate(targets):
        for d, dataset in enumerate(datasets):
            items = dataset["items"]
            count = min(items, params["limit"]) if items is not None and params["limit"] else items
            cell_total = count * repeats if count is not None else (params["limit"] * repeats
                                                                      if params["limit"] else None)
            total += cell_total or 0
            job.cells.append(EvaluationCell(
                position=m * len(datasets) + d, model_key=target["key"], target=target, dataset_id=dataset["id"],
                dataset_hash=dataset["hash"], dataset_name=dataset["name"], dataset_kind=dataset["kind"],
                benchmark=dataset["benchmark"], status="queued", done=0, total=cell_total, metrics={}, live={}))
    job.estimated_requests = total
    job.progress = {"percent": 0.0, "done": 0, "total": total, "cells": len(job.cells), "cells_finished": 0,
                    "current_cell": None}
    if body.manual_config is not None and body.manual_config.api_key is not None:
        job.api_key_encrypted = secrets.encrypt(config["server"]["secret_key"],
                                                body.manual_config.api_key.get_secret_value())
    db.session.add(job)
    db.session.flush()
    wakeup.notify("queued", "evaluation", job.id)
    db.session.commit()
    log.info("evaluation job %s queued: %s x %d datasets, %d samples", job.id, job.model_key, len(datasets), total)
    return job


# --- reading -------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def cell_dict(cell: EvaluationCell) -> dict[str, Any]:
    return {"id": cell.id, "position": cell.position, "model": cell.model_key,
            "model_name": (cell.target or {}).get("name"), "dataset_id": cell.dataset_id,
            "dataset_hash": cell.dataset_hash, "dataset_name": cell.dataset_name, "dataset_kind": cell.dataset_kind,
            "benchmark": cell.benchmark, "status": cell.status, "error": cell.error,
            "progress": {"done": cell.done, "total": cell.total}, "live": dict(cell.live or {}),
            "primary_metric": cell.primary_metric, "metrics": dict(cell.metrics or {}),
            "judge": {"input_tokens": cell.judge_input_tokens, "output_tokens": cell.judge_output_tokens,
                      "cost_usd": cell.judge_cost},
            "started_at": _iso(cell.started_at), "finished_at": _iso(cell.finished_at)}


def _worker_ok(job: EvaluationJob, config: dict[str, Any], alive: bool | None) -> bool | None:
    stale = float(config["stress"]["worker_stale_s"])
    status = job.job_status
    if status in ACTIVE:
        heartbeat = job.heartbeat_at
        if heartbeat is None:
            return False
        from backend.jobs.models import utcnow

        heartbeat = heartbeat if heartbeat.tzinfo else heartbeat.replace(tzinfo=UTC)
        return (utcnow() - heartbeat).total_seconds() <= stale
    if status is JobStatus.QUEUED:
        alive = job_service.worker_alive(stale) if alive is None else alive
        return job_service.worker_alive(stale, job.labels) if alive and job.labels else alive
    return None


def job_dict(job: EvaluationJob, config: dict[str, Any], *, alive: bool | None = None,
             with_cells: bool = True) -> dict[str, Any]:
    data = {"id": job.id, "status": job.status, "is_finished": job.is_finished, "error": job.error,
            "label": job.label, "created_by": job.created_by,
            "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "models": job.model_key.split(","),
            "target": dict(job.target or {}), "params": dict(job.params or {}),
            "estimated_requests": job.estimated_requests, "progress": dict(job.progress or {}),
            "failed_cells": job.failed_requests, "cancel_requested": job.cancel_requested,
            "exit_code": job.exit_code, "worker_alive": _worker_ok(job, config, alive),
            "worker_id": job.worker_id, "worker_host": job.worker_host, "labels": list(job.labels or [])}
    if with_cells:
        data["cells"] = [cell_dict(cell) for cell in job.cells]
    return data


def get_job(job_id: str) -> EvaluationJob:
    return job_service.get_job(EvaluationJob, job_id)


def list_jobs(config: dict[str, Any], *, status: str | None, model: str | None, limit: int,
              offset: int) -> dict[str, Any]:
    query = select(EvaluationJob)
    if (wanted := job_service.statuses(status)) is not None:
        query = query.where(EvaluationJob.status.in_(wanted))
    if model:
        with_model = select(EvaluationCell.job_id).where(EvaluationCell.model_key == model)
        query = query.where(EvaluationJob.id.in_(with_model))
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    jobs = db.session.scalars(query.order_by(EvaluationJob.created_at.desc()).limit(limit).offset(offset)).all()
    alive = job_service.worker_alive(float(config["stress"]["worker_stale_s"]))
    return {"jobs": [job_dict(job, config, alive=alive) for job in jobs], "total": total, "worker": {"alive": alive}}


def cancel_job(job_id: str) -> EvaluationJob:
    job = job_service.cancel_job(EvaluationJob, job_id)
    if job.status == JobStatus.CANCELLED.value:
        for cell in job.cells:
            if cell.status == "queued":
                cell.status, cell.error = "cancelled", "cancelled before it started"
        db.session.commit()
    return job


def log_tail(job_id: str, settings: dict[str, Any], lines: int) -> list[str]:
    """From the database (the worker copies the log there, jobs/logs.py); the file for a job it has not."""
    job = get_job(job_id)
    kept = job_logs.tail_lines("evaluation", job.id, lines)
    return kept if kept is not None else tail(job_paths(settings, job.id).log_path, lines)


# --- following -----------------------------------------------------------------------------------


def _updates(job: EvaluationJob, cursor: dict[str, Any]) -> list[bytes]:
    """An evaluation's own events for one poll: ``progress`` when it changed, ``cell`` for each cell whose
    progress, live score or status changed (a finished cell carries its metrics)."""
    events: list[bytes] = []
    progress = {**dict(job.progress or {}), "status": job.status}
    if progress != cursor.get("progress"):
        events.append(sse_event("progress", progress))
        cursor["progress"] = progress
    seen = cursor.setdefault("cells", {})
    for cell in job.cells:
        data = cell_dict(cell)
        if seen.get(cell.id) != data:
            events.append(sse_event("cell", data))
            seen[cell.id] = data
    return events


def follow(app: Flask, job_id: str, *, poll_s: float, heartbeat_s: float) -> Iterator[bytes]:
    """SSE for one job: progress, cell, status, and a final end with the whole job (``backend/jobs/events.py``)."""
    config = app.config["PEP"]
    return job_events.follow(app, EvaluationJob, job_id, updates=_updates, final=lambda job: job_dict(job, config),
                             poll_s=poll_s, heartbeat_s=heartbeat_s)
