"""Run the built-in model simulator (``python -m backend.simulator``) as a subprocess for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SimulatorProcess:
    """``with SimulatorProcess(extra_args=["--profile", "sim-fast:max_batch=2"]) as sim: ...``"""

    def __init__(self, port: int | None = None, seed: int = 0, extra_args: Sequence[str] = (),
                 host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        self.seed = seed
        self.extra_args = list(extra_args)
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._log = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        assert self._tmpdir is not None, "simulator not started"
        return Path(self._tmpdir.name) / "simulator.log"

    def start(self) -> SimulatorProcess:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="simulator-")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [
            sys.executable,
            "-m",
            "backend.simulator",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--seed",
            str(self.seed),
            *self.extra_args,
        ]
        self._process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"simulator exited with {self._process.returncode}: {self.log_text()}")
            try:
                # Any HTTP answer counts: with --api-key this is a 401, and the server is up.
                requests.get(f"{self.base_url}/models", timeout=2)
                return
            except requests.RequestException:  # not listening yet, or a busy machine
                time.sleep(0.05)
        raise TimeoutError(f"simulator not answering on port {self.port}: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def stats(self) -> dict[str, int]:
        response = requests.get(f"{self.url}/sim/stats", timeout=5)
        response.raise_for_status()
        return response.json()

    def requests(self, since: float | None = None) -> list[dict]:
        params = {} if since is None else {"since": repr(since)}
        response = requests.get(f"{self.url}/sim/requests", params=params, timeout=5)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
