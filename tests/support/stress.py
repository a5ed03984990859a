"""Running stress jobs in tests: an app on a temporary folder, the worker in a thread, waiting for jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flask import Flask

from backend.app import create_app
from backend.jobs.worker import run_worker
from tests.conftest import TEST_MODELS
from tests.support.simulator import PROJECT_ROOT

# sim-fast at 40 ms a token, 20 tokens: a request takes about 0.8 s, long enough to watch.
SLOW_SIM_ARGS = ("--profile", "sim-fast:decode_base_ms=40,min_output_tokens=20,max_output_tokens=20")


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


def offline_app(tmp_path: Path, monkeypatch: Any, **stress: Any) -> Flask:
    """An app for page tests: no AWS account, a simulator port where nothing listens (nothing is called),
    its database and stress folders under ``tmp_path``."""
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "simulator": {"port": 9},
        "stress": {"outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "stress-logs"),
                   "datasets_dir": str(tmp_path / "datasets"), **stress},
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


def job_pgid(client: Any, job_id: str) -> int:
    """The process group of a job's evalscope, once the worker has recorded it."""
    from backend.db import db
    from backend.stress.models import StressJob

    with client.application.app_context():
        # a worker process just started takes a few seconds to load the app and claim (more on a busy machine)
        return wait_for(lambda: db.session.get(StressJob, job_id, populate_existing=True).pgid, 30, "a pgid")


def group_gone(pgid: int) -> bool:
    """No live process left in the group. An orphaned evalscope (its worker was SIGKILLed) is reaped by
    init, possibly a moment later, so zombies count as gone; our own children are reaped by the worker."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def worker_process(tmp_path: Path, sim_port: int, command: Sequence[str] = ("-m", "backend.jobs.worker"),
                   ) -> subprocess.Popen[bytes]:
    """The worker as its own process (``python -m backend.jobs.worker``) on make_app's folders, so that a
    test can kill it; ``command`` may run it through a wrapper instead."""
    env = {**os.environ, "ENVIRONMENT": "test", "PEP_DATABASE__PATH": str(tmp_path / "app.db"),
           "PEP_LOGGING__DIR": str(tmp_path / "logs"), "PEP_CATALOG__MODELS_FILE": TEST_MODELS,
           "SIMULATOR_PORT": str(sim_port), "PEP_STRESS__OUTPUTS_DIR": str(tmp_path / "outputs"),
           "PEP_STRESS__LOGS_DIR": str(tmp_path / "stress-logs"), "PEP_STRESS__LEVEL_PAUSE_S": "1",
           "PEP_STRESS__POLL_INTERVAL_S": "0.2", "PEP_STRESS__WORKER_STALE_S": "3"}
    with (tmp_path / "worker.out").open("ab") as log:
        return subprocess.Popen([sys.executable, *command], cwd=PROJECT_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
