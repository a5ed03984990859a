"""Run the platform as scripts/start.sh does (gunicorn, gevent workers) on a free port, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import requests

from tests.support.simulator import PROJECT_ROOT, free_port

STARTUP_DEADLINE_S = 30.0


class AppServer:
    """``with AppServer(env={...}) as app: requests.get(app.url + "/health")``.

    Every run gets its own data, log and output folders in a temporary directory, so tests never see
    each other's leftovers; ``env`` adds or overrides environment variables (configuration keys).
    ``stress_worker=True`` also runs ``python -m backend.jobs.worker`` beside gunicorn, as
    scripts/start.sh does, on the same database and folders; it is stopped (SIGTERM: it ends its jobs) first.
    """

    def __init__(self, env: Mapping[str, str] | None = None, workers: int = 1, stress_worker: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.workers = workers
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._out = None
        self.stress_worker = stress_worker
        self._worker: subprocess.Popen[bytes] | None = None
        self._worker_out = None
        self._env: dict[str, str] | None = None

    @property
    def root(self) -> Path:
        assert self._tmpdir is not None
        return Path(self._tmpdir.name)

    @property
    def database_path(self) -> Path:
        return self.root / "app.db"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def start(self) -> AppServer:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="app-server-")
        env = {
            **os.environ,
            "ENVIRONMENT": "test",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_WORKERS": str(self.workers),
            "PIN_WORKERS": "0",
            "PEP_DATABASE__PATH": str(self.database_path),
            "PEP_LOGGING__DIR": str(self.log_dir),
            "PEP_STRESS__OUTPUTS_DIR": str(self.root / "outputs" / "stress"),
            "PEP_STRESS__LOGS_DIR": str(self.log_dir / "stress"),
            "PEP_STRESS__DATASETS_DIR": str(self.root / "datasets"),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self._out = open(self.root / "gunicorn.out", "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.conf.py"],
            cwd=PROJECT_ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited: {self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    self._env = env
                    if self.stress_worker:
                        self.start_stress_worker()
                    return self
            except requests.RequestException:  # not listening yet, or a busy machine
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not become ready")

    def start_stress_worker(self) -> None:
        """The stress worker on this server's database and folders; after gunicorn is up, so that the
        database and its migrations exist."""
        assert self._env is not None, "start the server first"
        if self._worker is not None and self._worker.poll() is None:
            return
        self._worker_out = open(self.root / "worker.out", "ab")  # noqa: SIM115 - closed in stop_stress_worker()
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "backend.jobs.worker"], cwd=PROJECT_ROOT, env=dict(self._env),
            stdout=self._worker_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def worker_output(self) -> str:
        path = self.root / "worker.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self) -> str:
        path = self.root / "gunicorn.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log*")))

    def stop_stress_worker(self) -> None:
        """SIGTERM: the worker ends the jobs it runs and stops; SIGKILL to its group if it does not."""
        if self._worker is not None and self._worker.poll() is None:
            self._worker.terminate()
            try:
                self._worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._worker.pid, signal.SIGKILL)
                self._worker.wait()
        self._worker = None
        if self._worker_out is not None:
            self._worker_out.close()
            self._worker_out = None

    def stop(self) -> None:
        self.stop_stress_worker()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._out is not None:
            self._out.close()
            self._out = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
