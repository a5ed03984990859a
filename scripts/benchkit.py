"""Shared scaffolding of the benchmarks in scripts/: start the platform as scripts/start.sh does, and measure it.

Used by ``scripts/bench_relay.py`` and ``scripts/bench_stress_overhead.py`` as ``from benchkit import ...``:
they are run as ``.venv/bin/python scripts/bench_x.py``, which puts this folder first on ``sys.path``
(from any working directory). Standard library only, so it is cheap to import in a load-generator process.

* ``Platform``: the simulator, gunicorn (``config/gunicorn.conf.py``) and, with ``worker=True``, the stress
  worker, each in its own process group with a log file in a fresh temporary directory, on free loopback
  ports, with ``ENVIRONMENT=production``, a random secret key and the database, logs and stress folders
  inside that directory. ``start()`` applies the migrations (``create_app()``, as start.sh does: it also
  fails early on bad configuration), starts the processes and waits until they answer; ``stop()`` sends
  SIGTERM to each group (the worker first), then SIGKILL after 15 s.
* ``/proc`` readings: ``children``, ``cpu_seconds`` (one process), ``cpu_seconds_total`` (several),
  ``rss_mb``, ``machine_busy_s``.
* Small helpers: ``free_port``, ``wait_http``, ``http_json``, ``pct`` (percentile), ``median``.
* ``ThrowawayPostgres``: a PostgreSQL server for one run (tests/support/postgres.py's), to point
  ``DATABASE_URL`` at (``Platform(env={"DATABASE_URL": ...})``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
TICK = os.sysconf("SC_CLK_TCK")  # clock ticks a second, the unit of /proc CPU times


# --- statistics ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: list[float]) -> float:
    """Median of the values that are not NaN; NaN if none are."""
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


# --- network -------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, deadline_s: float) -> None:
    """Poll ``url`` until it answers 200; RuntimeError after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {deadline_s:g} s")


def http_json(method: str, url: str, body: Any = None, timeout: float = 10,
              headers: Mapping[str, str] | None = None) -> Any:
    """One JSON request; the decoded answer (None for an empty body). ``headers``: e.g. ``Platform.auth``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


# --- /proc ---------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (e.g. gunicorn's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads, not its children); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds_total(pids: Sequence[int]) -> float:
    """Sum of ``cpu_seconds`` over the pids; a process that is gone counts 0."""
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def rss_mb(pids: Sequence[int]) -> float:
    """Sum of the processes' resident memory (VmRSS), MiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine (everything but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


# --- the platform --------------------------------------------------------------------------------


class Platform:
    """The simulator, gunicorn and optionally the stress worker, started as scripts/start.sh does.

    ``prefix``: of the temporary directory's name. ``worker``: also run ``python -m backend.jobs.worker``.
    ``web_workers``: WEB_WORKERS (None: gunicorn.conf's default, one per core). ``pin``: PIN_WORKERS
    (None: unset, gunicorn.conf pins). ``models_file``: the catalogue (None: config/models.yaml).
    ``env``: more environment, applied last. ``simulator_args``: extra arguments for the simulator, e.g.
    ``["--profile", "sim-steady:decode_base_ms=5"]``.
    """

    def __init__(self, prefix: str = "bench_", *, worker: bool = False, web_workers: int | None = None,
                 pin: bool | None = None, models_file: Path | str | None = None,
                 env: Mapping[str, str] | None = None, simulator_args: Sequence[str] = ()) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.sim_port, self.web_port = free_port(), free_port()
        self.db_path = self.tmp / "app.db"
        self.outputs = self.tmp / "outputs"
        self.with_worker = worker
        self.simulator_args = list(simulator_args)
        self.env = {
            **os.environ,
            "ENVIRONMENT": "production",
            "PEP_SERVER__SECRET_KEY": secrets.token_hex(16),
            "HOST": "127.0.0.1",
            "PORT": str(self.web_port),
            "SIMULATOR_PORT": str(self.sim_port),
            "PEP_DATABASE__PATH": str(self.db_path),
            "PEP_LOGGING__DIR": str(self.tmp / "logs"),
            "PEP_STRESS__OUTPUTS_DIR": str(self.outputs),
            "PEP_STRESS__LOGS_DIR": str(self.tmp / "stress-logs"),
            "PEP_STRESS__DATASETS_DIR": str(self.tmp / "datasets"),
        }
        if models_file is not None:
            self.env["PEP_CATALOG__MODELS_FILE"] = str(models_file)
        if pin is not None:
            self.env["PIN_WORKERS"] = "1" if pin else "0"
        if web_workers:
            self.env["WEB_WORKERS"] = str(web_workers)
        self.env.update(env or {})
        # Production turns authentication on: one operator token for this run, in the environment only (a
        # command line is visible to every user of the machine). ``auth`` is the header every call sends.
        self.token = secrets.token_urlsafe(24)
        self.env.setdefault("API_TOKENS", f"bench:operator:{self.token}")
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.procs: list[subprocess.Popen[bytes]] = []
        # Process groups of the jobs the worker launched, as a benchmark saw them: killed by stop() only if
        # the worker could not end them, and only if their command line names this run's outputs folder.
        self.job_pgids: set[int] = set()

    @property
    def base(self) -> str:
        """The app's URL."""
        return f"http://127.0.0.1:{self.web_port}"

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / log_name, "ab") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        # As start.sh: fail early on bad configuration and apply the migrations, then start the processes.
        subprocess.run([str(PYTHON), "-c", "from backend.app import create_app; create_app()"],
                       cwd=ROOT, env=self.env, check=True, timeout=120, capture_output=True)
        self.sim = self._spawn([str(PYTHON), "-m", "backend.simulator", "--host", "127.0.0.1",
                                "--port", str(self.sim_port), *self.simulator_args], "simulator.log")
        self.web = self._spawn([str(GUNICORN), "--config", "config/gunicorn.conf.py"], "gunicorn.log")
        if self.with_worker:
            self.worker = self._spawn([str(PYTHON), "-m", "backend.jobs.worker"], "stress-worker.log")
        wait_http(f"http://127.0.0.1:{self.sim_port}/v1/models", 30)
        wait_http(f"{self.base}/health", 30)
        end = time.monotonic() + 10
        expected = int(self.env.get("WEB_WORKERS", os.cpu_count() or 1))
        while len(self.web_workers()) < expected and time.monotonic() < end:
            time.sleep(0.1)
        if self.with_worker:
            self._wait_worker(30)

    def _wait_worker(self, deadline_s: float) -> None:
        # The worker is up once it has written its heartbeat row.
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with contextlib.suppress(OSError, KeyError):
                if self.api("GET", "/api/v1/stress-tests?limit=1")["worker"]["alive"]:
                    return
            if self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.worker.returncode}); see {self.tmp}/stress-worker.log")
            time.sleep(0.2)
        raise RuntimeError(f"the stress worker did not report alive within {deadline_s:g} s")

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """One call of the platform's API, with this run's token."""
        return http_json(method, self.base + path, body, timeout, headers=self.auth)

    def web_workers(self) -> list[int]:
        """gunicorn's worker pids."""
        return children(self.web.pid)

    def stop(self) -> None:
        # Last started first: the worker, on SIGTERM, ends the jobs it follows (their own process groups).
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for pgid in self.job_pgids:
            try:
                cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.outputs).encode() in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)


# --- PostgreSQL ----------------------------------------------------------------------------------


class ThrowawayPostgres:
    """A PostgreSQL server for one benchmark run: tests/support/postgres.py's (Debian's PostgreSQL in a
    temporary folder, on a free loopback port, durability off), stopped and deleted by ``stop()``.

    ``start()`` returns the server's URL; ``database()`` creates an empty database on it and returns its
    URL (``postgresql+psycopg://...``, what ``DATABASE_URL`` takes); ``pids()`` lists its processes (for
    ``cpu_seconds_total``). psycopg is imported only here, so the SQLite benchmarks never need it.
    """

    def __init__(self, prefix: str = "bench_pg_") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.server: Any = None

    def start(self) -> str:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from tests.support.postgres import PostgresServer

        self.server = PostgresServer(self.folder).start()
        return self.server.url

    def database(self) -> str:
        from tests.support.postgres import create_database

        return create_database(self.server.url)[0]

    def pids(self) -> list[int]:
        """The server's processes: the postmaster and its children (a backend per connection among them)."""
        try:
            postmaster = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return []
        return [postmaster, *children(postmaster)]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
