"""Extra "hosts" on this machine for tests of what crosses hosts: each a network namespace joined to the
test's own namespace by a veth pair (``10.231.<n>.1`` on our side, ``10.231.<n>.2`` on its side), whose
processes run in their own PID namespace (``unshare --pid --fork --kill-child --mount-proc``), so that
its pids mean nothing elsewhere and one SIGKILL ends every process of the host at once, as a power cut.

    with NetnsHost(1) as host:
        host.spawn("sim", [python, "-m", "backend.simulator", ...])   # inside its namespaces
        ... host.address ...                                          # 10.231.1.2, reachable from here
        host.kill()                                                   # SIGKILL to all of its processes

Needs root and iproute2 (``available()`` says whether this machine has both). Traffic goes only to the
namespaces' own addresses and to our side of their links.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tests.support.simulator import PROJECT_ROOT

SUBNET = "10.231"


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("unshare") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class NetnsHost:
    def __init__(self, number: int, log_dir: Path) -> None:
        self.number = number
        self.name = f"pep-{uuid.uuid4().hex[:6]}-{number}"
        self.gateway = f"{SUBNET}.{number}.1"  # our side of the link
        self.address = f"{SUBNET}.{number}.2"  # the host's side
        self.network = f"{SUBNET}.{number}.0/24"
        self.log_dir = log_dir
        self._outer = f"v{self.name[4:10]}{number}o"[:15]
        self._inner = f"v{self.name[4:10]}{number}i"[:15]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[object] = []

    def start(self) -> NetnsHost:
        _ip("netns", "add", self.name)
        _ip("link", "add", self._outer, "type", "veth", "peer", "name", self._inner)
        _ip("link", "set", self._inner, "netns", self.name)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self._outer)
        _ip("link", "set", self._outer, "up")
        for args in (("addr", "add", f"{self.address}/24", "dev", self._inner), ("link", "set", self._inner, "up"),
                     ("link", "set", "lo", "up")):
            _ip("-n", self.name, *args)
        return self

    def reach(self, address: str) -> None:
        """Route ``address`` (one of this machine's own, on another host's link) through this host's link."""
        _ip("-n", self.name, "route", "add", f"{address}/32", "via", self.gateway)

    def spawn(self, label: str, command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """``command`` in this host's network and in a PID namespace of its own (one per process: the host's
        processes cannot see each other's pids either, which is harsher than one machine, never kinder)."""
        log = open(self.log_dir / f"{self.name}-{label}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
             *command], cwd=PROJECT_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes[label] = process
        return process

    def log(self, label: str) -> str:
        return (self.log_dir / f"{self.name}-{label}.log").read_text(errors="replace")

    def kill(self, label: str | None = None) -> None:
        """SIGKILL: ``unshare --kill-child`` takes its child (the PID namespace's init) with it, and the
        kernel ends every process of a namespace whose init dies. Every process of the host, or one."""
        for name, process in self.processes.items():
            if label is None or name == label:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self._outer], capture_output=True, timeout=10)

    def __enter__(self) -> NetnsHost:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
