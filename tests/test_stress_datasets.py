"""Stress jobs on the datasets that need more than a prompt: random prompts of a given length (with a
locally made tokenizer) and an uploaded line-by-line file, through the worker and real evalscope."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker, finished, make_app
from tests.support.tokenizer import make_tokenizer


@pytest.fixture(scope="module")
def fast_sim():  # type: ignore[no-untyped-def]
    with SimulatorProcess(seed=5) as sim:
        yield sim


def test_random_prompts_of_the_asked_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fast_sim: SimulatorProcess) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = make_app(tmp_path, fast_sim.port, tokenizer_path=str(make_tokenizer(tmp_path / "tokenizer")))
    client = app.test_client()
    worker = ThreadWorker(app)
    try:
        created = client.post("/api/v1/stress-tests", json={
            "model": "sim-fast", "concurrency": [2], "requests": 4, "dataset": "random",
            "input_tokens": 64, "output_tokens": 16})
        assert created.status_code == 201, created.json
        job = finished(client, created.json["id"], timeout=90)
    finally:
        worker.close()
    assert job["status"] == "completed", job["error"]
    [level] = job["levels"]
    assert level["succeeded"] == 4
    # The simulator counts ~4 characters a token: random prompts of 64 tokens are far from empty.
    received = [r for r in fast_sim.requests() if r["model"] == "sim-fast"]
    assert received and all(r["input_tokens"] >= 16 for r in received[-4:])
    assert job["token_source"] == "server"  # the simulator reports usage; the tokenizer only made prompts


def test_a_tokenizer_without_chat_template_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fast_sim: SimulatorProcess) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    plain = make_tokenizer(tmp_path / "tokenizers" / "plain", chat_template=False)
    app = make_app(tmp_path, fast_sim.port, tokenizer_path=str(plain.parent))
    response = app.test_client().post("/api/v1/stress-tests", json={
        "model": "sim-fast", "concurrency": [1], "requests": 1, "dataset": "random", "tokenizer": "plain",
        "input_tokens": 32, "output_tokens": 8})
    assert response.status_code == 400
    assert response.json["error"]["details"]["field"] == "tokenizer"
    assert "chat template" in response.json["error"]["message"]


def test_uploaded_line_by_line_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       fast_sim: SimulatorProcess) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = make_app(tmp_path, fast_sim.port)
    client = app.test_client()
    lines = [f"uploaded question number {i} about lighthouses" for i in range(6)]
    upload = client.post("/api/v1/stress-tests/datasets", content_type="multipart/form-data", data={
        "format": "line_by_line", "file": (io.BytesIO("\n".join(lines).encode()), "../../etc/questions.txt")})
    assert upload.status_code == 201, upload.json
    dataset_id = upload.json["id"]
    assert "etc" not in str(list((tmp_path / "datasets").iterdir()))  # the client's name is not a path
    worker = ThreadWorker(app)
    try:
        created = client.post("/api/v1/stress-tests", json={
            "model": "sim-fast", "concurrency": [2], "requests": 4, "dataset": "line_by_line",
            "dataset_file": dataset_id, "output_tokens": 8})
        assert created.status_code == 201, created.json
        job = finished(client, created.json["id"], timeout=90)
    finally:
        worker.close()
    assert job["status"] == "completed", job["error"]
    prompts = {r["prompt"] for r in fast_sim.requests() if r["prompt"].startswith("uploaded question")}
    assert prompts and prompts <= set(lines)
