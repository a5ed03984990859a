"""Run the platform as scripts/start.sh does (gunicorn, gevent workers) on a free port, for tests."""

from __future__ import annotations

import os
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
    """

    def __init__(self, env: Mapping[str, str] | None = None, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.workers = workers
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._out = None

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
                    return self
            except requests.RequestException:  # not listening yet, or a busy machine
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not become ready")

    def output(self) -> str:
        path = self.root / "gunicorn.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log*")))

    def stop(self) -> None:
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
