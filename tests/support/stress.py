"""Running stress jobs in tests: an app on a temporary folder, the worker in a thread, waiting for jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

from backend.app import create_app
from backend.stress.worker import run_worker
from tests.conftest import TEST_MODELS


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_app(tmp_path: Path, simulator_port: int, **stress: Any) -> Flask:
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "simulator": {"port": simulator_port},
        "stress": {"outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "stress-logs"),
                   "datasets_dir": str(tmp_path / "datasets"), "level_pause_s": 1, "poll_interval_s": 0.2,
                   "kill_grace_s": 2, "worker_stale_s": 3, "sse_poll_s": 0.2, "heartbeat_s": 1, **stress},
    })


class ThreadWorker:
    def __init__(self, app: Flask) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_worker, args=(app, self.stop), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def job_of(client: Any, job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/stress-tests/{job_id}")
    assert response.status_code == 200
    return response.json


def finished(client: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (job := job_of(client, job_id))["is_finished"] and job, timeout, f"job {job_id} to end")
