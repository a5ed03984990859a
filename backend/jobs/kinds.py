"""What a job kind gives the worker (``Kind``), what the worker gives back (``Context``, ``Running``,
``Ending``), and the list of kinds the worker runs (``registered_kinds``) and its per-tick hooks.

The interface is described in full in ``backend/jobs/__init__.py``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backend.config import PROJECT_ROOT
from backend.jobs.models import JobStatus


class Refused(Exception):
    """Raised by ``Kind.prepare``: the job cannot start; it ends ``failed`` with this reason as its error."""


@dataclass
class Context:
    """What a kind's hooks may read: the whole configuration, the kind's own section of it, the worker."""

    config: Mapping[str, Any]  # app.config["PEP"]
    settings: Mapping[str, Any]  # config[kind.section]
    worker_id: str


@dataclass
class Launch:
    """How to start a job's process, returned by ``Kind.prepare``."""

    command: Sequence[str]  # an argument list, never a shell string
    log_path: Path  # stdout and stderr are appended here
    env: Mapping[str, str]  # the process's whole environment (see backend.jobs.process.child_env)
    state: Any  # the kind's follow-state, handed back as ``Running.state``
    header: str = ""  # written to the log before the process starts (the command line, a note)
    cwd: Path = PROJECT_ROOT
    program: str = "the job's process"  # for "cannot start <program>: <reason>"


@dataclass
class Running:
    """A job a worker follows: its process (ours, or re-attached by pid after a restart) and the kind's state."""

    kind: Kind
    job_id: str
    pid: int  # also the process group id: the process leads a session of its own
    state: Any
    process: subprocess.Popen[bytes] | None = None  # None when re-attached
    started: float = field(default_factory=time.monotonic)  # for max_job_s
    wall_started: float = field(default_factory=time.time)  # the job's started_at, as a timestamp
    term_sent_at: float | None = None
    kill_sent: bool = False
    timed_out: bool = False


@dataclass(frozen=True)
class Ending:
    """How the process ended, for ``Kind.conclude``."""

    exit_code: int | None  # None: unknown (re-attached or found dead after a restart, or the worker stopped)
    interrupted_reason: str | None = None  # set when the worker itself stopped while the job ran
    timed_out: bool = False  # stopped after <section>.max_job_s (the worker fails the job whatever the kind says)


@dataclass
class Outcome:
    """The final status a kind decides, its error text, and other columns to write with the change."""

    status: JobStatus
    error: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


class Kind(Protocol):
    """One kind of job. Every hook runs inside the worker's app context; none commits (the worker does)."""

    name: str  # "stress", "evaluation": log lines say "<name> job <id> ..."
    model: Any  # the row model: JobColumns + db.Model, with its own table
    section: str  # its configuration section; it holds max_concurrent and max_job_s

    def prepare(self, job: Any, ctx: Context) -> Launch:
        """Everything before the process starts (secrets, files, checks, the command); raise Refused."""
        ...

    def process_marker(self, job: Any, state: Any, ctx: Context) -> str:
        """An argument only this job's command line has: recovery re-attaches only to a pid that has it."""
        ...

    def recover_state(self, job: Any, ctx: Context) -> Any:
        """The follow-state of a job that claims to run, rebuilt from its row and its files."""
        ...

    def update(self, job: Any, running: Running, ctx: Context) -> None:
        """Each tick while the worker follows it, the tick that finds its process gone included: progress,
        live rows, results so far. Not called before ``conclude`` on recovery of a dead job or at shutdown."""
        ...

    def conclude(self, job: Any, running: Running, ctx: Context, ending: Ending) -> Outcome:
        """The process has gone (or the worker stops): final ingestion, and the status it ends with."""
        ...

    # Optional (the worker looks them up with getattr):
    # ``log_path(job, ctx) -> Path``: the job's log file, copied into the database each tick (jobs/logs.py);
    # ``artifact_files(job, ctx) -> list[tuple[str, Path]]``: (name, file) of what to copy to
    # ``storage.artifacts`` when the job ends (jobs/storage.py); names are the download routes' names.
    # ``runnable() -> condition``: the worker claims and recovers only rows meeting this SQL condition (a
    # stress test spread over hosts is not run itself; its shard jobs are);
    # ``group() -> column``: a row's group: one worker takes at most one row of a group at a time;
    # ``quick(running) -> bool``: the worker ticks every 0.1 s while it is True (a shard waiting for a start);
    # ``abandon(job, ctx) -> dict``: the job's worker on another host lost its lease and the job ends
    # interrupted from its rows alone; the kind closes its parts (an evaluation's unfinished cells) and
    # returns column values to write with the status.


def registered_kinds() -> list[Kind]:
    """The kinds one worker runs, in the order it claims them. A new kind is one line here."""
    from backend.evaluations.kind import EvaluationKind
    from backend.stress.kind import StressKind

    return [StressKind(), EvaluationKind()]


def tick_hooks() -> list[Callable[[], None]]:
    """Called once a tick, after following and before claiming: work that makes jobs, not a kind of job."""
    from backend.results.capacity_search import advance_searches
    from backend.stress.spread import advance_groups

    # capacity searches queue their probes as stress jobs; a stress test spread over hosts follows its shards
    return [advance_searches, advance_groups]
