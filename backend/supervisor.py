"""``python -m backend.supervisor``: run the platform's processes and keep them running.

scripts/start.sh sets up (venv, dependencies, migrations) and then execs this. It starts the model
simulator, gunicorn and the stress-test worker, each in its own session, so that a Ctrl-C at the
terminal reaches only the supervisor, which then stops them itself (with a grace period for the worker's
jobs and gunicorn's open streams).

- The simulator and the worker are restarted when they die, after a delay that doubles from 1 s to
  30 s while they keep dying, and is back to 1 s once a child has stayed up for a minute.
- gunicorn is essential: when it dies the others are stopped and the supervisor exits with its status
  (128 + the signal's number when a signal killed it, as shells report it).
- SIGTERM, SIGINT (Ctrl-C) or SIGHUP stop every child (SIGTERM, then SIGKILL to its process group after
  a grace period) and the supervisor exits 0.

Every start, death and restart is logged to stderr and to ``<logging.dir>/supervisor.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from backend.config import PROJECT_ROOT, load_config, resolve_path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # backend/metrics; not imported here: the supervisor counts nothing

log = logging.getLogger("backend.supervisor")

POLL_S = 0.1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Longer than gunicorn's graceful_timeout (10 s, config/gunicorn.conf.py) so that gunicorn can end its
# own stop, and than the worker's stress.kill_grace_s (5 s) for its evalscope jobs.
GRACE_S = 15.0
HEALTH_DEADLINE_S = 30.0


@dataclasses.dataclass
class Backoff:
    """Delays before restarting a child that keeps dying: initial_s, doubling up to cap_s; a child that
    stayed up stable_s or longer starts again from initial_s."""

    initial_s: float = 1.0
    cap_s: float = 30.0
    stable_s: float = 60.0
    _next_s: float = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def delay_after(self, uptime_s: float) -> float:
        if uptime_s >= self.stable_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.cap_s)
        return delay


@dataclasses.dataclass
class ChildSpec:
    name: str
    argv: list[str]
    essential: bool = False  # its death ends the platform; the others are restarted
    log_path: Path | None = None  # stdout and stderr appended here; None: the supervisor's own


@dataclasses.dataclass
class Child:
    spec: ChildSpec
    backoff: Backoff
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0


def describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def shell_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def open_log(path: Path | None) -> contextlib.AbstractContextManager[Any]:
    return open(path, "ab") if path else contextlib.nullcontext()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Supervisor:
    def __init__(self, specs: list[ChildSpec], *, backoff: Backoff | None = None, grace_s: float = GRACE_S,
                 cwd: Path = PROJECT_ROOT) -> None:
        self.children = [Child(spec, dataclasses.replace(backoff or Backoff())) for spec in specs]
        self.grace_s = grace_s
        self.cwd = cwd
        self._signals: list[int] = []

    def run(self) -> int:
        """Until a stop signal (returns 0) or the death of an essential child (returns its status)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        try:
            for child in self.children:
                self._start(child)
            return self._supervise()
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _supervise(self) -> int:
        while not self._signals:
            for child in self.children:
                if child.process is None:
                    if time.monotonic() >= child.restart_at:
                        self._start(child)
                    continue
                returncode = child.process.poll()
                if returncode is None:
                    continue
                uptime = time.monotonic() - child.started_at
                if child.spec.essential:
                    log.error("%s (pid %d) %s after %.1f s: stopping the platform",
                              child.spec.name, child.process.pid, describe(returncode), uptime)
                    return shell_status(returncode)
                delay = child.backoff.delay_after(uptime)
                log.warning("%s (pid %d) %s after %.1f s; restarting in %g s",
                            child.spec.name, child.process.pid, describe(returncode), uptime, delay)
                child.process = None
                child.restart_at = time.monotonic() + delay
            time.sleep(POLL_S)
        log.info("%s: stopping", signal.Signals(self._signals[0]).name)
        return 0

    def _start(self, child: Child) -> None:
        spec = child.spec
        with open_log(spec.log_path) as out:
            child.process = subprocess.Popen(
                spec.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT if out else None, start_new_session=True,
            )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)%s", spec.name, child.process.pid,
                 f", output to {spec.log_path}" if spec.log_path else "")

    def _stop_all(self) -> None:
        """SIGTERM to every child (to the group of one that died first, for what it left, such as
        gunicorn's workers), then SIGKILL to every process group still alive after the grace period."""
        stopping = [(child.spec.name, child.process) for child in self.children if child.process is not None]
        for child in self.children:
            child.process = None
        for _name, process in stopping:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the leader stops its own children
            else:
                signal_group(process.pid, signal.SIGTERM)
        signals_before = len(self._signals)
        deadline = time.monotonic() + self.grace_s
        # A signal while stopping (a second Ctrl-C) means "now".
        while time.monotonic() < deadline and len(self._signals) == signals_before:
            if not any(process.poll() is None or group_alive(process.pid) for _name, process in stopping):
                break
            time.sleep(POLL_S)
        for name, process in stopping:
            process.poll()  # a leader that has just ended is reaped, so that it does not count as alive
            if group_alive(process.pid):
                log.warning("%s (pid %d): SIGKILL to its process group", name, process.pid)
                signal_group(process.pid, signal.SIGKILL)
            log.info("%s (pid %d) %s", name, process.pid, describe(process.wait()))


def platform_children(config: dict[str, Any], log_dir: Path) -> list[ChildSpec]:
    python = sys.executable
    return [
        ChildSpec("simulator", [python, "-m", "backend.simulator", "--host", "127.0.0.1",
                                "--port", str(config["simulator"]["port"])], log_path=log_dir / "simulator.log"),
        ChildSpec("gunicorn", [python, "-m", "gunicorn", "--config", "config/gunicorn.conf.py"], essential=True),
        # The one job worker (every kind: stress tests, capacity searches' probes, evaluations); on SIGTERM it
        # stops the jobs it runs (what they finished kept). Its name and log keep the stress worker's.
        ChildSpec("stress-worker", [python, "-m", "backend.jobs.worker"], log_path=log_dir / "stress-worker.log"),
    ]


def answers(url: str) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an http_proxy
    try:
        with direct.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status
        return False


def announce_when_healthy(host: str, port: int, simulator_port: int) -> None:
    urls = [f"http://127.0.0.1:{port}/health"]
    if host not in ("127.0.0.1", "0.0.0.0", "::", ""):
        urls.append(f"http://{host}:{port}/health")
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    healthy = False
    while not healthy and time.monotonic() < deadline:
        healthy = any(answers(url) for url in urls)
        if not healthy:
            time.sleep(0.2)
    note = "" if healthy else " (not answering /health yet)"
    print(f"Performance Evaluation Platform: http://{host}:{port}{note}  "
          f"(simulator on 127.0.0.1:{simulator_port}; Ctrl-C stops)", flush=True)


def configure_logging(path: Path) -> None:
    formatter = logging.Formatter("%(asctime)s supervisor: %(message)s")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(path)):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main() -> int:
    config = load_config()
    log_dir = resolve_path(config["logging"]["dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(log_dir / "supervisor.log")
    metrics_dir = metrics_folder()
    supervisor = Supervisor(platform_children(config, log_dir))
    server = config["server"]
    threading.Thread(target=announce_when_healthy, daemon=True,
                     args=(server["host"], int(server["port"]), int(config["simulator"]["port"]))).start()
    try:
        return supervisor.run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def metrics_folder() -> Path | None:
    """Where gunicorn's workers and the job worker keep their Prometheus counters (``PROMETHEUS_MULTIPROC_DIR``,
    inherited by every child), so that /metrics adds up every process: a fresh folder each start, removed
    at the end (counters start at 0 with the platform, as Prometheus expects after a restart). One the
    operator set is used as it is, and kept; None then."""
    if os.environ.get(MULTIPROC_ENV):
        return None
    folder = Path(tempfile.mkdtemp(prefix="pep-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
