"""A stress test and an evaluation (the real evalscope, tiny runs) against a manual endpoint that fails
every request: one answers 429 with Retry-After, then 500 to everything (the scripted raw-socket server
answers 500 once its script is played); and a stress test against one that never answers. Each job ends
``failed`` with a reason that names the upstream's answer (or the timeout), and what was stored says how
many requests failed; the pages of the jobs answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.evaluations import bundled_id, make_app
from tests.support.evaluations import finished as evaluation_finished
from tests.support.raw_http import RawHttpServer, Reply, head
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker
from tests.support.stress import finished as stress_finished

pytestmark = pytest.mark.timeout(180)

THROTTLED = b'{"error": {"message": "slow down"}}'


@pytest.fixture
def hanging() -> Iterator[RawHttpServer]:
    server = RawHttpServer().start()
    yield server
    server.stop()


@pytest.fixture
def failing() -> Iterator[RawHttpServer]:
    replies = [Reply([head(429, length=len(THROTTLED), content_type="application/json",
                           extra=["Retry-After: 1"]) + THROTTLED], then="close")] * 2
    server = RawHttpServer(replies).start()
    yield server
    server.stop()


def test_jobs_against_a_failing_endpoint_end_failed_with_its_reason(
        tmp_path: Path, simulator: SimulatorProcess, failing: RawHttpServer, hanging: RawHttpServer) -> None:
    app = make_app(tmp_path, simulator.port)
    client = app.test_client()
    manual = {"base_url": failing.base_url, "model_name": "m"}
    stress = client.post("/api/v1/stress-tests", json={"manual_config": manual, "concurrency": [1], "requests": 3,
                                                       "output_tokens": 8, "prompt": "hi", "read_timeout_s": 5})
    assert stress.status_code == 201, stress.json
    evaluation = client.post("/api/v1/evaluations", json={"manual_config": manual, "limit": 2,
                                                          "datasets": [bundled_id(client, "qa")]})
    assert evaluation.status_code == 201, evaluation.json
    never = threading.Event()
    hanging.script(*[Reply([never])] * 4)  # reads each request, answers nothing
    hung = client.post("/api/v1/stress-tests", json={
        "manual_config": {"base_url": hanging.base_url, "model_name": "m"}, "concurrency": [1], "requests": 1,
        "output_tokens": 8, "prompt": "hi", "read_timeout_s": 1, "total_timeout_s": 3})
    assert hung.status_code == 201, hung.json
    worker = ThreadWorker(app)
    try:
        stress_job = stress_finished(client, stress.json["id"], timeout=120)
        evaluation_job = evaluation_finished(client, evaluation.json["id"], timeout=120)
        hung_job = stress_finished(client, hung.json["id"], timeout=60)
    finally:
        never.set()
        worker.close()

    assert stress_job["status"] == "failed", stress_job
    assert stress_job["error"].startswith("all 3 requests failed: "), stress_job["error"]
    assert "429" in stress_job["error"] or "500" in stress_job["error"], stress_job["error"]
    assert evaluation_job["status"] == "failed", evaluation_job
    cells = evaluation_job["cells"]
    assert cells and all(cell["status"] == "failed" and cell["error"] for cell in cells), cells
    assert any("500" in cell["error"] or "429" in cell["error"] or "no scripted reply" in cell["error"]
               for cell in cells), cells
    assert all(cell.get("score") is None for cell in cells)  # a failed cell has no score, never 0
    assert len(failing.requests) >= 3
    # a server that never answers: bounded by the job's read timeout, failed saying so
    assert hung_job["status"] == "failed", hung_job
    assert hung_job["error"].startswith("all 1 requests failed: "), hung_job["error"]
    assert "timeout" in hung_job["error"].lower() or "timed out" in hung_job["error"].lower(), hung_job["error"]
    for page in (f"/stress-tests/{stress.json['id']}", f"/evaluations/{evaluation.json['id']}",
                 f"/results/{stress.json['id']}"):
        assert client.get(page).status_code == 200, page
