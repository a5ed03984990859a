"""The web side of every job kind: read a row, ask for a cancel, tell whether a worker runs. Rows only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from backend.db import db
from backend.errors import ApiError, NotFound
from backend.jobs import wakeup
from backend.jobs.models import JobStatus, JobWorker, transition, utcnow


def get_job(model: Any, job_id: str) -> Any:
    """The ``model`` row ``job_id``, or a 404 naming the kind (``model.noun``)."""
    job = db.session.get(model, job_id)
    if job is None:
        raise NotFound(f"no {model.noun} {job_id!r}")
    return job


def cancel_job(model: Any, job_id: str) -> Any:
    """Cancel a job: a queued one ends ``cancelled`` at once; a running one becomes ``cancelling`` and its
    worker stops its process (SIGTERM, then SIGKILL after the grace). Cancelling a job that a cancel already
    ended is no error; one that ended otherwise is a 409."""
    job = get_job(model, job_id)
    changed = transition(model, job.id, JobStatus.CANCELLED, model.status == JobStatus.QUEUED.value,
                         cancel_requested=True, error="cancelled before it started")
    if changed or transition(model, job.id, JobStatus.CANCELLING, cancel_requested=True):
        if not changed:
            wakeup.notify("cancel", model.__tablename__, job.id)  # its worker, on whichever host, wakes now
        db.session.commit()
    else:
        db.session.rollback()
    db.session.refresh(job)
    if job.is_finished and not job.cancel_requested:
        raise ApiError(f"job {job_id} already {job.status}", status=409, code="conflict")
    return job


def statuses(raw: str | None) -> list[str] | None:
    """A ``status`` filter of a jobs list: one status or several separated by commas; None for any."""
    if not raw:
        return None
    wanted = raw.split(",")
    known = {status.value for status in JobStatus}
    unknown = next((status for status in wanted if status not in known), None)
    if unknown is not None:
        raise ApiError(f"status: unknown status {unknown!r} (one of {', '.join(sorted(known))})", field="status")
    return wanted


def workers(stale_s: float, kinds: dict[str, Any]) -> list[dict[str, Any]]:
    """Every worker row, newest heartbeat first: host, labels, capacity per kind, the jobs of each kind it
    runs now, its lease, and whether it is alive (its lease holds). ``kinds`` maps a kind's name to its model."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_s)
    rows = db.session.scalars(select(JobWorker).order_by(JobWorker.heartbeat_at.desc())).all()
    running: dict[tuple[str, str], int] = {}
    for name, model in kinds.items():
        counts = db.session.execute(select(model.worker_id, func.count()).where(model.status.in_(
            [JobStatus.RUNNING.value, JobStatus.CANCELLING.value])).group_by(model.worker_id)).all()
        for worker_id, count in counts:
            running[(worker_id, name)] = count
    return [{"id": row.id, "host": row.host, "pid": row.pid, "labels": list(row.labels or []),
             "capacity": dict(row.capacity or {}),
             "running": {name: running.get((row.id, name), 0) for name in kinds},
             "started_at": row.started_at.isoformat(), "heartbeat_at": row.heartbeat_at.isoformat(),
             "lease_until": row.lease_until.isoformat() if row.lease_until else None,
             "alive": row.lease_valid(now) if row.lease_until is not None else row.heartbeat_at >= stale}
            for row in rows]


def current_workers() -> list[dict[str, Any]]:
    """``workers`` for this app's kinds and stale time."""
    from flask import current_app

    from backend.jobs.kinds import registered_kinds

    stale_s = float(current_app.config["PEP"]["stress"]["worker_stale_s"])
    return workers(stale_s, {kind.name: kind.model for kind in registered_kinds()})


def worker_alive(stale_s: float, labels: list[str] | None = None) -> bool:
    """Some worker's heartbeat is younger than ``stale_s`` (``stress.worker_stale_s``); with ``labels``, some
    such worker that has every one of them (one that could take a job requiring them)."""
    cutoff = utcnow() - timedelta(seconds=stale_s)
    if not labels:
        return db.session.scalar(select(func.count()).select_from(JobWorker)
                                 .where(JobWorker.heartbeat_at >= cutoff)) > 0
    live = db.session.scalars(select(JobWorker.labels).where(JobWorker.heartbeat_at >= cutoff)).all()
    return any(set(labels).issubset(have or ()) for have in live)
