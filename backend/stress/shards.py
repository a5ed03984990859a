"""One stress test over several load generators (shards): the runner of a sharded job and its barrier.

    python -m backend.stress.shards SPEC.json --outputs-dir=<the job's output folder>

``SPEC.json`` (written by ``backend.stress.kind``) holds ``{"commands": [[argv of shard 0], ...],
"barrier": "<folder>", "levels": <number of levels>}``. The runner

- takes ``PEP_TARGET_API_KEY`` out of its own environment and hands it to each shard's environment only,
  with ``PEP_SHARD_BARRIER`` (the folder) and ``PEP_SHARD_INDEX``;
- starts every shard in the runner's own process group (the worker signals that group: a cancel reaches
  every shard, so the runner forwards nothing and waits for them); their output goes to the job's log;
- agrees each level's common start: when every shard has written ``ready.<level>.<shard>``, it writes
  ``go.<level>`` holding a wall-clock time 0.1 s ahead, at which every shard starts that level
  (``backend.stress.evalscope_entry`` waits for it);
- exits 0 when every shard did; when one exits non-zero it terminates the others and exits with that code.

``--outputs-dir=`` is in its command line because the worker recognises a job's process by it
(``StressKind.process_marker``). The barrier is a small interface (``arrive``/``wait_go`` for a shard,
``ready``/``release`` for the runner): here files in a folder on one host; shards on several hosts
would agree through the database instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from backend.stress.secrets import ENV_VAR

BARRIER_ENV = "PEP_SHARD_BARRIER"
INDEX_ENV = "PEP_SHARD_INDEX"
START_AHEAD_S = 0.1  # go.<level> names a start this far ahead, so every shard reads it before
POLL_S = 0.005
WAIT_BOUND_S = 600.0  # a shard gives up waiting for the others' start of a level after this


class BarrierTimeout(RuntimeError):
    """The other shards never became ready for a level."""


class Barrier(Protocol):
    def arrive(self, level: int, shard: int) -> None: ...
    def wait_go(self, level: int, timeout_s: float = WAIT_BOUND_S) -> float: ...
    def ready(self, level: int, shards: int) -> bool: ...
    def release(self, level: int, at: float) -> None: ...


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class FolderBarrier:
    """The barrier as files in one folder (shards on one host)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def arrive(self, level: int, shard: int) -> None:
        _write_atomic(self.folder / f"ready.{level}.{shard}", f"{time.time()!r}\n")

    def wait_go(self, level: int, timeout_s: float = WAIT_BOUND_S) -> float:
        """The agreed wall-clock start of ``level``, once the runner has released it."""
        deadline = time.monotonic() + timeout_s
        path = self.folder / f"go.{level}"
        while True:
            with contextlib.suppress(OSError, ValueError):
                return float(path.read_text(encoding="utf-8"))
            if time.monotonic() > deadline:
                raise BarrierTimeout(f"shard barrier: no common start for level {level + 1} within {timeout_s:g} s "
                                     f"(another shard never became ready; {self.folder})")
            time.sleep(POLL_S)

    def ready(self, level: int, shards: int) -> bool:
        return all((self.folder / f"ready.{level}.{shard}").exists() for shard in range(shards))

    def release(self, level: int, at: float) -> None:
        _write_atomic(self.folder / f"go.{level}", f"{at!r}\n")


def wait_for_start(barrier: Barrier, level: int, shard: int) -> float:
    """A shard's side: say it is ready for ``level``, wait for the common start, sleep until it; returns it."""
    barrier.arrive(level, shard)
    start = barrier.wait_go(level)
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)
    return start


def shard_env(environ: dict[str, str], barrier: Path, index: int, api_key: str | None) -> dict[str, str]:
    env = {key: value for key, value in environ.items() if key != ENV_VAR}
    env.update({BARRIER_ENV: str(barrier), INDEX_ENV: str(index)})
    if api_key:
        env[ENV_VAR] = api_key
    return env


def run(spec: dict, environ: dict[str, str] | None = None) -> int:
    """Start the shards, release each level when all are ready, and return the exit code (see the docstring)."""
    environ = dict(os.environ if environ is None else environ)
    api_key = os.environ.pop(ENV_VAR, None)
    environ.pop(ENV_VAR, None)
    folder = Path(spec["barrier"])
    folder.mkdir(parents=True, exist_ok=True)
    barrier = FolderBarrier(folder)
    commands: list[list[str]] = [list(map(str, command)) for command in spec["commands"]]
    levels = int(spec["levels"])
    # SIGTERM reaches the whole group (every shard): stay alive to wait for them and report their code.
    signal.signal(signal.SIGTERM, lambda *_: None)
    children = [subprocess.Popen(command, env=shard_env(environ, folder, index, api_key), stdin=subprocess.DEVNULL)
                for index, command in enumerate(commands)]
    level = 0
    code = 0
    while True:
        codes = [child.poll() for child in children]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            code = failed[0] if failed[0] > 0 else 128 - failed[0]  # killed by a signal: as a shell says
            for child in children:
                if child.poll() is None:
                    child.terminate()
            break
        if all(c == 0 for c in codes):
            break
        while level < levels and barrier.ready(level, len(children)):
            barrier.release(level, time.time() + START_AHEAD_S)
            level += 1
        time.sleep(POLL_S)
    for child in children:
        child.wait()
    return code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    specs = [arg for arg in args if not arg.startswith("--")]
    if len(specs) != 1:
        print("usage: python -m backend.stress.shards SPEC.json --outputs-dir=<job folder>", file=sys.stderr)
        return 2
    return run(json.loads(Path(specs[0]).read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(main())
