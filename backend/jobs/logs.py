"""A job's log kept in the database, so that a web host that cannot see the worker's disk still shows it.

The worker appends what the job's process wrote since its last look, once a tick (``follow_log``): whole
lines only while the process runs (a line cut in two could hide a secret from the masking below), the rest
when it has ended. Each append is one new row of ``job_log_chunks``; earlier chunks are never rewritten,
except the oldest ones when the log outgrows ``storage.log_max_bytes``: the tail is kept, from the first
line that begins within its last ``log_max_bytes`` (never a part of a line), and ``job_logs.dropped_bytes``
counts what went (the log routes show "… N bytes dropped"). ``read_offset``
is how far into the file the database has it, so a worker that re-attaches to a job carries on from there
and nothing is appended twice.

What is stored passes the same masks as the platform's own log (``backend/logging_setup.py``): a job's
secrets reach its process through the environment, never its command line or its log, and the masks are
a last line of defence should a tool print one.

``tail_lines(kind, job_id, lines)`` is what the log routes serve; None when the database has nothing of
the job (a job from before this table, or one no worker has followed yet), and then they read the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, select
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import db
from backend.logging_setup import _SECRET_PATTERNS

DEFAULT_MAX_BYTES = 262_144
# While the process runs, a line longer than this without its end is stored anyway (else it would wait).
MAX_PENDING_LINE = 65_536
READ_LIMIT = 8 * 1024 * 1024  # read from the file in one tick at most (a flood is caught up with over ticks)


class JobLog(db.Model):
    """How much of one job's log file the database has, and how much of it was dropped from the head."""

    __tablename__ = "job_logs"

    job_kind: Mapped[str] = mapped_column(String(32), primary_key=True)  # Kind.name
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    read_offset: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of the file consumed
    kept_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes in job_log_chunks
    dropped_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes dropped to keep the tail


class JobLogChunk(db.Model):
    """What one look at the log file found (after masking); the chunks of a job, by id, are its log."""

    __tablename__ = "job_log_chunks"
    __table_args__ = (Index("ix_job_log_chunks_job", "job_kind", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_kind: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


def _mask_line(line: bytes) -> bytes:
    text = line.decode("utf-8", errors="replace")
    masked = text
    for pattern in _SECRET_PATTERNS:
        masked = pattern.sub(lambda m: (m.group(1) if m.groups() and m.group(1) else "") + "***", masked)
    return line if masked == text else masked.encode()


def mask_secrets(data: bytes) -> bytes:
    """``data`` with what looks like a secret masked, line by line (so however the log was cut into chunks,
    what is stored is the same)."""
    return b"\n".join(_mask_line(line) for line in data.split(b"\n"))


def _read_new(path: Path, offset: int) -> tuple[bytes, int]:
    """(up to READ_LIMIT bytes written after ``offset``, the offset they start at). A log that is a symlink
    is never followed."""
    try:
        handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError:
        return b"", offset
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size < offset:  # the file was replaced: start again from its beginning
            offset = 0
        handle.seek(offset)
        return handle.read(min(size - offset, READ_LIMIT)), offset


def follow_log(kind: str, job_id: str, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, *,
               final: bool = False) -> int:
    """Append what ``path`` gained since the last call to the job's log in the database; returns the
    bytes appended. ``final``: the process has ended, so a last line without its newline is taken too.
    Sizes (kept, dropped) are of the log as stored, after masking. The caller commits."""
    max_bytes = max(int(max_bytes), 1024)
    log = db.session.get(JobLog, (kind, job_id))
    if log is None:
        log = JobLog(job_kind=kind, job_id=job_id, read_offset=0, kept_bytes=0, dropped_bytes=0)
        db.session.add(log)
    data, start = _read_new(path, int(log.read_offset or 0))
    consumed = len(data)
    if not final or len(data) == READ_LIMIT:
        end = data.rfind(b"\n")
        if end >= 0:
            consumed = end + 1
        elif len(data) < MAX_PENDING_LINE:
            consumed = 0
    log.read_offset = start + consumed
    chunk = mask_secrets(data[:consumed]) if consumed else b""
    if len(chunk) > max_bytes:  # more than the bound at once: only its end can be kept
        newline = chunk.find(b"\n", len(chunk) - max_bytes - 1)
        cut = len(chunk) if newline < 0 else newline + 1
        _drop_all(log)
        log.dropped_bytes = int(log.dropped_bytes or 0) + cut
        chunk = chunk[cut:]
    if not chunk:
        return 0
    db.session.add(JobLogChunk(job_kind=kind, job_id=job_id, data=chunk))
    log.kept_bytes = int(log.kept_bytes or 0) + len(chunk)
    _keep_tail(log, max_bytes)
    return len(chunk)


def _drop_all(log: JobLog) -> None:
    where = (JobLogChunk.job_kind == log.job_kind, JobLogChunk.job_id == log.job_id)
    db.session.execute(db.delete(JobLogChunk).where(*where))
    log.dropped_bytes = int(log.dropped_bytes or 0) + int(log.kept_bytes or 0)
    log.kept_bytes = 0


def _keep_tail(log: JobLog, max_bytes: int) -> None:
    """While the log is longer than ``max_bytes``, drop its head: whole chunks, then the oldest remaining
    chunk's head up to the first line that begins late enough. What is kept always starts a line."""
    excess = int(log.kept_bytes) - max_bytes
    if excess <= 0:
        return
    db.session.flush()
    ids = db.session.scalars(select(JobLogChunk.id).where(JobLogChunk.job_kind == log.job_kind,
                                                          JobLogChunk.job_id == log.job_id)
                             .order_by(JobLogChunk.id)).all()
    mid_line = False  # a chunk dropped whole ended inside a line: the next one's first line goes too
    for chunk_id in ids:
        need = max(excess, 0)
        if need == 0 and not mid_line:
            break
        chunk = db.session.get(JobLogChunk, chunk_id)
        assert chunk is not None
        data = chunk.data
        newline = data.find(b"\n", max(need - 1, 0))
        cut = len(data) if newline < 0 else newline + 1
        if cut >= len(data):
            db.session.delete(chunk)
            mid_line = not data.endswith(b"\n")
        else:
            chunk.data = data[cut:]
            mid_line = False
        excess -= cut
        log.kept_bytes = int(log.kept_bytes) - cut
        log.dropped_bytes = int(log.dropped_bytes or 0) + cut
        if cut < len(data):
            break


def dropped_note(dropped: int) -> str:
    return f"… {dropped} bytes dropped"


def tail_lines(kind: str, job_id: str, lines: int) -> list[str] | None:
    """The last ``lines`` non-empty lines of the job's log as the database has it, with "… N bytes dropped"
    first when the lines reach back to where the kept tail begins; None when it has none of it."""
    log = db.session.get(JobLog, (kind, job_id))
    if log is None:
        return None
    data = b"".join(db.session.scalars(select(JobLogChunk.data).where(JobLogChunk.job_kind == kind,
                                                                      JobLogChunk.job_id == job_id)
                                       .order_by(JobLogChunk.id)))
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    dropped = int(log.dropped_bytes or 0)
    kept = [line for line in text.split("\n") if line.strip()]
    shown = kept[-lines:] if lines > 0 else []
    if dropped and len(shown) == len(kept) and len(shown) < lines:
        shown = [dropped_note(dropped), *shown]
    return shown


def forget(kind: str, job_id: str) -> None:
    """Remove the job's log from the database (its job is deleted). The caller commits."""
    db.session.execute(db.delete(JobLogChunk).where(JobLogChunk.job_kind == kind, JobLogChunk.job_id == job_id))
    db.session.execute(db.delete(JobLog).where(JobLog.job_kind == kind, JobLog.job_id == job_id))
