"""One stress test over load generators on several worker hosts (``shards: N, spread: "hosts"``).

Such a job is a *group*: it is never claimed nor run itself (``host_shards`` = N). When it is created it
gets N *shard jobs* (``parent_id`` names the group), each an ordinary stress job with its part of every
level's concurrency and requests and its own seed (``params.host_shard`` = ``[i, N]``), which any worker
with the group's labels may claim; a worker takes at most one shard of a group, so N shards run on N
workers. What crosses hosts goes through the database:

- **A common start of each level.** Each shard's evalscope waits at every level for its go, as the shards of
  one host do (``backend.stress.shards.FolderBarrier``, here a folder of the shard job's own); the worker that
  follows the shard relays (``relay``): its ``ready.<level>.<i>`` becomes a ``shard_barriers`` row; once all
  N are there, one worker writes the level's start (shard -1, ``START_AHEAD_S`` ahead; the primary key lets
  one write win) and every worker copies it into its shard's ``go.<level>``. The workers tick every 0.1 s
  while a shard waits (``StressKind.quick``).
- **One clock.** evalscope times requests with ``perf_counter``, which means nothing on another host. Each
  shard records, at its level's start, the wall clock and ``perf_counter`` read together (``client_cpu.json``),
  so each shard's rows are put on the wall clock (``origin_wall_s`` on its level) before they are merged;
  the hosts' clocks must agree (NTP keeps them within a few ms, well under a request's time).
- **The group** (``advance_groups``, a tick hook of every worker) is ``running`` once a shard runs; a cancel
  of the group cancels its shards, and a shard that ends other than completed cancels the others. When every
  shard has ended, each level that every shard stored is merged from the shards' per-request rows and
  inter-token gaps into the group's own level rows (percentiles of the union, never averaged; throughput over
  the window in which every shard ran; each shard's client CPU, and its host), and the group ends: completed,
  or as the first of its shards that did not complete, with that shard's reason.
"""

from __future__ import annotations

import io
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from backend.db import db
from backend.errors import ApiError
from backend.jobs import wakeup
from backend.jobs.models import ACTIVE, JobStatus, JobWorker, transition, utcnow
from backend.jobs.placement import can_take
from backend.results.ingest import LevelRequests, merge_shards, pack_columns, store_requests
from backend.results.metrics import client_load, level_from_requests, over_window
from backend.results.models import StressRequest
from backend.stress.command import share
from backend.stress.models import ShardBarrier, StressJob, StressLevel
from backend.stress.shards import FolderBarrier

log = logging.getLogger(__name__)

START_AHEAD_S = 0.5  # a level's common start lies this far after the last shard arrived: every worker reads it
GO = -1  # the ``shard`` of a level's common start in ``shard_barriers``
MAX_GAPS = 4_000_000  # inter-token gaps kept per shard level (16 MB); beyond, the merged ITL is not computed
_REQUEST_FIELDS = ("seq", "start_s", "end_s", "success", "ttft_ms", "latency_s", "tpot_ms", "itl_mean_ms",
                   "itl_max_ms", "input_tokens", "output_tokens", "error")
_NOT_MERGED = {"avg": None, "p50": None, "p90": None, "p95": None, "p99": None}


# --- creating ------------------------------------------------------------------------------------


def spread_problem(count: int, labels: list[str] | None, stale_s: float) -> str | None:
    """Why ``count`` shards cannot run on as many workers now (fewer live workers that take stress jobs and
    have ``labels``); None when they can. Each shard waits for the others at every level, so a shard with no
    worker to take it would hold the others at the barrier."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_s)
    rows = db.session.scalars(select(JobWorker)).all()
    able = [row for row in rows
            if (row.lease_valid(now) if row.lease_until is not None else row.heartbeat_at >= stale)
            and can_take(row.labels or [], labels) and int((row.capacity or {}).get("stress", 1)) > 0]
    if len(able) >= count:
        return None
    wanted = f" with labels {', '.join(labels)}" if labels else ""
    return (f"shards: spreading over hosts runs each of the {count} shards on a worker of its own, and "
            f"{len(able)} live worker{'s' if len(able) != 1 else ''}{wanted} take stress tests now")


def create_shards(group: StressJob, count: int) -> list[StressJob]:
    """The group's shard jobs, added to the session (the caller commits): shard i runs its part of every
    level with its own seed (``params.host_shard``)."""
    params = {key: value for key, value in group.params.items() if key not in ("shards", "spread")}
    shards = []
    for index in range(count):
        requests = [share(n, index, count) for n in group.params["requests"]]
        shard = StressJob(model_key=group.model_key, target=dict(group.target),
                          params={**params, "host_shard": [index, count]}, labels=group.labels,
                          estimated_requests=sum(requests), token_source=group.token_source,
                          api_key_encrypted=group.api_key_encrypted, parent_id=group.id,
                          created_by=group.created_by,
                          progress={"percent": 0.0, "level": 0, "levels": len(requests), "concurrency": None,
                                    "processed": 0, "total": sum(requests)})
        db.session.add(shard)
        shards.append(shard)
    db.session.flush()
    for shard in shards:
        wakeup.notify("queued", "stress", shard.id)
    return shards


def shards_of(group_id: str) -> list[StressJob]:
    jobs = db.session.scalars(select(StressJob).where(StressJob.parent_id == group_id)).all()
    return sorted(jobs, key=lambda job: int(job.params["host_shard"][0]))


def check_deletable(job: StressJob) -> None:
    if job.parent_id is not None:
        raise ApiError(f"job {job.id} is shard {job.params['host_shard'][0] + 1} of job {job.parent_id}; delete "
                       "that job instead", status=409, code="conflict")


# --- the barrier, relayed by the worker that follows a shard ---------------------------------------


def relay(group_id: str, index: int, count: int, folder: Path, released: set[int], levels: int) -> bool:
    """One step of the shard ``index`` of ``group_id``'s barrier (see the module docstring); True while its
    evalscope waits for a start this worker has not yet handed it (the worker then ticks quickly)."""
    barrier = FolderBarrier(folder)
    for level in range(levels):
        if level in released:
            continue
        if not (folder / f"ready.{level}.{index}").exists():
            return False
        if db.session.get(ShardBarrier, (group_id, level, index)) is None:
            _insert_once(ShardBarrier(job_id=group_id, level=level, shard=index, at=time.time()))
        go = db.session.get(ShardBarrier, (group_id, level, GO))
        if go is None:
            arrived = db.session.scalar(select(func.count()).select_from(ShardBarrier).where(
                ShardBarrier.job_id == group_id, ShardBarrier.level == level, ShardBarrier.shard >= 0))
            if arrived < count:
                return True
            _insert_once(ShardBarrier(job_id=group_id, level=level, shard=GO, at=time.time() + START_AHEAD_S))
            go = db.session.get(ShardBarrier, (group_id, level, GO))
        db.session.commit()
        barrier.release(level, float(go.at))
        released.add(level)
        log.info("stress job %s (shard %d of job %s): level %d starts at %.3f", folder.parent.name, index + 1,
                 group_id, level + 1, go.at)
    return False


def _insert_once(row: ShardBarrier) -> None:
    """Insert ``row`` unless another worker just did (the primary key refuses the second)."""
    try:
        with db.session.begin_nested():
            db.session.add(row)
    except sa_exc.IntegrityError:
        pass
    db.session.commit()


# --- a shard's level on the wall clock, with its gaps ------------------------------------------------


def wall_origin(origin_perf: float | None, clock: Any) -> float | None:
    """A level's first request start on the wall clock, from its ``perf_counter`` start and the pair of
    clocks the shard read together (``client_cpu.json``'s ``wall_at`` and ``perf_at``)."""
    if origin_perf is None or not isinstance(clock, dict):
        return None
    wall, perf = clock.get("wall_at"), clock.get("perf_at")
    if not isinstance(wall, int | float) or not isinstance(perf, int | float):
        return None
    return float(origin_perf) - float(perf) + float(wall)


def pack_gaps(gaps_ms: np.ndarray) -> bytes | None:
    if len(gaps_ms) > MAX_GAPS:
        return None
    out = io.BytesIO()
    np.save(out, np.asarray(gaps_ms, dtype="<f4"), allow_pickle=False)
    return out.getvalue()


def unpack_gaps(blob: bytes | None) -> np.ndarray | None:
    if blob is None:
        return None
    try:
        data = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return data.astype("<f8") if data.ndim == 1 else None


# --- the group ---------------------------------------------------------------------------------------


def advance_groups() -> None:
    """Every active group: start, cancel, end and merge as its shards go (a worker tick hook)."""
    groups = db.session.scalars(select(StressJob).where(
        StressJob.host_shards.is_not(None),
        StressJob.status.in_([JobStatus.QUEUED.value, *(s.value for s in ACTIVE)]))).all()
    for group in groups:
        try:
            _advance(group)
        except Exception:  # one group in trouble must not stop the others
            db.session.rollback()
            log.exception("stress job %s (spread over hosts): advancing it failed", group.id)


def _advance(group: StressJob) -> None:
    shards = shards_of(group.id)
    started = any(s.status != JobStatus.QUEUED.value for s in shards)
    if group.status == JobStatus.QUEUED.value and started and transition(StressJob, group.id, JobStatus.RUNNING):
        db.session.commit()
        db.session.refresh(group)
    _progress(group, shards)
    stop = group.cancel_requested or any(s.is_finished and s.status != JobStatus.COMPLETED.value for s in shards)
    if stop:
        for shard in shards:
            if not shard.is_finished and not shard.cancel_requested:
                _cancel(shard)
    if all(shard.is_finished for shard in shards):
        _end(group, shards)


def _progress(group: StressJob, shards: list[StressJob]) -> None:
    processed = sum(int((s.progress or {}).get("processed") or 0) for s in shards)
    total = sum(int((s.progress or {}).get("total") or 0) for s in shards) or group.estimated_requests
    levels = [int((s.progress or {}).get("level") or 0) for s in shards]
    progress = {**(group.progress or {}), "processed": processed, "total": total,
                "percent": round(100.0 * processed / total, 1) if total else 0.0, "level": min(levels, default=0)}
    if progress != (group.progress or {}):
        group.progress = progress
        db.session.commit()


def _cancel(shard: StressJob) -> None:
    if transition(StressJob, shard.id, JobStatus.CANCELLED, StressJob.status == JobStatus.QUEUED.value,
                  cancel_requested=True, error="cancelled before it started: another shard of its job ended"):
        db.session.commit()
    elif transition(StressJob, shard.id, JobStatus.CANCELLING, cancel_requested=True):
        wakeup.notify("cancel", "stress_jobs", shard.id)
        db.session.commit()
    else:
        db.session.rollback()


def _end(group: StressJob, shards: list[StressJob]) -> None:
    """Merge the levels every shard stored into the group's rows and end it; once, whichever worker wins."""
    stored = set(db.session.scalars(select(StressLevel.position).where(StressLevel.job_id == group.id)))
    by_shard = [{level.position: level for level in db.session.scalars(
        select(StressLevel).where(StressLevel.job_id == shard.id))} for shard in shards]
    positions = sorted(set.intersection(*(set(levels) for levels in by_shard))) if by_shard else []
    try:
        for position in positions:
            if position not in stored:
                _merge_level(group, shards, [levels[position] for levels in by_shard], position)
        status, error = _outcome(group, shards)
        if status is JobStatus.CANCELLED and group.status == JobStatus.RUNNING.value:
            transition(StressJob, group.id, JobStatus.CANCELLING)  # a running job is cancelled by way of it
        failed = sum(int(s.failed_requests or 0) for s in shards)
        if not transition(StressJob, group.id, status, error=error, failed_requests=failed,
                          worker_host=", ".join(sorted({s.worker_host for s in shards if s.worker_host}))):
            db.session.rollback()
            return
        db.session.commit()
    except sa_exc.IntegrityError:  # another worker merged first
        db.session.rollback()
        return
    log.info("stress job %s %s: %d levels merged from %d shards on hosts %s", group.id, status.value,
             len(positions), len(shards), ", ".join(sorted({s.worker_host or "?" for s in shards})))


def _outcome(group: StressJob, shards: list[StressJob]) -> tuple[JobStatus, str | None]:
    if all(s.status == JobStatus.COMPLETED.value for s in shards):
        return JobStatus.COMPLETED, None
    if group.cancel_requested:
        return JobStatus.CANCELLED, "cancelled; the levels every shard finished are kept"
    ended = sorted((s for s in shards if s.status != JobStatus.COMPLETED.value),
                   key=lambda s: (s.status == JobStatus.CANCELLED.value, s.finished_at or utcnow()))
    first = ended[0]  # failed or interrupted before cancelled: a cancelled shard first means no shard failed
    status = JobStatus(first.status)  # and a shard cancelled by itself cancels the job
    where = f" on host {first.worker_host}" if first.worker_host else ""
    return status, (f"shard {int(first.params['host_shard'][0]) + 1} of {len(shards)} (job {first.id}{where}) "
                    f"{first.status}: {first.error or 'no reason given'}")


def _merge_level(group: StressJob, shards: list[StressJob], levels: list[StressLevel], position: int) -> None:
    parts, gaps_known = [], True
    for shard, level in zip(shards, levels, strict=True):
        rows = db.session.execute(select(*(getattr(StressRequest, name) for name in _REQUEST_FIELDS)).where(
            StressRequest.job_id == shard.id, StressRequest.position == position)
            .order_by(StressRequest.seq)).all()
        gaps = unpack_gaps(level.gap_columns)
        gaps_known = gaps_known and gaps is not None
        origin = (level.metrics or {}).get("origin_wall_s")
        parts.append(LevelRequests(rows=[dict(zip(_REQUEST_FIELDS, row, strict=True)) for row in rows],
                                   gaps_ms=gaps if gaps is not None else np.empty(0),
                                   origin=float(origin) if isinstance(origin, int | float) else None))
    complete = all(level.complete for level in levels) and all(part.origin is not None for part in parts)
    requests, window = merge_shards(parts)
    result = level_from_requests(requests.rows, requests.gaps_ms)
    if window is not None and complete:
        result = over_window(result, requests.rows, window)
    metrics = dict(result["metrics"])
    if not gaps_known:
        metrics["itl_ms"] = dict(_NOT_MERGED)  # a shard's gaps were too many to keep: not computed, not 0
    records = [((level.metrics or {}).get("client") or {}).get("shards", [None])[0] for level in levels]
    client = client_load(records)
    for entry, shard in zip(client["shards"], shards, strict=True):
        entry.update(host=shard.worker_host, job_id=shard.id)
    metrics["client"] = client
    row = StressLevel(job_id=group.id, position=position, concurrency=int(group.params["concurrency"][position]),
                      requests=result["requests"], succeeded=result["succeeded"], failed=result["failed"],
                      duration_s=result["duration_s"], req_per_s=result["req_per_s"],
                      output_tokens_per_s=result["output_tokens_per_s"],
                      total_tokens_per_s=result["total_tokens_per_s"], avg_input_tokens=result["avg_input_tokens"],
                      avg_output_tokens=result["avg_output_tokens"], metrics=metrics,
                      raw_summary={"shards": [level.raw_summary for level in levels]},
                      raw_percentiles=[{"shard": index, "percentiles": level.raw_percentiles}
                                       for index, level in enumerate(levels)],
                      complete=complete, request_columns=pack_columns(requests.rows))
    db.session.add(row)
    db.session.flush()
    store_requests(db.session, group.id, position, requests.rows)
