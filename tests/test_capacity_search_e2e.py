"""The capacity search end to end: the API, the worker in a thread, the real ``evalscope perf`` for every
probe job, against a simulator whose capacity model makes the true limit computable.

For concurrency c within the batch, a decode step lasts ``decode_base_ms + decode_ms_per_seq * c``, so
TPOT is about that; with p95 TPOT <= L the limit is ``floor((L - decode_base_ms) / decode_ms_per_seq)``.
L is put half a step between two levels so that the measurement's own overhead (a fraction of a
millisecond per token) does not decide the verdict; the search must land within one precision step.
Answers are 40 tokens long and a step is 6 ms, so that one stall of the loaded test machine (CI runs two
test processes beside the simulator and evalscope) spreads over many tokens: at concurrency 3 a request
must stall for over half a second before its p95 TPOT crosses the limit (with 12 tokens and 4 ms steps
0.1 s was enough, and a CI run landed on 2).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker, make_app, wait_for, worker_process

DECODE_BASE_MS, DECODE_MS_PER_SEQ = 10.0, 6.0
OUTPUT_TOKENS = 40
PROFILE = (f"sim-fast:decode_base_ms={DECODE_BASE_MS:g},decode_ms_per_seq={DECODE_MS_PER_SEQ:g},max_batch=1000,"
           f"min_output_tokens={OUTPUT_TOKENS},max_output_tokens={OUTPUT_TOKENS}")
TPOT_LIMIT_MS = DECODE_BASE_MS + DECODE_MS_PER_SEQ * 5.5  # between concurrency 5 and 6


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(seed=23, extra_args=["--profile", PROFILE]) as process:
        yield process


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: SimulatorProcess) -> Iterator[tuple[Flask, Any]]:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = make_app(tmp_path, sim.port)
    worker = ThreadWorker(app)
    yield app, app.test_client()
    worker.close()


def test_the_search_lands_within_one_step_of_the_simulators_limit(stack: tuple[Flask, Any]) -> None:
    _app, client = stack
    expected = math.floor((TPOT_LIMIT_MS - DECODE_BASE_MS) / DECODE_MS_PER_SEQ)
    assert expected == 5
    response = client.post("/api/v1/capacity-searches", json={
        "model": "sim-fast", "prompt": "x", "output_tokens": OUTPUT_TOKENS, "requests": 2, "requests_per_slot": 2,
        "repeats": 2, "precision": 1, "max_concurrency": 64, "slo": {"percentile": 95, "tpot_ms": TPOT_LIMIT_MS}})
    assert response.status_code == 201, response.json
    search_id = response.json["id"]
    result = wait_for(lambda: (s := client.get(f"/api/v1/capacity-searches/{search_id}").json)["is_finished"] and s,
                      150, "the capacity search to end", interval=0.5)
    assert result["status"] == "completed", result
    assert abs(result["capacity"] - expected) <= 1, result
    low, high = result["bracket"]["last_good"], result["bracket"]["first_bad"]
    assert high - low == 1 and low == result["capacity"]
    # doubling from 1, then bisection: every probe run twice, each repeat an ordinary completed stress job
    order = [p["concurrency"] for p in result["probes"]]
    assert order[:3] == [1, 2, 4] and len(order) == len(set(order))
    for probe in result["probes"]:
        assert len(probe["jobs"]) == 2
        measured = probe["mean"]["tpot_ms"]
        model = DECODE_BASE_MS + DECODE_MS_PER_SEQ * probe["concurrency"]
        assert model * 0.9 < measured < model * 1.3, probe  # the simulator's step, seen through evalscope
        assert probe["verdict"]["meets"] is (measured <= TPOT_LIMIT_MS)
    for job_id in result["jobs"]:
        job = client.get(f"/api/v1/stress-tests/{job_id}").json
        assert job["status"] == "completed" and len(job["levels"]) == 1
    print(f"\ncapacity search: computed limit {expected}, landed on {result['capacity']} "
          f"(bracket {low}-{high}), probes {order}, p95 TPOT means "
          f"{[round(p['mean']['tpot_ms'], 2) for p in result['probes']]}")


def test_an_automatic_start_from_littles_law_lands_on_the_same_limit(stack: tuple[Flask, Any]) -> None:
    """One unbounded probe (16 requests at once), its throughput times the time the SLO allows a request
    as the start, then the same doubling and bisection: the same limit, from fewer probes."""
    _app, client = stack
    response = client.post("/api/v1/capacity-searches", json={
        "model": "sim-fast", "prompt": "x", "output_tokens": OUTPUT_TOKENS, "requests": 2, "requests_per_slot": 2,
        "repeats": 1, "start": "auto", "max_concurrency": 16, "slo": {"percentile": 95, "tpot_ms": TPOT_LIMIT_MS}})
    assert response.status_code == 201, response.json
    search_id = response.json["id"]
    result = wait_for(lambda: (s := client.get(f"/api/v1/capacity-searches/{search_id}").json)["is_finished"] and s,
                      150, "the capacity search to end", interval=0.5)
    assert result["status"] == "completed", result
    assert abs(result["capacity"] - 5) <= 1, result
    estimate = result["estimate"]
    probe = client.get(f"/api/v1/stress-tests/{estimate['jobs'][0]}").json
    assert probe["params"]["concurrency"] == [16] and probe["params"]["requests"] == [16]
    # the start is the measured throughput times what the SLO allows a request: one TPOT per output token
    allowed = TPOT_LIMIT_MS * estimate["output_tokens"] / 1000.0
    assert estimate["allowed_s"] == pytest.approx(allowed)
    assert result["start"] == max(1, min(16, math.floor(estimate["req_per_s"] * allowed)))
    assert result["probes"][0]["concurrency"] == result["start"]
    print(f"\ncapacity search from Little's law: {estimate['reason']}; probes "
          f"{[p['concurrency'] for p in result['probes']]}, landed on {result['capacity']}")


def test_a_search_survives_its_worker_being_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   sim: SimulatorProcess) -> None:
    """SIGKILL to the worker while a probe job runs: a new worker re-attaches to that job's evalscope (or
    ends it from its outputs) and carries the search on from its rows to the same limit."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    client = make_app(tmp_path, sim.port).test_client()
    search_id = client.post("/api/v1/capacity-searches", json={
        "model": "sim-fast", "prompt": "x", "output_tokens": OUTPUT_TOKENS, "requests": 2, "repeats": 1,
        "max_concurrency": 64, "slo": {"tpot_ms": TPOT_LIMIT_MS}}).json["id"]

    def search() -> dict[str, Any]:
        return client.get(f"/api/v1/capacity-searches/{search_id}").json

    worker = worker_process(tmp_path, sim.port)
    try:
        # killed while the third probe's job runs, after two probes are recorded
        wait_for(lambda: len(search()["probes"]) >= 2 and search()["pending"], 90, "two probes recorded")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        before = search()
        assert not before["is_finished"]
        worker = worker_process(tmp_path, sim.port)
        result = wait_for(lambda: (s := search())["is_finished"] and s, 120, "the search to end", interval=0.5)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    assert result["status"] == "completed", result
    assert abs(result["capacity"] - 5) <= 1, result
    assert [p["concurrency"] for p in result["probes"]][:len(before["probes"])] == \
        [p["concurrency"] for p in before["probes"]]
