"""The stress-test worker: claims queued jobs, runs ``evalscope perf`` for each, follows, cancels, recovers.

``python -m backend.stress.worker`` (``scripts/start.sh`` starts it beside gunicorn), or
``run_worker(app, stop_event)`` in a thread. Each tick (``stress.poll_interval_s``):

1. heartbeat (``stress_workers`` row, and ``heartbeat_at`` of the jobs it follows);
2. follow every job it runs: progress from ``progress.json``, the current level from the level
   directories, a live sample from the level's per-request SQLite file, finished levels ingested as
   they appear; honour ``cancel_requested`` (SIGTERM to the process group, SIGKILL after
   ``stress.kill_grace_s``: evalscope ignores SIGTERM while it sleeps between levels); end the job
   when the process has gone;
3. claim queued jobs while fewer than ``stress.max_concurrent`` run (one conditional UPDATE, safe
   with several workers) and launch them after a quick TCP connection test.

Status when evalscope ends (documented in the README):

- cancel requested -> ``cancelled`` (finished levels kept), unless it had already finished every level;
- exit code 0, every level has results, at least one request succeeded -> ``completed``, with
  ``failed_requests`` counting the failures (evalscope exits 0 even when requests fail);
- exit code 0 but no request succeeded -> ``failed``: "all N requests failed: <first reason>";
- exit code not 0 (or levels missing) -> ``failed`` with the first error evalscope logged or the log tail;
- the process vanished while no worker watched, and its outputs are incomplete -> ``interrupted``.

On start-up, rows that claim to run are reconciled: a live process that really is that job's evalscope
(its ``/proc/<pid>/cmdline`` names the job's output directory) is re-attached; otherwise the job ends
as above from whatever it left (``interrupted`` when cut short), with every finished level ingested.
Ingestion is idempotent: a level already stored (by this worker or by one that died) is never added again,
and the database's unique (job, position) constraint backs that up; a re-attached job whose evalscope ran
every request ends ``completed`` like a watched one (its exit code is unknown; ``progress.json`` says).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
from flask import Flask
from sqlalchemy import func, select

from backend.config import PROJECT_ROOT
from backend.db import db
from backend.results.capacity_search import advance_searches
from backend.results.ingest import pack_columns, read_level_file, store_requests
from backend.results.metrics import level_from_requests
from backend.stress import secrets
from backend.stress.command import CommandError, JobPaths, build_command, job_paths
from backend.stress.datasets import stored_path
from backend.stress.evalscope_args import token_source
from backend.stress.models import (
    ACTIVE,
    JobStatus,
    StressJob,
    StressLevel,
    StressSample,
    StressWorker,
    transition,
    utcnow,
)
from backend.stress.outputs import level_result, log_errors, read_json, read_progress, read_requests, tail
from backend.stress.params import available_tokenizers

log = logging.getLogger("backend.stress.worker")


@dataclass
class Running:
    """A job this worker follows: its process (ours, or re-attached by pid) and what was seen so far."""

    job_id: str
    pid: int
    paths: JobPaths
    levels: list[int]
    counts: list[int]
    process: subprocess.Popen[bytes] | None = None  # None when re-attached after a worker restart
    warmup: int | str = 0  # the job's warm-up setting: a count per level, or "concurrency"
    started: float = field(default_factory=time.monotonic)
    wall_started: float = field(default_factory=time.time)
    ingested: set[int] = field(default_factory=set)
    last_rowid: dict[int, int] = field(default_factory=dict)
    last_done: dict[int, int] = field(default_factory=dict)
    last_sample_at: float = field(default_factory=time.monotonic)
    term_sent_at: float | None = None
    kill_sent: bool = False
    timed_out: bool = False


# --- processes -----------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a re-attached job's parent may not reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_job_process(pid: int, paths: JobPaths) -> bool:
    """The pid is this job's evalscope (guards against a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--outputs-dir={paths.output_dir}".encode() in cmdline


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def connection_problem(url: str, timeout_s: float) -> str | None:
    """None when a TCP connection to the URL's host opens; otherwise a readable reason."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"cannot connect to {parsed.scheme}://{host}:{port}: no answer within {timeout_s:g} s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"cannot connect to {parsed.scheme}://{host}:{port}: {reason}"


def diagnose(target: dict[str, Any], api_key: str | None, timeout_s: float = 5.0) -> str | None:
    """One small request to learn why every request failed (evalscope does not log HTTP errors)."""
    if target.get("provider") != "openai" or not target.get("chat_url"):
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": target["model_id"], "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
    try:
        response = requests.post(target["chat_url"], json=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"
    with response:
        if response.ok:
            return None
        return f"HTTP {response.status_code}: {response.text.strip()[:300]}"


def stored_positions(job_id: str) -> set[int]:
    """The level positions of a job that already have a result row."""
    return set(db.session.scalars(select(StressLevel.position).where(StressLevel.job_id == job_id)))


# --- the worker ----------------------------------------------------------------------------------


class Worker:
    def __init__(self, app: Flask, worker_id: str | None = None) -> None:
        self.app = app
        self.settings: dict[str, Any] = app.config["PEP"]["stress"]
        self.secret_key: str = app.config["PEP"]["server"]["secret_key"]
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.running: dict[str, Running] = {}
        self._last_recovery = 0.0

    # -- loop --

    def run(self, stop: threading.Event) -> None:
        log.info("stress worker %s started", self.id)
        with self.app.app_context():
            self._heartbeat()
            self.recover()
        while not stop.is_set():
            try:
                with self.app.app_context():
                    self.tick()
            except Exception:  # one bad tick must not end the worker
                log.exception("stress worker tick failed")
            stop.wait(float(self.settings["poll_interval_s"]))
        with self.app.app_context():
            self.shutdown()
        log.info("stress worker %s stopped", self.id)

    def tick(self) -> None:
        self._heartbeat()
        for running in list(self.running.values()):
            self.follow(running)
        if time.monotonic() - self._last_recovery > float(self.settings["worker_stale_s"]):
            self.recover()
        advance_searches()  # capacity searches queue their probes as ordinary jobs, claimed below
        while len(self.running) < int(self.settings["max_concurrent"]):
            job = self.claim()
            if job is None:
                break
            self.launch(job)

    def shutdown(self) -> None:
        """A graceful stop ends the jobs it runs (their finished levels kept) rather than orphaning them."""
        for running in self.running.values():
            if process_alive(running.pid):
                signal_group(running.pid, signal.SIGTERM)
        deadline = time.monotonic() + float(self.settings["kill_grace_s"])
        while time.monotonic() < deadline and any(self._alive(r) for r in self.running.values()):
            time.sleep(0.1)
        for running in list(self.running.values()):
            if self._alive(running):
                signal_group(running.pid, signal.SIGKILL)
                if running.process is not None:
                    running.process.wait(timeout=10)
            self.finish(running, exit_code=None, interrupted_reason="the worker stopped while the job ran")
        db.session.execute(db.delete(StressWorker).where(StressWorker.id == self.id))
        db.session.commit()

    def _heartbeat(self) -> None:
        now = utcnow()
        worker = db.session.get(StressWorker, self.id)
        if worker is None:
            db.session.add(StressWorker(id=self.id, pid=os.getpid(), started_at=now, heartbeat_at=now))
        else:
            worker.heartbeat_at = now
        if self.running:
            db.session.execute(db.update(StressJob).where(StressJob.id.in_(list(self.running)))
                               .values(heartbeat_at=now).execution_options(synchronize_session=False))
        db.session.commit()

    # -- claiming and launching --

    def claim(self) -> StressJob | None:
        active = (select(func.count()).select_from(StressJob)
                  .where(StressJob.status.in_([s.value for s in ACTIVE])).scalar_subquery())
        candidate = db.session.scalar(select(StressJob.id).where(StressJob.status == JobStatus.QUEUED.value)
                                      .order_by(StressJob.created_at, StressJob.id).limit(1))
        if candidate is None:
            return None
        claimed = transition(candidate, JobStatus.RUNNING, active < int(self.settings["max_concurrent"]),
                             worker_id=self.id, heartbeat_at=utcnow())
        db.session.commit()
        return db.session.get(StressJob, candidate) if claimed else None

    def _fail(self, job: StressJob, reason: str) -> None:
        log.warning("stress job %s failed: %s", job.id, reason)
        transition(job.id, JobStatus.FAILED, error=reason)
        db.session.commit()

    def _api_key(self, job: StressJob) -> str | None:
        if job.api_key_encrypted:
            return secrets.decrypt(self.secret_key, job.api_key_encrypted)
        env_name = job.target.get("api_key_env")
        return os.environ.get(env_name) if env_name else None

    def launch(self, job: StressJob) -> None:
        paths = job_paths(self.settings, job.id)
        params, target = dict(job.params), dict(job.target)
        try:
            api_key = self._api_key(job)
        except secrets.SecretUnavailable as exc:
            return self._fail(job, str(exc))
        dataset_file = None
        if params.get("dataset_file"):
            dataset_file = stored_path(self.settings, params["dataset_file"], params["dataset"])
            if not dataset_file.is_file():
                return self._fail(job, f"the uploaded dataset {params['dataset_file']} is gone")
        tokenizer_dir = None
        if params.get("tokenizer"):
            tokenizer_dir = available_tokenizers(self.settings).get(params["tokenizer"])
            if tokenizer_dir is None:
                return self._fail(job, f"the tokenizer {params['tokenizer']!r} is no longer configured")
        if target.get("provider") == "openai":
            problem = connection_problem(target["chat_url"], min(float(params["connect_timeout_s"]),
                                                                 float(self.settings["connect_check_timeout_s"])))
            if problem:
                return self._fail(job, problem)
        try:
            command = build_command(job_id=job.id, target=target, params=params, settings=self.settings,
                                    tokenizer_dir=tokenizer_dir, dataset_file=dataset_file)
        except CommandError as exc:
            return self._fail(job, str(exc))

        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.logs_root.mkdir(parents=True, exist_ok=True)
        if params["dataset"] == "prompt":
            paths.prompt_path.write_text(params["prompt"], encoding="utf-8")
            if params.get("system"):
                paths.system_path.write_text(params["system"], encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if key != secrets.ENV_VAR}
        env.update(PYTHONUNBUFFERED="1", EVALSCOPE_HEARTBEAT_INTERVAL=str(int(self.settings["log_progress_s"])))
        if api_key:
            env[secrets.ENV_VAR] = api_key
        with paths.log_path.open("ab") as log_file:
            log_file.write(("$ " + shlex.join(command[1:]) + "\n").encode())
            checked = "the connection test passed; " if target.get("provider") == "openai" else ""
            log_file.write(f"# {checked}starting evalscope (loading it takes a few seconds)\n".encode())
            log_file.flush()
            try:
                process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                           stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                return self._fail(job, f"cannot start evalscope: {exc}")
        running = Running(job_id=job.id, pid=process.pid, paths=paths, levels=list(params["concurrency"]),
                          counts=list(params["requests"]), process=process, warmup=params.get("warmup", 0))
        self.running[job.id] = running
        db.session.execute(db.update(StressJob).where(StressJob.id == job.id)
                           .values(pid=process.pid, pgid=process.pid)
                           .execution_options(synchronize_session=False))
        db.session.commit()
        log.info("stress job %s started: pid %d", job.id, process.pid)
        return None

    # -- following --

    def _alive(self, running: Running) -> bool:
        if running.process is not None:
            return running.process.poll() is None
        return process_alive(running.pid)

    def follow(self, running: Running) -> None:
        job = db.session.get(StressJob, running.job_id)
        if job is None:  # deleted under us (the API refuses that while it runs, but be safe)
            signal_group(running.pid, signal.SIGKILL)
            self.running.pop(running.job_id, None)
            return
        alive = self._alive(running)
        if alive and (job.cancel_requested or job.status == JobStatus.CANCELLING.value):
            self._stop(running)
        elapsed = time.monotonic() - running.started
        if alive and elapsed > float(self.settings["max_job_s"]):
            running.timed_out = True
            self._stop(running)
        self._record_progress(job, running)
        self._ingest_levels(running, final=False)
        db.session.commit()
        if not alive:
            code = running.process.returncode if running.process is not None else None
            self.finish(running, exit_code=code)

    def _stop(self, running: Running) -> None:
        now = time.monotonic()
        if running.term_sent_at is None:
            log.info("stress job %s: SIGTERM to process group %d", running.job_id, running.pid)
            signal_group(running.pid, signal.SIGTERM)
            running.term_sent_at = now
        elif not running.kill_sent and now - running.term_sent_at >= float(self.settings["kill_grace_s"]):
            log.info("stress job %s: SIGKILL to process group %d", running.job_id, running.pid)
            signal_group(running.pid, signal.SIGKILL)
            running.kill_sent = True

    def _current_level(self, running: Running) -> int | None:
        """Index of the level running now: the last of the sweep's level directories that exists."""
        current = None
        for index, (level, count) in enumerate(zip(running.levels, running.counts, strict=True)):
            if running.paths.level_dir(level, count).is_dir():
                current = index
        return current

    def _record_progress(self, job: StressJob, running: Running) -> None:
        """Progress and a live sample, from progress.json and the current level's per-request database.

        evalscope rewrites progress.json at most once a second and only when a request ends, so the last
        requests of a level would stay invisible through the pause between levels; the per-request
        database is committed after every request (``--db-commit-interval=1``) and counts them at once.
        """
        progress = read_progress(running.paths.progress_path)
        index = self._current_level(running)
        total = sum(running.counts)
        processed = progress.processed if progress else 0
        stats = None
        if index is not None:
            level, count = running.levels[index], running.counts[index]
            stats = read_requests(running.paths.level_dir(level, count) / "benchmark_data.db",
                                  running.last_rowid.get(index, 0))
            if stats is not None:
                processed = max(processed, sum(running.counts[:index]) + stats.done)
        data = {"percent": round(100.0 * processed / total, 2) if total else 0.0,
                "level": (index + 1) if index is not None else 0, "levels": len(running.levels),
                "concurrency": running.levels[index] if index is not None else None,
                "processed": processed, "total": total, **self._phase(running, index, stats)}
        if data != job.progress:
            job.progress = data
        if index is None or stats is None or stats.done == running.last_done.get(index, -1):
            return
        now = time.monotonic()
        window = max(now - running.last_sample_at, 1e-3)
        db.session.add(StressSample(job_id=job.id, t=round(time.time() - running.wall_started, 3),
                                    level=running.levels[index], processed=processed,
                                    ok=stats.ok, errors=stats.errors, ttft_ms=stats.window_ttft_ms,
                                    latency_s=stats.window_latency_s,
                                    output_tokens_per_s=round(stats.window_output_tokens / window, 3)))
        running.last_rowid[index] = stats.last_rowid
        running.last_done[index] = stats.done
        running.last_sample_at = now

    @staticmethod
    def _phase(running: Running, index: int | None, stats: Any) -> dict[str, Any]:
        """What evalscope is doing, for the page: ``starting`` (loading, before its first level),
        ``warmup`` (the level's warm-up requests, which are never counted, with how many),
        ``first`` (no request of the level has ended yet), ``running``, ``pause`` (between levels)
        and ``finishing`` (after the last level, writing its reports)."""
        if index is None:
            return {"phase": "starting"}
        level, count = running.levels[index], running.counts[index]
        if (running.paths.level_dir(level, count) / "benchmark_summary.json").exists():
            return {"phase": "pause" if index < len(running.levels) - 1 else "finishing"}
        if stats is not None and stats.done > 0:
            return {"phase": "running"}
        warmup = level if running.warmup == "concurrency" else int(running.warmup or 0)
        return {"phase": "warmup", "warmup": warmup} if warmup else {"phase": "first"}

    def _ingest_levels(self, running: Running, *, final: bool) -> None:
        """Result rows for levels whose summary and percentile files are both written, each level once,
        with the level's per-request rows in the same transaction. When the job has ended (``final``),
        a level cut short (no summary) gets a row computed from the requests it finished, marked partial.

        ``running.ingested`` is what this worker knows to be stored; before a level is added, the
        database is asked too (a worker that re-attached, or one that died after its commit), and the
        unique (job, position) constraint refuses whatever slips past both.
        """
        stored: set[int] | None = None
        for index, (level, count) in enumerate(zip(running.levels, running.counts, strict=True)):
            if index in running.ingested:
                continue
            directory = running.paths.level_dir(level, count)
            summary = read_json(directory / "benchmark_summary.json")
            percentiles = read_json(directory / "benchmark_percentile.json")
            requests = None
            if isinstance(summary, dict) and (percentiles is not None or final):
                result, complete = level_result(summary, percentiles if isinstance(percentiles, list) else None), True
            elif final and (requests := read_level_file(directory / "benchmark_data.db")) is not None \
                    and requests.rows:
                result, complete = level_from_requests(requests.rows, requests.gaps_ms), False
            else:
                continue
            if stored is None:
                stored = stored_positions(running.job_id)
            if index in stored:
                running.ingested.add(index)
                continue
            row = StressLevel(job_id=running.job_id, position=index, concurrency=level,
                              requests=result["requests"] or count, succeeded=result["succeeded"],
                              failed=result["failed"], duration_s=result["duration_s"],
                              req_per_s=result["req_per_s"],
                              output_tokens_per_s=result["output_tokens_per_s"],
                              total_tokens_per_s=result["total_tokens_per_s"],
                              avg_input_tokens=result["avg_input_tokens"],
                              avg_output_tokens=result["avg_output_tokens"], metrics=result["metrics"],
                              raw_summary=summary if complete else {},
                              raw_percentiles=(percentiles or []) if complete else [], complete=complete)
            db.session.add(row)
            if requests is None:
                requests = read_level_file(directory / "benchmark_data.db")
            if requests is not None:
                row.request_columns = pack_columns(requests.rows)
                store_requests(db.session, running.job_id, index, requests.rows)
            running.ingested.add(index)

    # -- ending --

    def finish(self, running: Running, exit_code: int | None, interrupted_reason: str | None = None) -> None:
        self.running.pop(running.job_id, None)
        job = db.session.get(StressJob, running.job_id)
        if job is None:
            return
        self._record_progress(job, running)
        self._ingest_levels(running, final=True)
        db.session.flush()
        levels = db.session.scalars(select(StressLevel).where(StressLevel.job_id == job.id)).all()
        succeeded = sum(level.succeeded for level in levels)
        failed = sum(level.failed for level in levels)
        requested = sum(level.requests for level in levels)
        all_levels = {level.position for level in levels if level.complete} == set(range(len(running.levels)))
        progress = read_progress(running.paths.progress_path)
        ran_to_end = exit_code == 0 or (exit_code is None and progress is not None and progress.status == "completed"
                                        and interrupted_reason is None)
        values: dict[str, Any] = {"failed_requests": failed, "exit_code": exit_code}
        source = self._token_source(running)
        if source:
            values["token_source"] = source
        if running.timed_out:
            status, error = JobStatus.FAILED, f"stopped after stress.max_job_s ({self.settings['max_job_s']} s)"
        elif job.cancel_requested and not (ran_to_end and all_levels):
            status, error = JobStatus.CANCELLED, "cancelled by request"
        elif ran_to_end and all_levels:
            if succeeded == 0:
                status, error = JobStatus.FAILED, f"all {requested} requests failed: {self._failure_reason(job)}"
            else:
                status, error = JobStatus.COMPLETED, None
        elif exit_code is None:
            status = JobStatus.INTERRUPTED
            error = interrupted_reason or "the evalscope process ended while no worker was watching it"
        elif ran_to_end:
            stored = {level.position for level in levels if level.complete}
            missing = [str(level) for i, level in enumerate(running.levels) if i not in stored]
            status, error = JobStatus.FAILED, f"evalscope ended without results for concurrency {', '.join(missing)}"
        else:
            status, error = JobStatus.FAILED, f"evalscope exited with code {exit_code}: {self._log_reason(running)}"
        job_progress = dict(job.progress or {})
        if status is JobStatus.COMPLETED:
            job_progress.update(percent=100.0, processed=job_progress.get("total"))
        values["progress"] = job_progress
        if not transition(job.id, status, error=error, **values):
            db.session.rollback()
            return
        db.session.commit()
        log.info("stress job %s %s%s", job.id, status.value, f": {error}" if error else "")

    @staticmethod
    def _token_source(running: Running) -> str | None:
        try:
            return token_source(running.paths.output_dir)
        except (OSError, ValueError):  # no outputs yet: keep what the job says
            return None

    def _failure_reason(self, job: StressJob) -> str:
        paths = job_paths(self.settings, job.id)
        logged = log_errors(paths.run_dir / "benchmark.log") or log_errors(paths.log_path)
        if logged:
            return logged[0]
        try:
            api_key = self._api_key(job)
        except secrets.SecretUnavailable:
            api_key = None
        return diagnose(dict(job.target), api_key) or "evalscope reported no reason"

    def _log_reason(self, running: Running) -> str:
        logged = log_errors(running.paths.log_path)
        if logged:
            return logged[-1]
        return " | ".join(tail(running.paths.log_path, 8))[-1500:] or "no output"

    # -- recovery --

    def recover(self) -> None:
        """Re-attach to live evalscope processes of jobs nobody follows; end the others from their outputs."""
        self._last_recovery = time.monotonic()
        stale = utcnow() - timedelta(seconds=float(self.settings["worker_stale_s"]))
        live_workers = set(db.session.scalars(select(StressWorker.id).where(StressWorker.heartbeat_at >= stale)))
        live_workers.discard(self.id)
        jobs = db.session.scalars(select(StressJob).where(StressJob.status.in_([s.value for s in ACTIVE]))).all()
        for job in jobs:
            if job.id in self.running or (job.worker_id in live_workers and job.worker_id != self.id):
                continue
            params = dict(job.params)
            paths = job_paths(self.settings, job.id)
            running = Running(job_id=job.id, pid=job.pid or 0, paths=paths, levels=list(params["concurrency"]),
                              counts=list(params["requests"]), ingested=stored_positions(job.id),
                              warmup=params.get("warmup", 0))
            if job.started_at is not None:
                started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=utcnow().tzinfo)
                running.wall_started = started.timestamp()
                running.started = time.monotonic() - (time.time() - running.wall_started)
            if job.pid and process_alive(job.pid) and is_job_process(job.pid, paths):
                log.info("stress job %s: re-attached to pid %d", job.id, job.pid)
                job.worker_id = self.id
                job.heartbeat_at = utcnow()
                db.session.commit()
                self.running[job.id] = running
                continue
            log.info("stress job %s: its process is gone; ending it from its outputs", job.id)
            self.finish(running, exit_code=None)


def run_worker(app: Flask, stop_event: threading.Event, worker_id: str | None = None) -> None:
    Worker(app, worker_id).run(stop_event)


def main() -> int:
    from backend.app import create_app

    app = create_app()
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("stress worker: signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.getLogger("backend").info("stress worker pid %d", os.getpid())
    run_worker(app, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
