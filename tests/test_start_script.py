"""scripts/start.sh and its supervisor (backend/supervisor.py): a dead simulator or stress worker is
restarted while gunicorn keeps serving; SIGTERM stops everything with status 0; a dead gunicorn stops
everything with its status. Every process a test starts carries a marker in its environment, so that
whatever is left (in any session) can be found and killed, and its absence asserted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from backend.supervisor import Backoff, shell_status
from tests.support.simulator import PROJECT_ROOT, free_port

T = TypeVar("T")
MARKER = "START_SCRIPT_TEST_RUN"
STARTUP_DEADLINE_S = 90.0  # set-up, migrations, then three Python processes on two cores
RESTART_DEADLINE_S = 30.0
CHILD_NAMES = {"backend.simulator": "simulator", "gunicorn": "gunicorn", "backend.jobs.worker": "stress-worker"}


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def proc_read(pid: int | str, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone, or not ours
        return b""


def marked_pids(marker: str) -> list[int]:
    """Every live process whose environment holds ``MARKER=marker`` (zombies have an empty environ)."""
    needle = f"{MARKER}={marker}".encode()
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and needle in proc_read(entry.name, "environ").split(b"\0")]


class Platform:
    """``scripts/start.sh`` on free ports, with its database, logs and outputs under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.simulator_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.marker = uuid.uuid4().hex
        self.log_dir = root / "logs"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Platform:
        env = {
            **os.environ,
            MARKER: self.marker,
            "ENVIRONMENT": "test",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "SIMULATOR_PORT": str(self.simulator_port),
            "WEB_WORKERS": "1",
            "PIN_WORKERS": "0",
            "PEP_DATABASE__PATH": str(self.root / "app.db"),
            "PEP_LOGGING__DIR": str(self.log_dir),
            "PEP_STRESS__OUTPUTS_DIR": str(self.root / "outputs" / "stress"),
            "PEP_STRESS__LOGS_DIR": str(self.log_dir / "stress"),
            "PEP_STRESS__DATASETS_DIR": str(self.root / "datasets"),
            "PEP_CATALOG__MODELS_FILE": str(PROJECT_ROOT / "tests" / "data" / "models.yaml"),
        }
        with open(self.root / "start.out", "ab") as out:
            self.process = subprocess.Popen(
                [str(PROJECT_ROOT / "scripts" / "start.sh")], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_until(self._started, STARTUP_DEADLINE_S, "start.sh to answer /health")
        wait_until(lambda: len(self.children()) == 3, RESTART_DEADLINE_S, "the three children")
        return self

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"start.sh exited with {self.process.returncode}:\n{self.output()}")
        return self.healthy()

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def simulator_answers(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.simulator_port}/v1/models", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def children(self) -> dict[str, int]:
        """The supervisor's children by name (start.sh execs the supervisor: same pid)."""
        assert self.process is not None
        found = {}
        for entry in Path("/proc").iterdir():
            stat = proc_read(entry.name, "stat") if entry.name.isdigit() else b""
            if not stat or int(stat.rsplit(b")", 1)[1].split()[1]) != self.process.pid:
                continue
            argv = proc_read(entry.name, "cmdline").decode(errors="replace").split("\0")
            found.update({CHILD_NAMES[arg]: int(entry.name) for arg in argv if arg in CHILD_NAMES})
        return found

    def worker_heartbeats(self, pid: int) -> bool:
        with closing(sqlite3.connect(self.root / "app.db", timeout=5)) as connection:
            return connection.execute("SELECT count(*) FROM stress_workers WHERE pid = ?", (pid,)).fetchone()[0] > 0

    def supervisor_log(self) -> str:
        path = self.log_dir / "supervisor.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self) -> str:
        return (self.root / "start.out").read_text(errors="replace")

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def kill_all(self) -> None:
        """Whatever a test left running, in any process group."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in marked_pids(self.marker):
            with suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)
        wait_until(lambda: not marked_pids(self.marker), 10, "the killed processes to vanish")


def run_platform(root: Path) -> Iterator[Platform]:
    platform = Platform(root)
    try:
        yield platform.start()
    finally:
        platform.kill_all()


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """For the tests that leave it running (a child killed and restarted)."""
    yield from run_platform(tmp_path_factory.mktemp("platform"))


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    yield from run_platform(tmp_path)


def restarted(platform: Platform, name: str, old_pid: int, gunicorn_pid: int) -> int | None:
    """The child's new pid once it has one; on every poll, gunicorn (the same master) still serves."""
    assert platform.healthy(), "gunicorn stopped answering /health"
    children = platform.children()
    assert children.get("gunicorn") == gunicorn_pid
    pid = children.get(name)
    return pid if pid not in (None, old_pid) else None


def test_killed_stress_worker_is_restarted_while_gunicorn_serves(shared_platform: Platform) -> None:
    before = shared_platform.children()
    old, gunicorn = before["stress-worker"], before["gunicorn"]
    os.kill(old, signal.SIGKILL)

    new = wait_until(lambda: restarted(shared_platform, "stress-worker", old, gunicorn), RESTART_DEADLINE_S,
                     "a new stress worker")
    wait_until(lambda: shared_platform.healthy() and shared_platform.worker_heartbeats(new), RESTART_DEADLINE_S,
               f"a heartbeat of the new worker (pid {new})")
    stress = requests.get(shared_platform.url + "/api/v1/stress-tests", timeout=5).json()
    assert stress["worker"]["alive"] is True
    log = shared_platform.supervisor_log()
    assert f"stress-worker (pid {old}) killed by SIGKILL" in log
    assert f"started stress-worker (pid {new})" in log


def test_killed_simulator_is_restarted_while_gunicorn_serves(shared_platform: Platform) -> None:
    before = shared_platform.children()
    old, gunicorn = before["simulator"], before["gunicorn"]
    os.kill(old, signal.SIGKILL)

    new = wait_until(lambda: restarted(shared_platform, "simulator", old, gunicorn), RESTART_DEADLINE_S,
                     "a new simulator")
    wait_until(lambda: restarted(shared_platform, "simulator", old, gunicorn) == new
               and shared_platform.simulator_answers(), RESTART_DEADLINE_S, "the new simulator to answer")
    assert f"simulator (pid {old}) killed by SIGKILL" in shared_platform.supervisor_log()


def test_sigterm_stops_every_child_and_exits_0(platform: Platform) -> None:
    children = platform.children()
    assert platform.process is not None
    os.kill(platform.process.pid, signal.SIGTERM)

    assert platform.wait_exit() == 0, platform.output()
    wait_until(lambda: not marked_pids(platform.marker), 5, "every process of the platform to end")
    log = platform.supervisor_log()
    assert "SIGTERM: stopping" in log
    for name, pid in children.items():
        assert f"{name} (pid {pid}) exited with status 0" in log


def test_dead_gunicorn_stops_the_platform_with_its_status(platform: Platform) -> None:
    children = platform.children()
    os.kill(children["gunicorn"], signal.SIGKILL)

    assert platform.wait_exit() == 137, platform.output()
    # gunicorn's own workers too (orphaned in its process group when the master was killed).
    wait_until(lambda: not marked_pids(platform.marker), 5, "every process of the platform to end")
    log = platform.supervisor_log()
    assert f"gunicorn (pid {children['gunicorn']}) killed by SIGKILL" in log
    assert "stopping the platform" in log


# --- the supervisor with fake children -----------------------------------------------------------

FAKE_PLATFORM = """
import sys
from pathlib import Path
from backend.supervisor import Backoff, ChildSpec, Supervisor, configure_logging

configure_logging(Path(sys.argv[1]))
essential_code, other_code = sys.argv[2], sys.argv[3]
children = [ChildSpec("essential", [sys.executable, "-c", essential_code], essential=True),
            ChildSpec("other", [sys.executable, "-c", other_code])]
sys.exit(Supervisor(children, backoff=Backoff(initial_s=0.1, cap_s=0.4), grace_s=5).run())
"""
SLEEP = "import time; time.sleep(60)"


def run_fake(tmp_path: Path, essential_code: str, other_code: str) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "fake_platform.py"
    script.write_text(FAKE_PLATFORM)
    log = tmp_path / "supervisor.log"
    process = subprocess.Popen([sys.executable, str(script), str(log), essential_code, other_code],
                               cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    return process, log


def test_a_child_that_keeps_dying_is_restarted_with_a_doubling_delay(tmp_path: Path) -> None:
    process, log = run_fake(tmp_path, SLEEP, "import sys; sys.exit(3)")
    try:
        wait_until(lambda: log.exists() and log.read_text().count("restarting in 0.4 s") >= 2, 20,
                   "restarts at the capped delay")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    delays = [line.rsplit("restarting in ", 1)[1] for line in text.splitlines() if "restarting in" in line]
    assert delays[:4] == ["0.1 s", "0.2 s", "0.4 s", "0.4 s"]
    assert "other (pid" in text and "exited with status 3" in text
    assert "essential (pid" in text and "killed by SIGTERM" in text


def test_the_death_of_the_essential_child_stops_the_others_and_gives_its_status(tmp_path: Path) -> None:
    process, log = run_fake(tmp_path, "import sys, time; time.sleep(0.5); sys.exit(3)", SLEEP)
    try:
        assert process.wait(timeout=20) == 3
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    assert "exited with status 3" in text and "stopping the platform" in text
    assert "other (pid" in text and "killed by SIGTERM" in text


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=1, cap_s=30, stable_s=60)
    assert [backoff.delay_after(uptime_s=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay_after(uptime_s=61) == 1
    assert backoff.delay_after(uptime_s=2) == 2


@pytest.mark.parametrize(("returncode", "status"), [(0, 0), (3, 3), (-signal.SIGKILL, 137), (-signal.SIGTERM, 143)])
def test_exit_status_as_a_shell_reports_it(returncode: int, status: int) -> None:
    assert shell_status(returncode) == status
