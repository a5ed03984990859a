"""A job's live events over SSE, for every kind: the kind says what its rows add, this says when.

One short database session per poll (``poll_s``), so an open stream holds no connection between polls;
a ``: ping`` after ``heartbeat_s`` of silence; ``status`` {status, error} whenever the status changes
(after the kind's own events of the same poll); ``end`` with the kind's final payload once the job has
finished, or ``end`` {id, status: "deleted"} when its row has gone. A client that leaves ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask

from backend.db import db
from backend.sse import PING, sse_event

# A kind's events for one poll: (job row, a dict it keeps between polls) -> the encoded events.
Updates = Callable[[Any, dict[str, Any]], list[bytes]]


def follow(app: Flask, model: Any, job_id: str, *, updates: Updates, final: Callable[[Any], dict[str, Any]],
           poll_s: float, heartbeat_s: float) -> Iterator[bytes]:
    """SSE for the ``model`` row ``job_id``: ``updates(job, cursor)`` each poll (``cursor`` starts empty and
    is the kind's to keep what it has sent), ``status`` on a change, ``end`` with ``final(job)``."""
    yield PING
    cursor: dict[str, Any] = {}
    last_status: str | None = None
    last_write = time.monotonic()
    try:
        while True:
            with app.app_context():
                job = db.session.get(model, job_id)
                if job is None:
                    yield sse_event("end", {"id": job_id, "status": "deleted"})
                    return
                events = list(updates(job, cursor))
                if job.status != last_status:
                    events.append(sse_event("status", {"status": job.status, "error": job.error}))
                    last_status = job.status
                ended = final(job) if job.is_finished else None
                db.session.remove()
            if events:
                yield b"".join(events)
                last_write = time.monotonic()
            if ended is not None:
                yield sse_event("end", ended)
                return
            if time.monotonic() - last_write >= heartbeat_s:
                yield PING
                last_write = time.monotonic()
            time.sleep(poll_s)
    except GeneratorExit:  # the client went away; nothing to clean up but the session above
        return
