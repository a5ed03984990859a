"""A job's process: started from an argument list in a process group (a session) of its own, with its log
file and environment; checked (alive, really this job's), signalled as a group.

Only the worker starts processes. A job's process outlives its worker (its own session), so that a new
worker can re-attach to it; ``is_job_process`` guards a re-attach against a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a re-attached job's parent may not reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_job_process(pid: int, marker: str) -> bool:
    """The process ``pid`` has ``marker`` as one of its arguments (a kind's mark of one job, such as
    ``--outputs-dir=<the job's folder>``): it is that job's process, not a recycled pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return marker.encode() in cmdline


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """``sig`` to every process of the group; a group that has gone already is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def child_env(extra: Mapping[str, str], drop: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment without the names in ``drop`` (a secret meant for one job only), plus
    ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env.update(extra)
    return env


def start_process(command: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path,
                  header: str = "") -> subprocess.Popen[bytes]:
    """Start ``command`` (an argument list, never a shell string) in a new session, so in its own process
    group whose id is its pid, with stdin from /dev/null and stdout and stderr appended to ``log_path``
    after ``header``. Raises OSError when it cannot start."""
    if isinstance(command, str):
        raise TypeError("a job's command is an argument list, not a string")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        if header:
            log_file.write(header.encode())
            log_file.flush()
        return subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
