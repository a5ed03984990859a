"""The one job worker (backend/jobs/) on its own: per-kind limits counted across workers, a process's exit
code to a final status, cancel as SIGTERM then SIGKILL after the grace, the max_job_s limit, and recovery
(re-attach to a live process of the same job, end one whose process has gone).

The stress kind's claims are checked on its real rows. Everything that needs a process uses a second kind
written here, ``ScriptKind``: a real kind on the ``evaluation_jobs`` table (section ``evaluations``) whose
process is a few lines of Python, so that the machinery runs real processes, signals and rows without
evalscope's seconds of start-up. tests/test_stress_*.py run the same machinery with evalscope.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from backend.app import create_app
from backend.config import ConfigError
from backend.db import db
from backend.evaluations.models import EvaluationJob
from backend.jobs import service as job_service
from backend.jobs.kinds import Context, Ending, Launch, Outcome, Refused, Running
from backend.jobs.models import JobStatus, JobWorker, transition
from backend.jobs.process import child_env, process_alive
from backend.jobs.worker import Worker
from backend.stress.kind import StressKind
from backend.stress.models import StressJob
from tests.conftest import TEST_MODELS
from tests.support.stress import group_gone, wait_for

GRACE_S = 1.0

# The process of a ScriptKind job: prints "started", sleeps, prints its word and exits with its code;
# with ignore_term it prints "term <time>" on SIGTERM and carries on (only SIGKILL ends it).
SCRIPT = """
import json, signal, sys, time
params = json.loads(sys.argv[2])
if params.get("ignore_term"):
    signal.signal(signal.SIGTERM, lambda *_: print("term", time.time(), flush=True))
print("started", flush=True)
deadline = time.time() + params.get("sleep", 0)
while time.time() < deadline:
    time.sleep(0.05)
print(params.get("say", "done"), flush=True)
sys.exit(params.get("exit", 0))
"""


class ScriptKind:
    """A kind whose job runs SCRIPT with the job's params; it ends as its exit code says."""

    name = "script"
    model = EvaluationJob
    section = "evaluations"

    def __init__(self, root: Path) -> None:
        self.root = root

    def log_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.log"

    def prepare(self, job: EvaluationJob, ctx: Context) -> Launch:
        if job.params.get("refuse"):
            raise Refused(job.params["refuse"])
        if job.params.get("broken_prepare"):
            raise KeyError("no such setting")
        marker = f"--job={job.id}"
        return Launch(command=[sys.executable, "-c", SCRIPT, marker, json.dumps(job.params)],
                      log_path=self.log_path(job.id), env=child_env({"PYTHONUNBUFFERED": "1"}),
                      state={"marker": marker, "updates": 0}, header=f"# job {job.id}\n", program="the script")

    def process_marker(self, job: EvaluationJob, state: dict[str, Any], ctx: Context) -> str:
        return state["marker"]

    def recover_state(self, job: EvaluationJob, ctx: Context) -> dict[str, Any]:
        return {"marker": f"--job={job.id}", "updates": 0, "recovered": True}

    def update(self, job: EvaluationJob, running: Running, ctx: Context) -> None:
        if job.params.get("broken_update"):
            raise ValueError("a bug in following this job")
        running.state["updates"] += 1
        job.progress = {"updates": running.state["updates"], "recovered": running.state.get("recovered", False)}

    def conclude(self, job: EvaluationJob, running: Running, ctx: Context, ending: Ending) -> Outcome:
        lines = self.log_path(job.id).read_text().split("\n") if self.log_path(job.id).exists() else []
        last = [line for line in lines if line][-1] if any(lines) else ""
        if job.cancel_requested:
            return Outcome(JobStatus.CANCELLED, "cancelled by request")
        if ending.exit_code == 0 or (ending.exit_code is None and last == "done"):
            return Outcome(JobStatus.COMPLETED, values={"failed_requests": 0})
        if ending.exit_code is None:
            return Outcome(JobStatus.INTERRUPTED, ending.interrupted_reason or f"gone after {last!r}")
        return Outcome(JobStatus.FAILED, f"exited with {ending.exit_code} after {last!r}")


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "stress": {"outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "stress-logs"),
                   "max_concurrent": 1, "poll_interval_s": 0.1, "kill_grace_s": GRACE_S, "worker_stale_s": 3},
        "evaluations": {"max_concurrent": 2, "max_job_s": 30},
    })


@pytest.fixture
def kind(tmp_path: Path) -> ScriptKind:
    (tmp_path / "scripts").mkdir()
    return ScriptKind(tmp_path / "scripts")


def add_stress_jobs(count: int) -> list[str]:
    jobs = [StressJob(model_key="sim-fast", target={}, params={}, progress={}) for _ in range(count)]
    db.session.add_all(jobs)
    db.session.commit()
    return [job.id for job in jobs]


def add_script_job(**params: Any) -> str:
    job = EvaluationJob(model_key="script", target={}, params=params, progress={})
    db.session.add(job)
    db.session.commit()
    return job.id


def row(model: Any, job_id: str) -> Any:
    return db.session.get(model, job_id, populate_existing=True)


class Threaded:
    """A Worker with the given kinds in a thread, as tests/support/stress.ThreadWorker runs the default one."""

    def __init__(self, app: Flask, kinds: list[Any], worker_id: str = "threaded") -> None:
        self.worker = Worker(app, worker_id, kinds=kinds, hooks=[])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def threaded(app: Flask, kind: ScriptKind) -> Iterator[Threaded]:
    worker = Threaded(app, [kind])
    yield worker
    worker.close()


def ended(app: Flask, job_id: str, timeout: float = 20) -> EvaluationJob:
    def check() -> EvaluationJob | None:
        with app.app_context():
            job = row(EvaluationJob, job_id)
            if job.is_finished:
                db.session.expunge(job)
                return job
            return None
    return wait_for(check, timeout, f"job {job_id} to end")


# --- claims and limits (no process) ---------------------------------------------------------------


def test_a_kinds_limit_counts_the_jobs_of_every_worker_and_no_other_kind(app: Flask, kind: ScriptKind) -> None:
    """stress.max_concurrent is 1 and evaluations.max_concurrent 2: a second worker gets no stress job while
    the first runs one, each kind is claimed up to its own limit, and a finished job frees its place."""
    stress = StressKind()
    with app.app_context():
        first_id, second_id = add_stress_jobs(2)
        scripts = [add_script_job(), add_script_job(), add_script_job()]
        one, two = (Worker(app, name, kinds=[stress, kind], hooks=[]) for name in ("one", "two"))

        claimed = one.claim(stress)
        assert claimed is not None and claimed.id == first_id  # the oldest first
        assert two.claim(stress) is None  # the limit of 1 counts worker one's job
        assert one.claim(stress) is None
        assert row(StressJob, second_id).status == "queued"

        # The other kind has its own limit, whatever stress jobs run.
        assert [two.claim(kind).id, one.claim(kind).id] == scripts[:2]
        assert two.claim(kind) is None and one.claim(kind) is None
        assert row(EvaluationJob, scripts[2]).status == "queued"

        assert transition(StressJob, first_id, JobStatus.COMPLETED)
        db.session.commit()
        again = two.claim(stress)
        assert again is not None and again.id == second_id
        job = row(StressJob, second_id)
        assert (job.status, job.worker_id, job.started_at is not None) == ("running", "two", True)
        assert row(StressJob, first_id).worker_id == "one"


def test_a_cancel_before_the_claim_wins_and_the_job_is_never_started(app: Flask, kind: ScriptKind) -> None:
    with app.app_context():
        job_id = add_script_job()
        cancelled = job_service.cancel_job(EvaluationJob, job_id)
        assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled before it started")
        assert Worker(app, "one", kinds=[kind], hooks=[]).claim(kind) is None
        assert row(EvaluationJob, job_id).pid is None


# --- running, ending, cancelling ------------------------------------------------------------------


def test_exit_codes_become_the_kinds_statuses_and_a_refusal_fails_the_job(app: Flask, kind: ScriptKind,
                                                                         threaded: Threaded) -> None:
    with app.app_context():
        ok = add_script_job(sleep=0.3)
        bad = add_script_job(say="broken", exit=3)
        refused = add_script_job(refuse="no dataset called x")
    good, failed, never = ended(app, ok), ended(app, bad), ended(app, refused)
    assert (good.status, good.exit_code, good.error, good.failed_requests) == ("completed", 0, None, 0)
    assert good.progress["updates"] >= 1  # followed while it ran (at least the update before the end)
    assert (failed.status, failed.exit_code, failed.error) == ("failed", 3, "exited with 3 after 'broken'")
    assert (never.status, never.error, never.pid) == ("failed", "no dataset called x", None)
    assert kind.log_path(ok).read_text().startswith(f"# job {ok}\nstarted\n")  # the header, then its output
    assert good.finished_at is not None and good.api_key_encrypted is None


def test_cancel_sends_sigterm_then_sigkill_after_the_grace(app: Flask, kind: ScriptKind, threaded: Threaded) -> None:
    with app.app_context():
        job_id = add_script_job(sleep=60, ignore_term=True)
    log = kind.log_path(job_id)
    wait_for(lambda: log.exists() and "started" in log.read_text(), 20, "the script to start")
    with app.app_context():
        pgid = row(EvaluationJob, job_id).pgid
        assert job_service.cancel_job(EvaluationJob, job_id).status == "cancelling"
    job = ended(app, job_id)
    killed_at = time.time()
    terms = [float(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("term ")]
    assert len(terms) == 1  # one SIGTERM, which it ignored
    assert killed_at - terms[0] >= GRACE_S  # the SIGKILL came only after the grace
    assert (job.status, job.error, job.exit_code) == ("cancelled", "cancelled by request", -signal.SIGKILL)
    assert "done" not in log.read_text()
    wait_for(lambda: group_gone(pgid), 10, "the process group to end")


def test_a_job_past_max_job_s_is_stopped_and_failed(app: Flask, kind: ScriptKind) -> None:
    app.config["PEP"]["evaluations"]["max_job_s"] = 0.5
    worker = Threaded(app, [kind])
    try:
        with app.app_context():
            job_id = add_script_job(sleep=60)
        job = ended(app, job_id)
    finally:
        worker.close()
    assert (job.status, job.error) == ("failed", "stopped after evaluations.max_job_s (0.5 s)")
    assert job.exit_code == -signal.SIGTERM  # it did not ignore SIGTERM, so no SIGKILL was needed


def test_a_stopping_worker_ends_its_jobs_as_interrupted(app: Flask, kind: ScriptKind) -> None:
    worker = Threaded(app, [kind])
    with app.app_context():
        job_id = add_script_job(sleep=60)
    log = kind.log_path(job_id)
    wait_for(lambda: log.exists() and "started" in log.read_text(), 20, "the script to start")
    worker.close()
    with app.app_context():
        job = row(EvaluationJob, job_id)
        assert (job.status, job.error) == ("interrupted", "the worker stopped while the job ran")
        assert db.session.get(JobWorker, "threaded") is None  # its heartbeat row went with it


# --- recovery -----------------------------------------------------------------------------------


def test_recovery_re_attaches_to_a_live_process_and_ends_a_job_whose_process_has_gone(
        app: Flask, kind: ScriptKind) -> None:
    """Worker one starts two jobs and dies without a word (its row deleted: no heartbeat). Worker two
    re-attaches to the live one, follows it to its end (exit code unknown: the log says it finished) and
    ends the other, whose process was killed meanwhile, as interrupted."""
    with app.app_context():
        live = add_script_job(sleep=1.5)
        dead = add_script_job(sleep=60)
        one = Worker(app, "one", kinds=[kind], hooks=[])
        one.tick()
        assert {job_id for _, job_id in one.running} == {live, dead}
        for job_id in (live, dead):
            wait_for(lambda j=job_id: "started" in kind.log_path(j).read_text(), 20, "the scripts to start")
        dead_pid = row(EvaluationJob, dead).pid
        pids = {job_id: row(EvaluationJob, job_id).pid for job_id in (live, dead)}
        one.running[("script", dead)].process.kill()  # type: ignore[union-attr]
        one.running[("script", dead)].process.wait()  # type: ignore[union-attr]
        db.session.execute(db.delete(JobWorker).where(JobWorker.id == "one"))
        db.session.commit()

        two = Worker(app, "two", kinds=[kind], hooks=[])
        two.recover()
        assert list(two.running) == [("script", live)]
        assert two.running[("script", live)].process is None  # re-attached by pid, not a child of two
        assert row(EvaluationJob, live).worker_id == "two"
        gone = row(EvaluationJob, dead)
        assert (gone.status, gone.error) == ("interrupted", "gone after 'started'")
        assert not process_alive(dead_pid)

        wait_for(lambda: not process_alive(pids[live]), 20, "the re-attached script to end")
        two.tick()
        job = row(EvaluationJob, live)
        assert (job.status, job.exit_code) == ("completed", None)
        assert job.progress == {"updates": 1, "recovered": True}  # the update before its end, by worker two


def test_a_kind_without_its_limits_in_the_configuration_stops_the_worker_at_once(app: Flask,
                                                                                 kind: ScriptKind) -> None:
    del app.config["PEP"]["evaluations"]["max_job_s"]
    with pytest.raises(ConfigError, match="'evaluations' lacks max_job_s"):
        Worker(app, "one", kinds=[StressKind(), kind], hooks=[])


def test_a_job_whose_kind_fails_does_not_stop_the_others(app: Flask, kind: ScriptKind, threaded: Threaded) -> None:
    """A bug while preparing one job fails that job; a bug while following another leaves it running (logged
    each tick) while the next job is still claimed, followed and ended, and it still ends with its process."""
    with app.app_context():
        broken = add_script_job(broken_prepare=True)
        stuck = add_script_job(broken_update=True, sleep=60)
        fine = add_script_job(sleep=0.3)
    job = ended(app, broken)
    assert (job.status, job.error) == ("failed",
                                       "the worker could not prepare the job (KeyError); see the worker's log")
    assert ended(app, fine).status == "completed"  # claimed once the broken one freed its place (limit 2)
    with app.app_context():
        assert row(EvaluationJob, stuck).status == "running"
        assert job_service.cancel_job(EvaluationJob, stuck).status == "cancelling"
    assert ended(app, stuck).status == "cancelled"  # its process ended, so the job did, updates or not
