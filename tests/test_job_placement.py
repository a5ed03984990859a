"""Jobs across hosts on one database (backend/jobs/placement.py, backend/jobs/worker.py): labels a job
requires, each worker's capacity per kind, leases, and what a worker does with another host's job whose
worker's lease expired: it ends it interrupted with what it stored kept, never touches a pid of that host,
and the worker that comes back kills its process instead of running the job twice.

Two "hosts" here are two apps on the same database whose ``worker.host`` differs, as two machines would
be; the processes are real (ScriptKind of tests/test_jobs_worker.py), the kinds' rows are real.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from backend.app import create_app
from backend.config import ConfigError
from backend.db import db
from backend.evaluations.kind import EvaluationKind
from backend.evaluations.models import EvaluationCell, EvaluationJob
from backend.jobs.models import JobWorker, utcnow
from backend.jobs.process import process_alive
from backend.jobs.worker import Worker
from backend.stress.kind import StressKind
from backend.stress.models import StressJob, StressLevel
from tests.conftest import TEST_MODELS
from tests.support.stress import group_gone, wait_for
from tests.test_jobs_worker import ScriptKind, add_script_job, row

STALE_S = 2.0


def host_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, **worker: Any) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / f"logs-{host}")},
        "catalog": {"models_file": TEST_MODELS},
        "stress": {"outputs_dir": str(tmp_path / f"outputs-{host}"), "logs_dir": str(tmp_path / f"stress-{host}"),
                   "max_concurrent": 4, "poll_interval_s": 0.1, "kill_grace_s": 1, "worker_stale_s": STALE_S},
        "evaluations": {"max_concurrent": 4, "max_job_s": 60},
        "worker": {"host": host, **worker},
    })


@pytest.fixture
def kind(tmp_path: Path) -> ScriptKind:
    (tmp_path / "scripts").mkdir()
    return ScriptKind(tmp_path / "scripts")


def test_a_job_goes_only_to_a_worker_with_every_label_it_requires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  kind: ScriptKind) -> None:
    plain = Worker(host_app(tmp_path, monkeypatch, "host-a"), "plain", kinds=[kind], hooks=[])
    labelled_app = host_app(tmp_path, monkeypatch, "host-b", labels="vpc-b, gpu-net")
    labelled = Worker(labelled_app, "labelled", kinds=[kind], hooks=[])
    assert labelled.labels == ["gpu-net", "vpc-b"]
    with labelled_app.app_context():
        needs_both = _labelled_job(["vpc-b", "gpu-net"])
        needs_other = _labelled_job(["vpc-c"])
        anyone = add_script_job()
        claimed = plain.claim(kind)  # the oldest job it may take: the one without labels
        assert claimed is not None and claimed.id == anyone
        assert plain.claim(kind) is None
        taken = labelled.claim(kind)
        assert taken is not None and taken.id == needs_both and taken.worker_host == "host-b"
        assert labelled.claim(kind) is None
        assert row(EvaluationJob, needs_other).status == "queued"  # no worker has vpc-c: it waits


def _labelled_job(labels: list[str]) -> str:
    job = EvaluationJob(model_key="script", target={}, params={}, progress={}, labels=labels)
    db.session.add(job)
    db.session.commit()
    return job.id


def test_each_worker_takes_up_to_its_own_capacity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  kind: ScriptKind) -> None:
    small_app = host_app(tmp_path, monkeypatch, "host-a", capacity={"script": 1})
    small = Worker(small_app, "small", kinds=[kind], hooks=[])
    big = Worker(host_app(tmp_path, monkeypatch, "host-b"), "big", kinds=[kind], hooks=[])
    assert small.capacity == {"script": 1} and big.capacity == {"script": 4}  # default: max_concurrent
    with small_app.app_context():
        jobs = [add_script_job(sleep=30) for _ in range(4)]
        try:
            small._claim_and_launch(kind)
            big._claim_and_launch(kind)
            assert [row(EvaluationJob, job).worker_id for job in jobs] == ["small", "big", "big", "big"]
        finally:
            for running in [*small.running.values(), *big.running.values()]:
                running.process.kill()
                running.process.wait()


@pytest.mark.parametrize(("worker", "message"), [
    ({"labels": ["ok", "not a label"]}, "worker.labels: 'not a label' is not a label"),
    ({"capacity": {"scripts": 1}}, "worker.capacity: 'scripts' is no job kind"),
    ({"capacity": {"script": -1}}, "worker.capacity.script must be a whole number"),
    ({"host": "a b"}, "worker.host must be a host name"),
])
def test_a_worker_setting_that_cannot_be_read_stops_the_worker_at_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       kind: ScriptKind, worker: dict[str, Any],
                                                                       message: str) -> None:
    app = host_app(tmp_path, monkeypatch, "host-a")
    app.config["PEP"]["worker"] = worker
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        Worker(app, "w", kinds=[kind], hooks=[])


def test_another_hosts_job_is_interrupted_once_its_lease_expires_and_never_runs_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: ScriptKind) -> None:
    app_a = host_app(tmp_path, monkeypatch, "host-a")
    app_b = host_app(tmp_path, monkeypatch, "host-b")
    a = Worker(app_a, "worker-a", kinds=[kind], hooks=[])
    b = Worker(app_b, "worker-b", kinds=[kind], hooks=[])
    with app_a.app_context():
        job_id = add_script_job(sleep=60)
        a.tick()  # heartbeat, claim and launch
        running = a.running[("script", job_id)]
        assert row(EvaluationJob, job_id).worker_host == "host-a"
        lease = db.session.get(JobWorker, "worker-a").lease_until
        assert lease > utcnow() and (lease - utcnow()).total_seconds() <= STALE_S
    with app_b.app_context():
        b.tick()
        b.recover()  # worker-a's lease holds: nothing happens to its job
        assert row(EvaluationJob, job_id).status == "running"
        # worker-a's host stops (frozen, cut off): no more heartbeats; its lease runs out
        time.sleep(STALE_S + 0.5)
        b.recover()
        job = row(EvaluationJob, job_id)
        assert job.status == "interrupted", job.error
        assert "worker-a on host host-a stopped renewing its lease" in job.error and "worker-b" in job.error
        assert process_alive(running.pid)  # a pid of another host is never signalled
        assert ("script", job_id) not in b.running
        b.recover()  # a second pass changes nothing
        assert row(EvaluationJob, job_id).error == job.error
    with app_a.app_context():
        a.tick()  # worker-a comes back: the job ended meanwhile, so its process must go
        assert ("script", job_id) not in a.running
        wait_for(lambda: group_gone(running.pid), 10, "the comeback worker to kill the job's process")
        assert row(EvaluationJob, job_id).status == "interrupted"  # not run again, not re-ended
        running.process.wait(timeout=10)
        assert running.process.returncode == -signal.SIGKILL


def test_an_expired_lease_on_another_host_keeps_what_the_job_stored(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A stress job with one level stored and an evaluation with one cell scored, both held by a worker of
    host-a that is gone: a worker of host-b ends both interrupted from their rows alone."""
    app = host_app(tmp_path, monkeypatch, "host-b")
    gone = utcnow().replace(microsecond=0)
    with app.app_context():
        db.session.add(JobWorker(id="worker-a", pid=4242, started_at=gone, heartbeat_at=gone, host="host-a",
                                 labels=[], capacity={}, lease_until=gone))
        stress = StressJob(model_key="sim-fast", target={}, params={"concurrency": [1, 2]}, progress={},
                           status="running", started_at=gone, worker_id="worker-a", worker_host="host-a",
                           pid=4242, heartbeat_at=gone)
        stress.levels.append(StressLevel(position=0, concurrency=1, requests=2, succeeded=2, failed=0))
        evaluation = EvaluationJob(model_key="sim-fast", target={}, params={}, progress={}, status="running",
                                   started_at=gone, worker_id="worker-a", worker_host="host-a", pid=4243,
                                   heartbeat_at=gone)
        for position, status in enumerate(("completed", "running", "queued")):
            evaluation.cells.append(EvaluationCell(
                position=position, model_key="sim-fast", target={}, dataset_id="d", dataset_name="d",
                dataset_kind="qa", benchmark="general_qa", status=status, done=3 if position == 0 else 1,
                total=3, metrics={"acc": 0.5} if position == 0 else {}, live={}))
        db.session.add_all([stress, evaluation])
        db.session.commit()
        stress_id, evaluation_id = stress.id, evaluation.id

        Worker(app, "worker-b", kinds=[StressKind(), EvaluationKind()], hooks=[]).recover()

        stress = row(StressJob, stress_id)
        assert stress.status == "interrupted" and "host host-a" in stress.error
        assert [(level.position, level.succeeded) for level in stress.levels] == [(0, 2)]  # kept
        evaluation = row(EvaluationJob, evaluation_id)
        assert evaluation.status == "interrupted"
        cells = sorted(evaluation.cells, key=lambda cell: cell.position)
        assert [cell.status for cell in cells] == ["completed", "interrupted", "interrupted"]
        assert cells[0].metrics == {"acc": 0.5}
        assert evaluation.progress["cells_finished"] == 3 and evaluation.progress["done"] == 5


def test_a_worker_row_shows_its_host_labels_capacity_and_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              kind: ScriptKind) -> None:
    app = host_app(tmp_path, monkeypatch, "host-a", labels=["vpc-a"], capacity={"script": 3})
    worker = Worker(app, "w-a", kinds=[kind], hooks=[])
    with app.app_context():
        worker.tick()
        stored = db.session.get(JobWorker, "w-a")
        assert (stored.host, stored.labels, stored.capacity) == ("host-a", ["vpc-a"], {"script": 3})
        first = stored.lease_until
        time.sleep(0.05)
        worker.tick()
        assert row(JobWorker, "w-a").lease_until > first  # each heartbeat renews the lease


def test_a_job_requires_labels_through_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.evaluations import bundled_id

    client = host_app(tmp_path, monkeypatch, "host-a").test_client()
    stress = {"model": "sim-fast", "concurrency": [1], "requests": 1, "prompt": "hi"}
    created = client.post("/api/v1/stress-tests", json={**stress, "labels": ["vpc-b", "gpu-net", "vpc-b"]})
    assert created.status_code == 201, created.json
    assert created.json["labels"] == ["gpu-net", "vpc-b"] and "labels" not in created.json["params"]
    assert client.get(f"/api/v1/stress-tests/{created.json['id']}").json["labels"] == ["gpu-net", "vpc-b"]
    evaluation = client.post("/api/v1/evaluations", json={"models": ["sim-fast"], "limit": 1, "labels": ["vpc-b"],
                                                          "datasets": [bundled_id(client, "qa")]})
    assert evaluation.status_code == 201, evaluation.json
    assert evaluation.json["labels"] == ["vpc-b"] and evaluation.json["worker_host"] is None
    for bad in (["no spaces"], "vpc-b", [""], ["x" * 65]):
        refused = client.post("/api/v1/stress-tests", json={**stress, "labels": bad})
        assert refused.status_code == 400 and refused.json["error"]["details"]["field"] == "labels", (bad, refused.json)


def test_workers_and_where_a_job_ran_are_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               kind: ScriptKind) -> None:
    app = host_app(tmp_path, monkeypatch, "host-a", labels=["vpc-a"], capacity={"script": 2})
    other = host_app(tmp_path, monkeypatch, "host-b")
    client = app.test_client()
    worker = Worker(app, "w-a", kinds=[kind], hooks=[])
    idle = Worker(other, "w-b", kinds=[StressKind()], hooks=[])
    with app.app_context():
        job_id = add_script_job(sleep=30)
        stress_id = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 1,
                                                              "prompt": "hi", "labels": ["vpc-a"]}).json["id"]
        try:
            worker.tick()
            with other.app_context():
                idle.tick()  # heartbeats; it lacks vpc-a, so the stress job stays queued
            assert row(StressJob, stress_id).status == "queued"
            assert row(EvaluationJob, job_id).worker_host == "host-a"
            listed = {w["id"]: w for w in client.get("/api/v1/workers").json["workers"]}
            assert listed["w-a"]["host"] == "host-a" and listed["w-a"]["labels"] == ["vpc-a"]
            assert listed["w-a"]["running"]["evaluation"] == 1  # the script kind runs on the evaluation rows
            assert listed["w-a"]["capacity"] == {"script": 2} and listed["w-a"]["alive"] is True
            assert listed["w-b"]["host"] == "host-b" and listed["w-b"]["capacity"] == {"stress": 4}
            page = client.get("/stress-tests").text
            assert 'id="workers"' in page and "<code>host-a</code>" in page and "labels vpc-a" in page
            assert "/2 script" in page and "running 0/4 stress" in page  # (the test kind runs on evaluation rows)
            evaluations_page = client.get("/evaluations").text
            assert 'id="workers"' in evaluations_page and "<code>host-b</code>" in evaluations_page
            job_page = client.get(f"/stress-tests/{stress_id}").text
            assert "needs <span class=\"job-labels\">vpc-a</span>" in job_page and "not yet claimed" in job_page
            assert 'id="labels-banner"' not in job_page  # host-a's worker has vpc-a
            body = {"model": "sim-fast", "concurrency": [1], "requests": 1, "prompt": "hi", "labels": ["gpu-net"]}
            needs_gpu = client.post("/api/v1/stress-tests", json=body).json
            assert needs_gpu["worker_alive"] is False  # workers run, but none has gpu-net
            assert 'id="labels-banner"' in client.get(f"/stress-tests/{needs_gpu['id']}").text
            assert "no worker with gpu-net" in client.get("/stress-tests").text
            time.sleep(STALE_S + 0.3)
            listed = {w["id"]: w for w in client.get("/api/v1/workers").json["workers"]}
            assert listed["w-a"]["alive"] is False and listed["w-b"]["alive"] is False
            assert "not heard from since" in client.get("/stress-tests").text
        finally:
            for running in worker.running.values():
                running.process.kill()
                running.process.wait()


def test_a_capacity_search_s_probe_jobs_require_its_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.results.capacity_search import advance

    app = host_app(tmp_path, monkeypatch, "host-a")
    client = app.test_client()
    response = client.post("/api/v1/capacity-searches", json={
        "model": "sim-fast", "prompt": "x", "requests": 2, "max_concurrency": 8, "labels": ["vpc-b"],
        "slo": {"percentile": 95, "tpot_ms": 50}})
    assert response.status_code == 201, response.json
    with app.app_context():
        advance(response.json["id"])
        db.session.commit()
        probes = db.session.scalars(db.select(StressJob).where(StressJob.search_id == response.json["id"])).all()
        assert probes and all(job.labels == ["vpc-b"] and "labels" not in job.params for job in probes)


def test_a_worker_that_comes_back_lets_go_of_a_job_its_own_host_took_over(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          kind: ScriptKind) -> None:
    """The stopped worker's job was re-attached by another worker of the same host: the process lives on,
    followed by the new worker, and the one that comes back does not kill it."""
    app = host_app(tmp_path, monkeypatch, "host-a")
    first = Worker(app, "first", kinds=[kind], hooks=[])
    second = Worker(app, "second", kinds=[kind], hooks=[])
    with app.app_context():
        job_id = add_script_job(sleep=3, say="done")
        first.tick()
        running = first.running[("script", job_id)]
        time.sleep(STALE_S + 0.5)  # first is frozen: its lease runs out
        second.tick()
        second.recover()
        assert row(EvaluationJob, job_id).worker_id == "second" and ("script", job_id) in second.running
        first.tick()  # it comes back
        assert ("script", job_id) not in first.running
        assert process_alive(running.pid)  # not killed
        job = wait_for(lambda: (second.tick(), row(EvaluationJob, job_id))[1].is_finished and
                       row(EvaluationJob, job_id), 20, "the second worker to see the job end")
        assert job.status == "completed", job.error
        running.process.wait(timeout=10)
        assert running.process.returncode == 0
