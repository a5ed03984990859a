"""A stress test spread over worker hosts, as rows: how its group job follows its shard jobs
(backend/stress/spread.py ``advance_groups``) when they start, fail, are interrupted or cancelled. No worker
runs here; the shards run for real in tests/test_stress_spread.py and tests/test_multihost.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from backend.db import db
from backend.stress.models import StressJob, utcnow
from tests.support.stress import job_of, make_app


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    return make_app(tmp_path, 9)  # nothing is sent to a model here


def _group(app: Flask, shards: int = 2) -> tuple[str, list[str]]:
    """A job spread over hosts and its shard jobs, as rows (no worker runs them here)."""
    from backend.stress import spread

    with app.app_context():
        group = StressJob(model_key="sim-fast", target={"kind": "catalog", "key": "sim-fast"}, host_shards=shards,
                          params={"concurrency": [2], "requests": [4], "shards": shards, "spread": "hosts",
                                  "dataset": "prompt", "prompt": "x"}, estimated_requests=4)
        db.session.add(group)
        db.session.flush()
        ids = [shard.id for shard in spread.create_shards(group, shards)]
        db.session.commit()
        return group.id, ids


def _set(app: Flask, job_id: str, **values: Any) -> None:
    if values.get("status") in ("completed", "failed", "cancelled", "interrupted"):
        values.setdefault("finished_at", utcnow())  # as transition() sets it
    with app.app_context():
        db.session.execute(db.update(StressJob).where(StressJob.id == job_id).values(**values))
        db.session.commit()


def _advance(app: Flask) -> dict[str, StressJob]:
    from backend.stress.spread import advance_groups

    with app.app_context():
        advance_groups()
        db.session.expunge_all()
        return {job.id: job for job in db.session.scalars(select(StressJob)).all()}


def test_a_shard_that_fails_cancels_the_others_and_the_job_fails_with_its_reason(app: Flask) -> None:
    group_id, (first, second) = _group(app)
    assert _advance(app)[group_id].status == "queued"  # no shard has started
    _set(app, first, status="running", worker_host="host-a", worker_id="w-a")
    _set(app, second, status="running", worker_host="host-b", worker_id="w-b")
    jobs = _advance(app)
    assert jobs[group_id].status == "running"
    _set(app, second, status="failed", error="evalscope exited with code 1: boom")
    jobs = _advance(app)
    assert jobs[first].status == "cancelling" and jobs[first].cancel_requested  # the other shard is stopped
    assert jobs[group_id].status == "running"  # until every shard has ended
    _set(app, first, status="cancelled", error="cancelled by request")
    jobs = _advance(app)
    group = jobs[group_id]
    assert group.status == "failed"
    assert group.error == f"shard 2 of 2 (job {second} on host host-b) failed: evalscope exited with code 1: boom"
    assert group.worker_host == "host-a, host-b"
    assert _advance(app)[group_id].status == "failed"  # ended once


def test_a_shard_ended_elsewhere_as_interrupted_ends_the_job_interrupted(app: Flask) -> None:
    group_id, (first, second) = _group(app)
    _set(app, first, status="completed", worker_host="host-a")
    _set(app, second, status="interrupted", worker_host="host-b", error="its worker stopped renewing its lease")
    group = _advance(app)[group_id]
    assert group.status == "interrupted"
    assert f"shard 2 of 2 (job {second} on host host-b) interrupted" in group.error


def test_a_queued_job_cancelled_cancels_its_queued_shards(app: Flask) -> None:
    group_id, shards = _group(app)
    client = app.test_client()
    response = client.post(f"/api/v1/stress-tests/{group_id}/cancel")
    assert response.status_code in (200, 202), response.json
    assert response.json["status"] == "cancelled"
    assert [s["status"] for s in response.json["shard_jobs"]] == ["cancelled", "cancelled"]
    assert {job_of(client, shard)["status"] for shard in shards} == {"cancelled"}


def test_a_shard_cancelled_by_itself_cancels_the_job(app: Flask) -> None:
    group_id, (first, second) = _group(app)
    _set(app, first, status="running", worker_host="host-a")
    _set(app, second, status="cancelled", worker_host="host-b", error="cancelled by request")
    jobs = _advance(app)
    assert jobs[first].status == "cancelling"
    _set(app, first, status="cancelled", error="cancelled by request")
    group = _advance(app)[group_id]
    assert group.status == "cancelled"
    assert group.error.startswith("shard 2 of 2") and "cancelled: cancelled by request" in group.error
