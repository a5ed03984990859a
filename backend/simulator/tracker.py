"""Counters and per-request records served by ``/sim/stats`` and ``/sim/requests``."""

from __future__ import annotations

from collections import deque
from enum import StrEnum

MAX_RECORDS = 10_000


class RequestStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    DISCONNECTED = "disconnected"
    ERROR = "error"


class RequestRecord:
    """What happened to one chat completion request; timestamps are ``time.time()`` epochs."""

    __slots__ = (
        "arrival",
        "first_token_at",
        "id",
        "images",
        "input_tokens",
        "last_token_at",
        "model",
        "prompt",
        "status",
        "tokens_emitted",
    )

    def __init__(
        self, request_id: str, model: str, arrival: float, input_tokens: int, images: list[str], prompt: str
    ) -> None:
        self.id = request_id
        self.model = model
        self.arrival = arrival
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.tokens_emitted = 0
        self.input_tokens = input_tokens
        self.images = images
        self.prompt = prompt
        self.status = RequestStatus.RUNNING

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "model": self.model,
            "arrival": self.arrival,
            "first_token_at": self.first_token_at,
            "last_token_at": self.last_token_at,
            "tokens_emitted": self.tokens_emitted,
            "input_tokens": self.input_tokens,
            "images": self.images,
            "prompt": self.prompt,
            "status": str(self.status),
        }


class Tracker:
    """Counts requests by outcome and keeps the most recent ``MAX_RECORDS`` records."""

    def __init__(self) -> None:
        self.active = 0
        self.started = 0
        self.completed = 0
        self.disconnected = 0
        self.errors = 0
        self._records: deque[RequestRecord] = deque(maxlen=MAX_RECORDS)

    def start(self, record: RequestRecord) -> None:
        self.started += 1
        self.active += 1
        self._records.append(record)

    def finish(self, record: RequestRecord, status: RequestStatus) -> None:
        """Move a running record to its final status; later calls for the same record are ignored."""
        if record.status is not RequestStatus.RUNNING:
            return
        record.status = status
        self.active -= 1
        if status is RequestStatus.COMPLETED:
            self.completed += 1
        elif status is RequestStatus.DISCONNECTED:
            self.disconnected += 1
        else:
            self.errors += 1

    def stats(self) -> dict[str, int]:
        return {
            "active_streams": self.active,
            "started": self.started,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "errors": self.errors,
        }

    def records(self, since: float | None = None, limit: int = MAX_RECORDS) -> list[dict]:
        """Records that arrived at or after ``since``, oldest first, at most the newest ``limit``."""
        selected = [r for r in self._records if since is None or r.arrival >= since]
        return [record.as_dict() for record in selected[-limit:]] if limit > 0 else []
