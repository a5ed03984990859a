"""The events of the platform's streams, typed: a multi-model answer (``POST /multi-inference``) and a
job being followed (``GET /stress-tests/{id}/events``, ``GET /evaluations/{id}/events``).

Each is a frozen dataclass made from one Server-Sent Event; an event this client does not know (a newer
platform) arrives as ``Unknown`` rather than being dropped or failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Unknown:
    name: str
    data: Any


# --- one prompt to several models ----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    model: str
    name: str | None
    provider: str | None


@dataclass(frozen=True)
class RunStarted:
    """First: the run's id and the models that will answer, in order."""

    run_id: str
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class TextDelta:
    model: str
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Text a reasoning model thinks before it answers."""

    model: str
    text: str


@dataclass(frozen=True)
class ModelDone:
    """A model has answered: TTFT, latency, tokens and tokens/s as the platform measured them."""

    model: str
    metrics: dict[str, Any]

    @property
    def ttft_ms(self) -> float | None:
        return self.metrics.get("ttft_ms")

    @property
    def tokens_per_s(self) -> float | None:
        return self.metrics.get("tokens_per_s")


@dataclass(frozen=True)
class ModelFailed:
    """A model's answer failed (its error as the provider's ``code`` and ``message``) or timed out."""

    model: str
    code: str
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunDone:
    """Last: how many models answered and how many failed."""

    run_id: str
    succeeded: int
    failed: int


InferenceEvent = RunStarted | TextDelta | ReasoningDelta | ModelDone | ModelFailed | RunDone | Unknown


def inference_event(name: str, raw: str) -> InferenceEvent:
    data = json.loads(raw)
    if name == "delta":
        return TextDelta(data["model"], data["text"])
    if name == "reasoning":
        return ReasoningDelta(data["model"], data["text"])
    if name == "model_done":
        return ModelDone(data.pop("model"), data)
    if name == "model_error":
        error = data.get("error") or {}
        return ModelFailed(data["model"], str(error.get("code", "error")), str(error.get("message", "")),
                           dict(data.get("metrics") or {}))
    if name == "run":
        return RunStarted(data["run_id"], tuple(Target(t["model"], t.get("name"), t.get("provider"))
                                                for t in data.get("targets", [])))
    if name == "done":
        return RunDone(data["run_id"], int(data["succeeded"]), int(data["failed"]))
    return Unknown(name, data)


# --- a job being followed ------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusChanged:
    status: str
    error: str | None


@dataclass(frozen=True)
class Progress:
    """A stress test's ``percent``, ``level``, ``levels``, ``concurrency``, ``processed``, ``total`` and
    ``phase``; an evaluation's ``done`` and ``total``, as the job reports them."""

    data: dict[str, Any]


@dataclass(frozen=True)
class RequestSample:
    """A stress test's live sample of finished requests (TTFT, tokens/s so far)."""

    data: dict[str, Any]


@dataclass(frozen=True)
class LevelDone:
    """A stress test's concurrency level has finished: its row of metrics."""

    level: dict[str, Any]


@dataclass(frozen=True)
class CellUpdate:
    """An evaluation's cell (one model on one dataset): progress, live score, and at the end its metrics."""

    cell: dict[str, Any]


@dataclass(frozen=True)
class JobEnded:
    """Last: the whole job as ``GET`` gives it (``status`` "deleted" when it was deleted meanwhile)."""

    job: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.job.get("status"))


JobEvent = StatusChanged | Progress | RequestSample | LevelDone | CellUpdate | JobEnded | Unknown


def job_event(name: str, raw: str) -> JobEvent:
    data = json.loads(raw)
    if name == "status":
        return StatusChanged(data["status"], data.get("error"))
    if name == "progress":
        return Progress(data)
    if name == "sample":
        return RequestSample(data)
    if name == "level":
        return LevelDone(data)
    if name == "cell":
        return CellUpdate(data)
    if name == "end":
        return JobEnded(data)
    return Unknown(name, data)
