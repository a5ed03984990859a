"""The one worker: claims queued jobs of every registered kind, runs each job's process, follows, cancels,
times out, finishes and recovers them. What differs between kinds is theirs (``backend/jobs/kinds.py``).

``python -m backend.jobs.worker`` (``scripts/start.sh``'s supervisor starts it beside gunicorn), or
``run_worker(app, stop_event)`` in a thread. Each tick (``stress.poll_interval_s``):

1. heartbeat: the worker's ``stress_workers`` row, and ``heartbeat_at`` of every job it follows;
2. follow every job it runs: ``Kind.update`` (progress, live rows, results so far); a cancel request
   (``cancel_requested`` or status ``cancelling``) or a run longer than ``<section>.max_job_s`` sends SIGTERM
   to the job's process group, and SIGKILL ``stress.kill_grace_s`` later if it still lives; a process that
   has gone ends the job (``Kind.conclude`` decides the status; a timed-out job is ``failed``);
3. every ``stress.worker_stale_s``, recovery (below);
4. the tick hooks (``tick_hooks``: capacity searches queue their probe jobs);
5. per kind, claim queued jobs while this worker runs fewer than its capacity for the kind
   (``worker.capacity``, by default ``<section>.max_concurrent``) and fewer than ``<section>.max_concurrent``
   of that kind run on every worker together (counted in the same conditional UPDATE that claims,
   ``transition``), taking only jobs whose required labels the worker has (``worker.labels``), and launch each;
6. the pause until the next tick, cut short on PostgreSQL by a NOTIFY that a job was queued or a cancel asked
   for (``backend/jobs/wakeup.py``).

Leases: each heartbeat renews the worker's lease for ``stress.worker_stale_s``. Recovery (at start-up and
every ``stress.worker_stale_s``) looks at the rows that claim to run (``running`` or ``cancelling``) whose
worker's lease has expired. On this worker's own host (``worker.host``) such a job is re-attached when its
pid lives and really is that job's process (``Kind.process_marker`` is in its command line), and otherwise
ended from whatever it left (``Kind.conclude`` with an unknown exit code). On another host a pid means
nothing and the files are out of reach: the job is ended as interrupted, with what it finished (levels,
cells) kept, and never run again; should its worker come back, it finds the job ended and kills its process.
A worker that is stopped (SIGTERM) ends its jobs itself: SIGTERM to each group, SIGKILL after the grace.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, null, select, text

from backend.config import ConfigError
from backend.db import db, is_postgresql
from backend.jobs import logs, storage
from backend.jobs.kinds import Context, Ending, Kind, Outcome, Refused, Running, registered_kinds, tick_hooks
from backend.jobs.models import ACTIVE, JobStatus, JobWorker, transition, utcnow
from backend.jobs.placement import can_take, check_worker_config
from backend.jobs.process import is_job_process, process_alive, signal_group, start_process
from backend.jobs.wakeup import Wakeup

log = logging.getLogger("backend.jobs.worker")

LOOP_SECTION = "stress"  # poll_interval_s, worker_stale_s and kill_grace_s live here (they did first)
STOPPING_POLL_S = 0.1
CANDIDATES = 500  # queued jobs of a kind looked at per claim for one whose labels this worker has
FORGET_WORKERS_AFTER = timedelta(days=1)  # a worker row whose lease expired this long ago is dropped


def claim_lock_key(kind: str) -> int:
    """The PostgreSQL advisory-lock key under which jobs of ``kind`` are claimed (a stable signed 64-bit
    number from the kind's name)."""
    return int.from_bytes(hashlib.blake2b(f"pep-claim:{kind}".encode(), digest_size=8).digest(), "big",
                          signed=True)

class Worker:
    def __init__(self, app: Flask, worker_id: str | None = None, kinds: Sequence[Kind] | None = None,
                 hooks: Sequence[Callable[[], None]] | None = None) -> None:
        self.app = app
        self.config: dict[str, Any] = app.config["PEP"]
        self.settings: dict[str, Any] = self.config[LOOP_SECTION]
        self.kinds: list[Kind] = list(registered_kinds() if kinds is None else kinds)
        self.hooks: list[Callable[[], None]] = list(tick_hooks() if hooks is None else hooks)
        for kind in self.kinds:
            missing = [key for key in ("max_concurrent", "max_job_s") if key not in self.config.get(kind.section, {})]
            if missing:
                raise ConfigError(f"the {kind.name} jobs' section {kind.section!r} lacks {', '.join(missing)}")
        storage.configured_store(self.config)  # a bad storage.artifacts fails here, not at a job's end
        try:
            placement = check_worker_config(self.config, {kind.name: kind.section for kind in self.kinds})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.host: str = placement["host"]
        self.labels: list[str] = placement["labels"]
        self.capacity: dict[str, int] = placement["capacity"]
        self.id = worker_id or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.wakeup = Wakeup()
        self.running: dict[tuple[str, str], Running] = {}  # (kind name, job id)
        self._last_recovery = 0.0

    def context(self, kind: Kind) -> Context:
        return Context(config=self.config, settings=self.config[kind.section], worker_id=self.id)

    def running_of(self, kind: Kind) -> list[Running]:
        return [running for (name, _), running in self.running.items() if name == kind.name]

    # -- loop --

    def run(self, stop: threading.Event) -> None:
        log.info("worker %s started on host %s: %s%s", self.id, self.host,
                 ", ".join(f"{kind.name} x{self.capacity[kind.name]}" for kind in self.kinds),
                 f"; labels {', '.join(self.labels)}" if self.labels else "")
        started = False
        try:
            while not stop.is_set():
                try:
                    with self.app.app_context():
                        if not started:  # first heartbeat and recovery; tried again next tick when they fail
                            self._heartbeat()
                            self.recover()
                            self.wakeup.open()
                            started = True
                        self.tick()
                except Exception:  # one bad tick (a database locked past its busy timeout) must not end the worker
                    # (leaving the app context removed the session, rolling back what it held)
                    log.exception("worker tick failed" if started else "worker start-up failed; trying again")
                self.wakeup.wait(stop, self._pause())
        finally:
            self.wakeup.close()
        with self.app.app_context():
            self.shutdown()
        log.info("worker %s stopped", self.id)

    def tick(self) -> None:
        self._heartbeat()
        for running in list(self.running.values()):
            try:
                self.follow(running)
            except Exception:  # one job (or one kind) in trouble must not stop the others
                db.session.rollback()
                log.exception("%s job %s: following it failed", running.kind.name, running.job_id)
        if time.monotonic() - self._last_recovery > float(self.settings["worker_stale_s"]):
            self.recover()
        for hook in self.hooks:
            try:
                hook()
            except Exception:  # a broken hook must not stop the claims below
                db.session.rollback()
                log.exception("worker tick hook %s failed", getattr(hook, "__name__", hook))
        for kind in self.kinds:
            try:
                self._claim_and_launch(kind)
            except Exception:  # nor may one kind's claims stop the next kind's
                db.session.rollback()
                log.exception("%s jobs: claiming or launching failed", kind.name)

    def _pause(self) -> float:
        """Until the next tick: the poll interval, or a tenth of a second while a job is being stopped, so that
        a cancelled job ends as soon as its process does rather than a poll later, or while its kind asks
        (``kind.quick``: a host shard waiting for a level's start that this worker relays)."""
        poll = float(self.settings["poll_interval_s"])
        stopping = any(running.term_sent_at is not None or _quick(running) for running in self.running.values())
        return min(poll, STOPPING_POLL_S) if stopping else poll

    def _claim_and_launch(self, kind: Kind) -> None:
        while len(self.running_of(kind)) < self.capacity[kind.name]:
            job = self.claim(kind)
            if job is None:
                break
            self.launch(kind, job)

    def shutdown(self) -> None:
        """A graceful stop ends the jobs it runs (what they finished kept) rather than orphaning them."""
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
        db.session.execute(db.delete(JobWorker).where(JobWorker.id == self.id))
        db.session.commit()

    def _heartbeat(self) -> None:
        now = utcnow()
        lease_until = now + timedelta(seconds=float(self.settings["worker_stale_s"]))
        worker = db.session.get(JobWorker, self.id)
        if worker is None:
            db.session.add(JobWorker(id=self.id, pid=os.getpid(), started_at=now, heartbeat_at=now, host=self.host,
                                     labels=self.labels, capacity=self.capacity, lease_until=lease_until))
        else:
            worker.heartbeat_at, worker.lease_until = now, lease_until
        for kind in self.kinds:
            ids = [running.job_id for running in self.running_of(kind)]
            if ids:
                db.session.execute(db.update(kind.model).where(kind.model.id.in_(ids))
                                   .values(heartbeat_at=now).execution_options(synchronize_session=False))
        db.session.commit()

    # -- claiming and launching --

    def claim(self, kind: Kind) -> Any | None:
        """The oldest queued job of ``kind`` whose labels this worker has, moved to ``running`` for this
        worker, if fewer than the kind's ``max_concurrent`` run (on every worker: the count is part of the
        same UPDATE); None otherwise."""
        model = kind.model
        runnable = _runnable(kind)
        limit = int(self.context(kind).settings["max_concurrent"])
        active = (select(func.count()).select_from(model)
                  .where(model.status.in_([s.value for s in ACTIVE]), *runnable).scalar_subquery())
        postgresql = is_postgresql()
        if postgresql:
            # SQLite runs one writer at a time, so the count in the UPDATE below is exact there. PostgreSQL
            # runs claims side by side: each worker's count would miss the others' uncommitted claims. A lock
            # per kind, held to this transaction's commit, makes the count and the claim one step; the row
            # itself is taken FOR UPDATE SKIP LOCKED, so a row a web host is cancelling is passed over.
            db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": claim_lock_key(kind.name)})
        group = kind.group() if hasattr(kind, "group") else None  # one job of a group a worker (host shards)
        held = set() if group is None else set(db.session.scalars(select(group).where(
            model.worker_id == self.id, model.status.in_([s.value for s in ACTIVE]), group.is_not(None))))
        queued = db.session.execute(select(model.id, model.labels, group if group is not None else null())
                                    .where(model.status == JobStatus.QUEUED.value, *runnable)
                                    .order_by(model.created_at, model.id).limit(CANDIDATES)).all()
        candidate = None
        for job_id, required, of_group in queued:
            if not can_take(self.labels, required) or (of_group is not None and of_group in held):
                continue
            if postgresql and db.session.scalar(
                    select(model.id).where(model.id == job_id, model.status == JobStatus.QUEUED.value)
                    .with_for_update(skip_locked=True)) is None:
                continue  # a web host is cancelling it right now
            candidate = job_id
            break
        if candidate is None:
            db.session.commit()  # ends the transaction (and the claim lock) on PostgreSQL
            return None
        claimed = transition(model, candidate, JobStatus.RUNNING, active < limit, worker_id=self.id,
                             worker_host=self.host, heartbeat_at=utcnow())
        db.session.commit()
        return db.session.get(model, candidate) if claimed else None

    def _fail(self, kind: Kind, job: Any, reason: str) -> None:
        log.warning("%s job %s failed: %s", kind.name, job.id, reason)
        transition(kind.model, job.id, JobStatus.FAILED, error=reason)
        db.session.commit()

    def launch(self, kind: Kind, job: Any) -> None:
        try:
            launch = kind.prepare(job, self.context(kind))
        except Refused as exc:
            return self._fail(kind, job, str(exc))
        except Exception as exc:  # a bug in the kind: the job fails rather than staying "running" unwatched
            db.session.rollback()
            log.exception("%s job %s: preparing it failed", kind.name, job.id)
            return self._fail(kind, job, f"the worker could not prepare the job ({type(exc).__name__}); "
                                         "see the worker's log")
        try:
            process = start_process(launch.command, log_path=launch.log_path, env=launch.env, cwd=launch.cwd,
                                    header=launch.header)
        except OSError as exc:
            return self._fail(kind, job, f"cannot start {launch.program}: {exc}")
        self.running[(kind.name, job.id)] = Running(kind=kind, job_id=job.id, pid=process.pid, state=launch.state,
                                                    process=process)
        db.session.execute(db.update(kind.model).where(kind.model.id == job.id)
                           .values(pid=process.pid, pgid=process.pid)
                           .execution_options(synchronize_session=False))
        db.session.commit()
        log.info("%s job %s started: pid %d", kind.name, job.id, process.pid)
        return None

    # -- following --

    @staticmethod
    def _alive(running: Running) -> bool:
        if running.process is not None:
            return running.process.poll() is None
        return process_alive(running.pid)

    def follow(self, running: Running) -> None:
        kind = running.kind
        job = db.session.get(kind.model, running.job_id)
        if job is not None and not job.is_finished and job.worker_id != self.id:
            # Re-attached by another worker of this host while this one's lease had expired (it was stopped):
            # that worker follows the process now; this one lets it go, untouched.
            log.warning("%s job %s: taken over by worker %s while this one's lease had expired; letting it go",
                        kind.name, job.id, job.worker_id)
            self.running.pop((kind.name, running.job_id), None)
            return
        if job is None or job.is_finished:
            # Deleted under us (the API refuses that while it runs, but be safe), or ended by a worker of another
            # host while this one's lease had expired (cut off from the database): the job must not run twice,
            # so its process goes.
            if job is not None:
                log.warning("%s job %s: ended (%s) by another worker while this one's lease had expired; killing "
                            "its process group %d", kind.name, job.id, job.status, running.pid)
            signal_group(running.pid, signal.SIGKILL)
            self.running.pop((kind.name, running.job_id), None)
            return
        alive = self._alive(running)
        if alive and (job.cancel_requested or job.status == JobStatus.CANCELLING.value):
            self._stop(running)
        if alive and time.monotonic() - running.started > float(self.context(kind).settings["max_job_s"]):
            running.timed_out = True
            self._stop(running)
        try:
            kind.update(job, running, self.context(kind))
            db.session.commit()
        except Exception:  # a bug in the kind: logged each tick, and the job still ends when its process does
            db.session.rollback()
            log.exception("%s job %s: following it failed", kind.name, running.job_id)
        if alive:
            self._keep_log(running, final=False)
        if not alive:
            code = running.process.returncode if running.process is not None else None
            self.finish(running, exit_code=code)

    def _stop(self, running: Running) -> None:
        now = time.monotonic()
        name = running.kind.name
        if running.term_sent_at is None:
            log.info("%s job %s: SIGTERM to process group %d", name, running.job_id, running.pid)
            signal_group(running.pid, signal.SIGTERM)
            running.term_sent_at = now
        elif not running.kill_sent and now - running.term_sent_at >= float(self.settings["kill_grace_s"]):
            log.info("%s job %s: SIGKILL to process group %d", name, running.job_id, running.pid)
            signal_group(running.pid, signal.SIGKILL)
            running.kill_sent = True

    # -- ending --

    def finish(self, running: Running, exit_code: int | None, interrupted_reason: str | None = None) -> None:
        kind = running.kind
        self.running.pop((kind.name, running.job_id), None)
        job = db.session.get(kind.model, running.job_id)
        if job is None:
            return
        ctx = self.context(kind)
        self._keep_log(running, final=True)
        self._store_artifacts(running)  # before the status: a finished job's files are where the pages look
        ending = Ending(exit_code=exit_code, interrupted_reason=interrupted_reason, timed_out=running.timed_out)
        try:
            outcome = kind.conclude(job, running, ctx, ending)
        except Exception as exc:  # a bug in the kind: the job ends failed rather than never
            db.session.rollback()
            log.exception("%s job %s: ending it failed", kind.name, running.job_id)
            outcome = Outcome(JobStatus.FAILED, f"the worker could not end the job ({type(exc).__name__}); "
                                                "see the worker's log")
        status, error = outcome.status, outcome.error
        if running.timed_out:
            status, error = JobStatus.FAILED, f"stopped after {kind.section}.max_job_s ({ctx.settings['max_job_s']} s)"
        if not transition(kind.model, job.id, status, error=error, **{"exit_code": exit_code, **outcome.values}):
            db.session.rollback()
            return
        db.session.commit()
        log.info("%s job %s %s%s", kind.name, job.id, status.value, f": {error}" if error else "")

    # -- what the pages need from the worker's disk: the log (each tick) and the artefacts (at the end) --

    def _keep_log(self, running: Running, *, final: bool) -> None:
        """The job's log file, what it gained since the last tick, appended to the database (jobs/logs.py)."""
        kind = running.kind
        log_path = getattr(kind, "log_path", None)
        if log_path is None:
            return
        try:
            job = db.session.get(kind.model, running.job_id)
            if job is not None:
                logs.follow_log(kind.name, job.id, log_path(job, self.context(kind)),
                                int(self.config["storage"].get("log_max_bytes") or logs.DEFAULT_MAX_BYTES),
                                final=final)
                db.session.commit()
        except Exception:  # the log is for reading; its trouble must not stop the job being followed
            db.session.rollback()
            log.exception("%s job %s: keeping its log failed", kind.name, running.job_id)

    def _store_artifacts(self, running: Running) -> None:
        """A finished job's files copied to ``storage.artifacts`` (jobs/storage.py), when that is set."""
        kind = running.kind
        artifact_files = getattr(kind, "artifact_files", None)
        if artifact_files is None or storage.configured_store(self.config) is None:
            return
        try:
            job = db.session.get(kind.model, running.job_id)
            if job is not None:
                storage.store_artifacts(kind.name, job.id, artifact_files(job, self.context(kind)), self.config)
        except Exception:  # the store unreachable: the files stay on this disk and are served from there
            db.session.rollback()
            log.exception("%s job %s: storing its artefacts failed", kind.name, running.job_id)

    # -- recovery --

    def live_workers(self) -> dict[str, JobWorker]:
        """The other workers whose lease holds (a row from before leases: a heartbeat within the stale time)."""
        now = utcnow()
        stale = now - timedelta(seconds=float(self.settings["worker_stale_s"]))
        rows = db.session.scalars(select(JobWorker).where(JobWorker.id != self.id)).all()
        return {row.id: row for row in rows
                if row.lease_valid(now) or (row.lease_until is None and row.heartbeat_at >= stale)}

    def recover(self) -> None:
        """Re-attach to live processes of this host's jobs nobody follows and end the others from their
        outputs; end as interrupted the jobs of other hosts' workers whose lease has expired."""
        self._last_recovery = time.monotonic()
        live_workers = self.live_workers()
        for kind in self.kinds:
            ctx = self.context(kind)
            model = kind.model
            jobs = db.session.scalars(select(model).where(model.status.in_([s.value for s in ACTIVE]),
                                                          *_runnable(kind))).all()
            for job in jobs:
                if (kind.name, job.id) in self.running or job.worker_id in live_workers:
                    continue
                if job.worker_host not in (None, self.host):
                    self._interrupt_elsewhere(kind, job)
                    continue
                running = Running(kind=kind, job_id=job.id, pid=job.pid or 0, state=kind.recover_state(job, ctx))
                if job.started_at is not None:
                    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(
                        tzinfo=utcnow().tzinfo)
                    running.wall_started = started.timestamp()
                    running.started = time.monotonic() - (time.time() - running.wall_started)
                if job.pid and process_alive(job.pid) and is_job_process(job.pid,
                                                                         kind.process_marker(job, running.state, ctx)):
                    log.info("%s job %s: re-attached to pid %d", kind.name, job.id, job.pid)
                    job.worker_id = self.id
                    job.heartbeat_at = utcnow()
                    db.session.commit()
                    self.running[(kind.name, job.id)] = running
                    continue
                log.info("%s job %s: its process is gone; ending it from its outputs", kind.name, job.id)
                self.finish(running, exit_code=None)
        db.session.execute(db.delete(JobWorker).where(JobWorker.lease_until < utcnow() - FORGET_WORKERS_AFTER))
        db.session.commit()

    def _interrupt_elsewhere(self, kind: Kind, job: Any) -> None:
        """A job of another host whose worker's lease expired: ended as interrupted, what it stored kept."""
        heartbeat = job.heartbeat_at.isoformat(timespec="seconds") if job.heartbeat_at else "never"
        reason = (f"its worker {job.worker_id} on host {job.worker_host} stopped renewing its lease (last "
                  f"heartbeat {heartbeat}); ended by worker {self.id}, what it had finished is kept")
        abandon = getattr(kind, "abandon", None)
        values = abandon(job, self.context(kind)) if abandon is not None else {}
        if transition(kind.model, job.id, JobStatus.INTERRUPTED, kind.model.worker_id == job.worker_id,
                      error=reason, **values):
            db.session.commit()
            log.warning("%s job %s interrupted: %s", kind.name, job.id, reason)
        else:  # its worker came back, or another live worker ended it first
            db.session.rollback()


def _runnable(kind: Kind) -> list[Any]:
    """The condition a row of ``kind`` meets when a worker runs it (``kind.runnable``; every row if none)."""
    runnable = getattr(kind, "runnable", None)
    return [] if runnable is None else [runnable()]


def _quick(running: Running) -> bool:
    """The kind asks for quick ticks while this job waits on something the worker relays (``kind.quick``)."""
    quick = getattr(running.kind, "quick", None)
    return bool(quick(running)) if quick is not None else False


def run_worker(app: Flask, stop_event: threading.Event, worker_id: str | None = None) -> None:
    Worker(app, worker_id).run(stop_event)


def main() -> int:
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("worker: signal %d, stopping", signum)
        stop.set()

    # First, so that a stop asked for while the app loads (a few seconds) ends the worker cleanly.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    from backend.app import create_app

    app = create_app()
    logging.getLogger("backend").info("worker pid %d", os.getpid())
    run_worker(app, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
