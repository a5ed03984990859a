"""The capacity search on the job machinery, without evalscope: the API's validation, the worker's step
(``advance``) queuing one probe job at a time and recording each probe from its jobs' rows, cancel, a
probe job that fails, and two writers racing. Probe jobs are "run" here by writing the rows the worker
would have ingested, with a TPOT that grows with the concurrency like the simulator's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from backend.db import db
from backend.results.capacity_search import CapacitySearch, _save, advance
from backend.results.ingest import pack_columns, store_requests
from backend.stress.models import JobStatus, StressJob, StressLevel
from tests.support.stress import offline_app

BODY: dict[str, Any] = {"model": "sim-fast", "prompt": "x", "output_tokens": 20, "requests": 3,
                        "slo": {"tpot_ms": 30, "percentile": 95}}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    return offline_app(tmp_path, monkeypatch)


def create(app: Flask, **changes: Any) -> dict[str, Any]:
    response = app.test_client().post("/api/v1/capacity-searches", json={**BODY, **changes})
    assert response.status_code == 201, response.json
    return response.json


def step(app: Flask, search_id: str) -> None:
    with app.app_context():
        advance(search_id)


def unfinished_jobs(app: Flask, search_id: str) -> list[StressJob]:
    with app.app_context():
        jobs = db.session.scalars(db.select(StressJob).where(StressJob.search_id == search_id)).all()
        db.session.expunge_all()
        return [job for job in jobs if not job.is_finished]


def run_job(app: Flask, job: StressJob, tpot_ms: float, *, status: str = "completed", level: bool = True) -> None:
    """What the worker leaves when a probe job has run: its level row and per-request rows."""
    concurrency, count = job.params["concurrency"][0], job.params["requests"][0]
    rows = [{"success": True, "start_s": 0.0, "end_s": 1.0, "ttft_ms": 20.0, "tpot_ms": tpot_ms + 0.01 * i,
             "latency_s": 1.0, "input_tokens": 5, "output_tokens": 20, "seq": i} for i in range(count)]
    with app.app_context():
        if level:
            db.session.add(StressLevel(job_id=job.id, position=0, concurrency=concurrency, requests=count,
                                       succeeded=count, failed=0, duration_s=2.0, req_per_s=count / 2.0,
                                       output_tokens_per_s=10.0 * count, total_tokens_per_s=11.0 * count,
                                       avg_input_tokens=5.0, avg_output_tokens=20.0,
                                       metrics={}, raw_summary={}, raw_percentiles=[], complete=True,
                                       request_columns=pack_columns(rows)))
            store_requests(db.session, job.id, 0, rows)
        error = None if level else ("the evalscope process ended while no worker was watching it"
                                    if status == "interrupted" else "evalscope exited with code 1: boom")
        db.session.execute(db.update(StressJob).where(StressJob.id == job.id).values(status=status, error=error))
        db.session.commit()


def search_of(app: Flask, search_id: str) -> dict[str, Any]:
    response = app.test_client().get(f"/api/v1/capacity-searches/{search_id}")
    assert response.status_code == 200
    return response.json


def drive(app: Flask, search_id: str, tpot: Any, limit: int = 60, interrupt: Any = lambda _c, _n: False
          ) -> list[tuple[int, int]]:
    """Step the search to its end, running each probe job as it is queued; (concurrency, requests) in order.
    ``interrupt(concurrency, n)`` (n: how many jobs ran before) says when a job is cut short by a crash."""
    ran = []
    for _ in range(limit):
        step(app, search_id)
        jobs = unfinished_jobs(app, search_id)
        assert len(jobs) <= 1, "repeats must run one after another, never together"
        if not jobs:
            if search_of(app, search_id)["is_finished"]:
                return ran
            continue
        job = jobs[0]
        assert job.status == JobStatus.QUEUED.value
        concurrency = job.params["concurrency"][0]
        ran.append((concurrency, job.params["requests"][0]))
        if interrupt(concurrency, len(ran) - 1):
            run_job(app, job, tpot(concurrency), status="interrupted", level=False)
        else:
            run_job(app, job, tpot(concurrency))
    raise AssertionError(f"no end after {limit} steps: {ran}")


def test_defaults_and_stored_workload(app: Flask) -> None:
    search = create(app)
    assert (search["status"], search["start"], search["precision"], search["repeats"]) == ("queued", 1, 1, 2)
    assert search["max_concurrency"] == app.config["PEP"]["stress"]["max_parallel"]
    assert search["slo"]["tpot_ms"] == 30 and search["slo"]["ttft_ms"] is None
    assert search["params"]["prompt"] == "x" and "concurrency" not in search["params"]
    assert search["next_probe"] == 1 and search["probes"] == [] and search["jobs"] == []


def test_without_an_slo_the_configured_one_is_used(app: Flask) -> None:
    search = create(app, slo=None)
    configured = app.config["PEP"]["results"]["slo"]
    assert search["slo"]["tpot_ms"] == configured["tpot_ms"] and search["slo"]["ttft_ms"] == configured["ttft_ms"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"concurrency": [1, 2]}, "concurrency"),
    ({"repeats": 6}, "repeats"),
    ({"repeats": 0}, "repeats"),
    ({"precision": "abc"}, "precision"),
    ({"precision": 0}, "precision"),
    ({"start": 0}, "start"),
    ({"max_concurrency": 100_000}, "max_concurrency"),
    ({"start": 8, "max_concurrency": 4}, "max_concurrency"),
    ({"slo": {"percentile": 95}}, "slo"),
    ({"slo": {"tpot_ms": -1}}, "slo.tpot_ms"),
    ({"slo": {"tpot_ms": 30, "other": 1}}, "slo.other"),
    ({"requests": [3, 4]}, "requests"),
    ({"model": "no-such-model"}, "model"),
    ({"output_tokens": 10**9}, "output_tokens"),
    ({"requests_per_slot": 100, "max_concurrency": 512}, "requests_per_slot"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_bodies_are_refused_naming_the_field(app: Flask, changes: dict[str, Any], field: str) -> None:
    response = app.test_client().post("/api/v1/capacity-searches", json={**BODY, **changes})
    assert response.status_code == 400, response.json
    assert response.json["error"]["details"]["field"] == field, response.json


def test_the_worker_step_finds_the_computed_limit_one_probe_job_at_a_time(app: Flask) -> None:
    # TPOT = 10 + 2c against p95 TPOT <= 31: the limit is floor((31 - 10) / 2) = 10
    expected = math.floor((31 - 10) / 2)
    search_id = create(app, slo={"tpot_ms": 31})["id"]
    ran = drive(app, search_id, lambda c: 10 + 2 * c)
    order = [c for c, _ in ran]
    assert order == [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 12, 12, 10, 10, 11, 11]  # each probe twice
    assert all(requests == max(3, 2 * c) for c, requests in ran)  # requests, or 2 per slot
    result = search_of(app, search_id)
    assert result["status"] == "completed" and result["capacity"] == expected
    assert result["bracket"] == {"last_good": expected, "first_bad": expected + 1}
    assert f"capacity {expected}" in result["reason"]
    probe = next(p for p in result["probes"] if p["concurrency"] == expected)
    assert len(probe["jobs"]) == 2 and probe["verdict"]["meets"] is True
    # p95 of 20 rows tpot_ms 30.00 .. 30.19 (nearest rank: the 19th) is 30.18
    assert probe["spread"]["tpot_ms"]["min"] == pytest.approx(30.18)
    assert probe["req_per_s"] == pytest.approx(10.0) and probe["output_tokens_per_s"] == pytest.approx(200.0)
    assert len(result["jobs"]) == 16 and result["next_probe"] is None
    assert result["cost_at_capacity"]["reason"]  # a price or the reason there is none, never silently 0


def test_cancel_of_a_running_search_cancels_its_probe_job(app: Flask) -> None:
    search_id = create(app)["id"]
    step(app, search_id)  # running, first probe job queued
    [job] = unfinished_jobs(app, search_id)
    response = app.test_client().post(f"/api/v1/capacity-searches/{search_id}/cancel")
    assert response.status_code == 202 and response.json["status"] == "cancelling"
    with app.app_context():
        cancelled = db.session.get(StressJob, job.id)
        assert cancelled.status == "cancelled" and cancelled.cancel_requested
    step(app, search_id)
    result = search_of(app, search_id)
    assert result["status"] == "cancelled" and "cancelled by request" in result["reason"]
    assert unfinished_jobs(app, search_id) == []
    step(app, search_id)  # nothing more is queued after the end
    assert unfinished_jobs(app, search_id) == []
    again = app.test_client().post(f"/api/v1/capacity-searches/{search_id}/cancel")
    assert again.status_code == 409


def test_cancel_of_a_queued_search_ends_it_at_once(app: Flask) -> None:
    search_id = create(app)["id"]
    response = app.test_client().post(f"/api/v1/capacity-searches/{search_id}/cancel")
    assert response.status_code == 200 and response.json["status"] == "cancelled"
    step(app, search_id)
    assert unfinished_jobs(app, search_id) == []


def test_a_probe_job_without_results_fails_the_search_with_its_reason(app: Flask) -> None:
    search_id = create(app)["id"]
    step(app, search_id)
    [job] = unfinished_jobs(app, search_id)
    run_job(app, job, 12.0, status="failed", level=False)
    step(app, search_id)
    result = search_of(app, search_id)
    assert result["status"] == "failed" and unfinished_jobs(app, search_id) == []
    assert "probe at concurrency 1" in result["reason"] and "boom" in result["reason"]


def test_two_writers_cannot_both_advance_a_search(app: Flask) -> None:
    search_id = create(app)["id"]
    with app.app_context():
        stale = db.session.get(CapacitySearch, search_id)
        db.session.expunge(stale)
        advance(search_id)  # the first writer moves it on
        assert not _save(stale, JobStatus.RUNNING)
        assert not _save(stale, pending={"concurrency": 99, "jobs": []})
        db.session.rollback()
    assert search_of(app, search_id)["pending"]["concurrency"] == 1


def test_unknown_search_is_404(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/api/v1/capacity-searches/nope").status_code == 404
    assert client.post("/api/v1/capacity-searches/nope/cancel").status_code == 404


def test_the_page_shows_the_probes_and_the_curve_of_a_finished_search(app: Flask) -> None:
    search_id = create(app, slo={"tpot_ms": 31}, label="<b>mine</b>")["id"]
    drive(app, search_id, lambda c: 10 + 2 * c)
    page = app.test_client().get(f"/results/capacity/{search_id}")
    assert page.status_code == 200
    assert "<b>mine</b>" not in page.text and "&lt;b&gt;mine&lt;/b&gt;" in page.text  # escaped
    assert "js/capacity.js" in page.text and "<script>" not in page.text  # no inline script
    assert 'data-finished="true"' in page.text and "concurrency 10" in page.text
    assert page.text.count('<span class="badge ok">meets</span>') == 5  # 1 2 4 8 10
    assert page.text.count('<span class="badge bad">breaks tpot_ms</span>') == 3  # 16 12 11
    [tpot, throughput] = search_of(app, search_id)["figures"]
    curve = tpot["data"][0]
    assert curve["x"] == [1, 2, 4, 8, 10, 11, 12, 16]
    # the mean over repeats of each repeat's p95 (nearest rank; rows at tpot + 0.00, + 0.01, ...): at c=1
    # 3 rows (12.00 12.01 12.02), the 3rd; at c=10 20 rows, the 19th
    assert curve["y"][0] == pytest.approx(12.02) and curve["y"][4] == pytest.approx(30.18)
    assert tpot["data"][1]["y"] == [31, 31]  # the limit
    assert throughput["layout"]["shapes"][0]["x0"] == 10  # the capacity marked
    assert app.test_client().get("/results/capacity/nope").status_code == 404


def test_an_automatic_start_probes_once_unbounded_then_starts_from_littles_law(app: Flask) -> None:
    # TPOT = 10 + 2c against p95 TPOT <= 31: the limit is 10. The estimate's probe sends 32 requests at once
    # (the rows the test writes say 16 req/s and 20 output tokens each); with no TTFT limit the SLO allows
    # one TPOT per token, 20 x 31 ms: L = 16 x 0.62 = 9.92, so the search starts at 9.
    search_id = create(app, slo={"tpot_ms": 31}, start="auto")["id"]
    first = search_of(app, search_id)
    assert first["start_auto"] is True and first["estimate"] is None
    ran = drive(app, search_id, lambda c: 10 + 2 * c)
    expected_start = math.floor(32 / 2.0 * (20 * 31) / 1000)
    assert ran[0] == (32, 32)  # the estimate's probe: every request in flight at once, one each
    order = [c for c, _ in ran[1:]]
    assert order[0] == expected_start == 9
    assert order == [9, 9, 18, 18, 13, 13, 11, 11, 10, 10]  # doubling from 9 breaks at 18, then bisection
    result = search_of(app, search_id)
    assert result["status"] == "completed" and result["capacity"] == 10 and result["start"] == 9
    estimate = result["estimate"]
    assert estimate["value"] == pytest.approx(16 * 0.62) and estimate["allowed_s"] == pytest.approx(0.62)
    assert estimate["req_per_s"] == pytest.approx(16.0) and "starting at 9" in estimate["reason"]
    assert result["jobs"][0] == estimate["jobs"][0] and len(result["jobs"]) == 11
    page = app.test_client().get(f"/results/capacity/{search_id}")
    assert "Start from Little's law: 16 req/s saturated" in page.text and "(estimated)" in page.text


def test_an_automatic_start_without_an_estimate_starts_at_one(app: Flask) -> None:
    search_id = create(app, slo={"error_rate": 0.01}, start="auto", max_concurrency=4)["id"]
    ran = drive(app, search_id, lambda c: 10.0)
    assert ran[0] == (4, 4) and [c for c, _ in ran[1:3]] == [1, 1]
    result = search_of(app, search_id)
    assert "bounds no time" in result["estimate"]["reason"] and result["start"] == 1


def test_an_interrupted_probe_job_is_run_again_and_the_search_goes_on(app: Flask) -> None:
    search_id = create(app, slo={"tpot_ms": 31})["id"]
    # the 3rd job (concurrency 2, first repeat) is cut short by a crash, and so is its replacement
    ran = drive(app, search_id, lambda c: 10 + 2 * c, interrupt=lambda c, n: n in (2, 3))
    order = [c for c, _ in ran]
    assert order[:6] == [1, 1, 2, 2, 2, 2]  # two replacements, then both repeats of 2
    result = search_of(app, search_id)
    assert result["status"] == "completed" and result["capacity"] == 10
    probe = next(p for p in result["probes"] if p["concurrency"] == 2)
    assert len(probe["jobs"]) == 2 and len(probe["replaced"]) == 2
    assert not set(probe["jobs"]) & set(probe["replaced"])


def test_a_probe_interrupted_more_often_than_the_retries_fails_the_search(app: Flask) -> None:
    search_id = create(app, slo={"tpot_ms": 31})["id"]
    drive(app, search_id, lambda c: 10 + 2 * c, interrupt=lambda c, n: c == 2)
    result = search_of(app, search_id)
    assert result["status"] == "failed" and "probe at concurrency 2" in result["reason"]
    assert "interrupted" in result["reason"] and "no worker was watching" in result["reason"]
    assert [p["concurrency"] for p in result["probes"]] == [1]


def test_the_list_says_where_each_search_stands(app: Flask) -> None:
    done = create(app, slo={"tpot_ms": 31})["id"]
    drive(app, done, lambda c: 10 + 2 * c)
    estimating = create(app, start="auto", max_concurrency=8, label="<i>auto</i>")["id"]
    step(app, estimating)  # queues the estimate's probe
    listed = app.test_client().get("/api/v1/capacity-searches").json
    assert listed["total"] == 2 and [s["id"] for s in listed["searches"]] == [estimating, done]  # newest first
    first, second = listed["searches"]
    assert first["status"] == "running" and first["capacity"] is None
    assert first["reason"] == "estimating where to start: 8 requests at once, then Little's law"
    assert second["status"] == "completed" and second["capacity"] == 10 and second["probes"] == 8
    assert second["bracket"] == {"last_good": 10, "first_bad": 11}
    only = app.test_client().get("/api/v1/capacity-searches?status=completed").json
    assert [s["id"] for s in only["searches"]] == [done]
    bad = app.test_client().get("/api/v1/capacity-searches?status=sleeping")
    assert bad.status_code == 400 and bad.json["error"]["details"]["field"] == "status"
    page = app.test_client().get("/results/capacity")
    assert page.status_code == 200 and "&lt;i&gt;auto&lt;/i&gt;" in page.text and "<i>auto</i>" not in page.text
    assert page.text.count('data-search="') == 2
    assert app.test_client().get("/results/capacity?status=sleeping").status_code == 400
