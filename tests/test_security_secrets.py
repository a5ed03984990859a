"""Secrets after runs that used them: an inference, a stress test and an evaluation against a manual
endpoint with an API key (the real evalscope subprocess, tiny runs), and a Bedrock inference with (fake)
AWS keys. Then every byte the platform wrote (its logs folder, the database file raw and every table's
rows, stress and evaluation outputs and logs) and every JSON and HTML answer about those runs is
searched: no secret is anywhere."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.bedrock_server import BedrockServer
from tests.support.evaluations import bundled_id, catalogue_with_answerers, make_app
from tests.support.evaluations import finished as evaluation_finished
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker
from tests.support.stress import finished as stress_finished

pytestmark = pytest.mark.timeout(240)

ENDPOINT_KEY = "sk-endpoint-4f1c9e7d2b8a6350"
AWS_KEY_ID = "AKIASECRETFAKE7Q2W4E"
AWS_SECRET = "wJalrSecretFake/K7MDENG+bPxRfiCYzz9Q1x8"
SECRETS = (ENDPOINT_KEY, AWS_KEY_ID, AWS_SECRET)


@pytest.fixture(scope="module")
def keyed_simulator() -> Iterator[SimulatorProcess]:
    """A simulator that answers only with the endpoint key: every run that succeeds really sent it."""
    with SimulatorProcess(seed=7, extra_args=["--api-key", ENDPOINT_KEY]) as sim:
        yield sim


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, keyed_simulator: SimulatorProcess,
         bedrock_server: BedrockServer) -> Iterator[tuple[Flask, Path, dict[str, str]]]:
    tmp_path = tmp_path_factory.mktemp("secrets")
    simulator = keyed_simulator
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock_server.url)
        patch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        patch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", "http://127.0.0.1:9")  # EMD discovery stays local
        app = make_app(tmp_path, simulator.port, catalogue_with_answerers(tmp_path))
        client = app.test_client()
        worker = ThreadWorker(app)
        try:
            ids = _run_everything(client, simulator, bedrock_server)
        finally:
            worker.close()
        yield app, tmp_path, ids


def _run_everything(client: Any, simulator: SimulatorProcess,
                    bedrock_server: BedrockServer) -> dict[str, str]:
    manual = {"base_url": simulator.base_url, "model_name": "sim-fast", "api_key": ENDPOINT_KEY}
    inference = client.post("/api/v1/inference", json={"prompt": "hi", "manual_config": {**manual, "label": "m"}})
    assert inference.status_code == 200 and inference.json["status"] == "completed", inference.json
    bedrock = client.post("/api/v1/inference", json={"model": "claude35", "prompt": "hi"})
    assert bedrock.status_code == 200 and bedrock.json["status"] == "completed", bedrock.json
    assert any(AWS_KEY_ID in r.headers.get("Authorization", "") for r in bedrock_server.requests)  # signed with it
    stress = client.post("/api/v1/stress-tests", json={"manual_config": manual, "concurrency": [1], "requests": 2,
                                                       "output_tokens": 8, "prompt": "hi"})
    assert stress.status_code == 201, stress.json
    evaluation = client.post("/api/v1/evaluations", json={
        "manual_config": {**manual, "model_name": "sim-answer-a"}, "datasets": [bundled_id(client, "mcq")],
        "limit": 2})
    assert evaluation.status_code == 201, evaluation.json
    stress_job = stress_finished(client, stress.json["id"], timeout=120)
    assert stress_job["status"] == "completed", stress_job
    evaluation_job = evaluation_finished(client, evaluation.json["id"], timeout=120)
    assert evaluation_job["status"] == "completed", evaluation_job
    return {"inference": inference.json["run_id"], "bedrock": bedrock.json["run_id"],
            "stress": stress.json["id"], "evaluation": evaluation.json["id"]}


def found_in(data: bytes) -> list[str]:
    return [secret for secret in SECRETS if secret.encode() in data]


def test_no_secret_in_any_file_written(runs: tuple[Flask, Path, dict[str, str]]) -> None:
    _, tmp_path, _ = runs
    files = [path for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()]
    written = {path.relative_to(tmp_path).as_posix() for path in files}
    # the run really wrote what is searched: logs, the database, evalscope's outputs of both jobs
    assert "app.db" in written and any(name.startswith("logs/") for name in written), sorted(written)[:20]
    assert any(name.startswith("outputs/") for name in written) and any(n.startswith("eval-outputs/") for n in written)
    leaks = {name: found_in(path.read_bytes()) for name, path in zip(sorted(written), sorted(files), strict=True)}
    assert {name: secrets for name, secrets in leaks.items() if secrets} == {}


def test_no_secret_in_any_database_row(runs: tuple[Flask, Path, dict[str, str]]) -> None:
    _, tmp_path, _ = runs
    with sqlite3.connect(tmp_path / "app.db") as connection:
        dump = "\n".join(connection.iterdump())
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert {"inference_runs", "stress_jobs"} <= set(tables) and "sk-" not in dump
    assert found_in(dump.encode()) == []


def test_no_secret_in_any_answer(runs: tuple[Flask, Path, dict[str, str]]) -> None:
    app, _, ids = runs
    client = app.test_client()
    routes = [
        f"/api/v1/inference/runs/{ids['inference']}", f"/api/v1/inference/runs/{ids['bedrock']}",
        "/api/v1/inference/runs", f"/history/{ids['inference']}", "/history",
        f"/api/v1/stress-tests/{ids['stress']}", "/api/v1/stress-tests", f"/api/v1/stress-tests/{ids['stress']}/files",
        f"/api/v1/stress-tests/{ids['stress']}/log", f"/stress-tests/{ids['stress']}", "/stress-tests",
        f"/stress-tests/{ids['stress']}/log", f"/api/v1/results/{ids['stress']}", f"/results/{ids['stress']}",
        f"/api/v1/results/{ids['stress']}/export?format=json", "/api/v1/results",
        f"/api/v1/evaluations/{ids['evaluation']}", "/api/v1/evaluations", f"/evaluations/{ids['evaluation']}",
        f"/api/v1/evaluations/{ids['evaluation']}/log", f"/api/v1/evaluations/{ids['evaluation']}/samples",
        f"/api/v1/evaluations/{ids['evaluation']}/export?format=csv", "/evaluations", "/api/v1/models", "/models",
        "/api/v1/stats/overview", "/",
    ]
    files = client.get(f"/api/v1/stress-tests/{ids['stress']}/files").json["files"]
    routes += [f"/api/v1/stress-tests/{ids['stress']}/files/{f['name']}" for f in files]
    for route in routes:
        response = client.get(route)
        assert response.status_code == 200, (route, response.status_code)
        assert found_in(response.data) == [], route
    stress = client.get(f"/api/v1/stress-tests/{ids['stress']}").json
    assert "api_key" not in str(stress["params"].get("manual_config", {})).replace("api_key_given", "")
