"""Running evaluation jobs in tests: an app on a temporary folder, the worker, waiting for jobs."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flask import Flask

from backend.app import create_app
from tests.conftest import TEST_MODELS
from tests.support.simulator import PROJECT_ROOT
from tests.support.stress import wait_for

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval, from its closed formula (independent of the code under test)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def eval_settings(tmp_path: Path) -> dict[str, Any]:
    return {"outputs_dir": str(tmp_path / "eval-outputs"), "logs_dir": str(tmp_path / "eval-logs"),
            "datasets_dir": str(tmp_path / "eval-datasets"), "sse_poll_s": 0.2, "heartbeat_s": 1,
            "retries": 0, "request_timeout_s": 10}


def make_app(tmp_path: Path, simulator_port: int, models_file: str = TEST_MODELS, **evaluations: Any) -> Flask:
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": models_file},
        "simulator": {"port": simulator_port},
        "stress": {"outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "stress-logs"),
                   "poll_interval_s": 0.2, "kill_grace_s": 2, "worker_stale_s": 3},
        "evaluations": {**eval_settings(tmp_path), **evaluations},
    })


def worker_process(tmp_path: Path, sim_port: int, models_file: str = TEST_MODELS) -> subprocess.Popen[bytes]:
    """The worker as its own process on make_app's folders, so that a test can kill it."""
    settings = eval_settings(tmp_path)
    env = {**os.environ, "ENVIRONMENT": "test", "PEP_DATABASE__PATH": str(tmp_path / "app.db"),
           "PEP_LOGGING__DIR": str(tmp_path / "logs"), "PEP_CATALOG__MODELS_FILE": models_file,
           "SIMULATOR_PORT": str(sim_port), "PEP_STRESS__OUTPUTS_DIR": str(tmp_path / "outputs"),
           "PEP_STRESS__LOGS_DIR": str(tmp_path / "stress-logs"), "PEP_STRESS__POLL_INTERVAL_S": "0.2",
           "PEP_STRESS__WORKER_STALE_S": "3",
           **{f"PEP_EVALUATIONS__{key.upper()}": str(value) for key, value in settings.items()}}
    with (tmp_path / "worker.out").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "backend.jobs.worker"], cwd=PROJECT_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def job_of(client: Any, job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/evaluations/{job_id}")
    assert response.status_code == 200, response.json
    return response.json


def finished(client: Any, job_id: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: (job := job_of(client, job_id))["is_finished"] and job, timeout, f"evaluation {job_id}")


def create(client: Any, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/evaluations", json=body)
    assert response.status_code == 201, response.json
    return response.json


def bundled_id(client: Any, kind: str) -> str:
    rows = client.get("/api/v1/datasets").json["datasets"]
    return next(row["id"] for row in rows if row["bundled"] and row["kind"] == kind)


def upload(client: Any, kind: str, name: str, content: bytes, filename: str) -> dict[str, Any]:
    response = client.post("/api/v1/datasets", data={"kind": kind, "name": name,
                                                     "file": (io.BytesIO(content), filename)},
                           content_type="multipart/form-data")
    assert response.status_code in (200, 201), response.json
    return response.json


ANSWERING = {"sim-answer-a": (3, 0.75), "sim-answer-b": (12, 0.6)}  # seed, accuracy (backend/simulator/profiles.py)


def answered_right(model: str, item_id: str) -> bool:
    """The simulator's documented rule (backend/simulator/answers.py), recomputed here."""
    import hashlib

    seed, accuracy = ANSWERING[model]
    return int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) / 2**32 < accuracy


def catalogue_with_answerers(tmp_path: Path) -> str:
    """The tests' catalogue plus the answering simulators and the judge."""
    import yaml

    data = yaml.safe_load(Path(TEST_MODELS).read_text())
    for key in ("sim-answer-a", "sim-answer-b", "sim-judge"):
        data["models"][key] = {"name": key, "provider": "simulator", "model_id": key}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)
