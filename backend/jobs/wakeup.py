"""Waking the workers at once on PostgreSQL: a web host that queues or cancels a job sends a NOTIFY on
``pep_jobs`` within its transaction (delivered when it commits), and each worker LISTENs between ticks,
so a cancel posted to any web host reaches the job's worker in milliseconds instead of a poll later.

On SQLite (one machine) and whenever the listening connection is lost, the worker simply polls
(``stress.poll_interval_s``): a notification only ever shortens a wait; nothing depends on it arriving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from sqlalchemy import text

from backend.db import db, is_postgresql

log = logging.getLogger(__name__)

CHANNEL = "pep_jobs"
RETRY_S = 30.0  # after the listening connection failed, poll only for this long before trying again


def notify(event: str, kind: str, job_id: str) -> None:
    """Within the caller's transaction: tell every listening worker that ``kind`` job ``job_id`` was
    ``event`` ("queued", "cancel"). Nothing on SQLite."""
    if is_postgresql():
        db.session.execute(text("SELECT pg_notify(:channel, :payload)"),
                           {"channel": CHANNEL, "payload": f"{event}:{kind}:{job_id}"})


class Wakeup:
    """``wait(stop, timeout)``: the worker's pause between ticks, cut short by a notification (PostgreSQL)
    or by ``stop``. Call ``open()`` inside an app context first; ``close()`` at the end."""

    def __init__(self) -> None:
        self._connection: Any = None
        self._conninfo: str | None = None
        self._failed_at: float | None = None
        self.received = 0  # notifications seen (for tests and the log)

    def open(self) -> None:
        if not is_postgresql():
            return
        self._conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connect()

    def _connect(self) -> None:
        import psycopg

        try:
            self._connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            self._connection.execute(f"LISTEN {CHANNEL}")
            self._failed_at = None
        except psycopg.Error as exc:
            self._connection, self._failed_at = None, time.monotonic()
            log.warning("worker: cannot LISTEN for job notifications (%s); polling instead",
                        type(exc).__name__)

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Pause up to ``timeout`` seconds; True when a notification ended it early."""
        if self._conninfo is not None and self._connection is None and \
                time.monotonic() - (self._failed_at or 0.0) >= RETRY_S:
            self._connect()
        if self._connection is None or stop.is_set():
            stop.wait(timeout)
            return False
        import psycopg

        try:
            woken = False
            for _ in self._connection.notifies(timeout=timeout, stop_after=1):
                woken = True
            # whatever else arrived meanwhile is for the same tick
            for _ in self._connection.notifies(timeout=0):
                pass
        except psycopg.Error as exc:
            log.warning("worker: the notification connection failed (%s); polling instead", type(exc).__name__)
            self.close()
            self._failed_at = time.monotonic()
            stop.wait(timeout)
            return False
        self.received += woken
        return woken

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may raise; it is gone anyway
                self._connection.close()
            self._connection = None
