"""Built-in model profiles of the simulator and the ``--profile`` override syntax."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Behavior(StrEnum):
    """How a profile answers, beyond its timing."""

    NORMAL = "normal"
    ECHO = "echo"
    ERROR = "error"
    MIDSTREAM_ERROR = "midstream_error"
    HANG = "hang"
    ANSWER = "answer"  # answers dataset items right with probability ``accuracy`` (backend/simulator/answers.py)
    JUDGE = "judge"  # answers evalscope's LLM-judge prompts: correct iff prediction equals reference


@dataclass(slots=True)
class Profile:
    """Timing and output shape of one simulated model.

    The engine runs one decode step at a time; a step lasts
    ``decode_base_ms + decode_ms_per_seq * batch_size`` plus ``prefill_ms_per_token`` times the input
    tokens of the requests admitted into the batch in that step, and gives every sequence one token.

    ``behavior=answer`` and ``behavior=judge`` reply with text from an answer key (the bundled datasets
    plus ``answer_files``, ``os.pathsep``-separated files or dataset folders); ``accuracy`` and ``seed``
    decide which items an answering profile gets right (the formula is in backend/simulator/answers.py;
    the server's ``--seed`` still drives timings and lengths).
    """

    name: str
    max_batch: int = 32
    prefill_ms_per_token: float = 0.02
    decode_base_ms: float = 8.0
    decode_ms_per_seq: float = 0.25
    min_output_tokens: int = 20
    max_output_tokens: int = 80
    reasoning_min_tokens: int = 0
    reasoning_max_tokens: int = 0
    behavior: Behavior = Behavior.NORMAL
    error_rate: float = 0.0
    midstream_error_after: int = 3
    accuracy: float = 1.0
    seed: int = 0
    answer_files: str = ""

    def step_seconds(self, batch_size: int, admitted_input_tokens: int) -> float:
        step_ms = (
            self.decode_base_ms
            + self.decode_ms_per_seq * batch_size
            + self.prefill_ms_per_token * admitted_input_tokens
        )
        return step_ms / 1000.0


# Answering profiles reply in a few milliseconds whatever the load: evaluations wait on them, not on timing.
ANSWERING_TIMING: dict[str, Any] = {"max_batch": 100_000, "prefill_ms_per_token": 0.0, "decode_base_ms": 1.0,
                                    "decode_ms_per_seq": 0.0}


def builtin_profiles() -> dict[str, Profile]:
    """A fresh set of the built-in profiles, keyed by model name."""
    profiles = [
        Profile("sim-fast"),
        Profile("sim-vision"),
        Profile("sim-reasoning", reasoning_min_tokens=8, reasoning_max_tokens=16),
        Profile(
            "sim-steady",
            max_batch=100_000,
            prefill_ms_per_token=0.0,
            decode_base_ms=20.0,
            decode_ms_per_seq=0.0,
            min_output_tokens=100,
            max_output_tokens=100,
        ),
        Profile(
            "sim-slow",
            max_batch=100_000,
            prefill_ms_per_token=0.0,
            decode_base_ms=1000.0,
            decode_ms_per_seq=0.0,
            min_output_tokens=30,
            max_output_tokens=30,
        ),
        Profile(
            "sim-echo",
            max_batch=100_000,
            prefill_ms_per_token=0.0,
            decode_base_ms=2.0,
            decode_ms_per_seq=0.0,
            behavior=Behavior.ECHO,
        ),
        Profile("sim-error", behavior=Behavior.ERROR),
        Profile("sim-midstream-error", behavior=Behavior.MIDSTREAM_ERROR),
        Profile("sim-hang", behavior=Behavior.HANG),
        Profile("sim-answer-a", behavior=Behavior.ANSWER, accuracy=0.75, seed=3, **ANSWERING_TIMING),
        Profile("sim-answer-b", behavior=Behavior.ANSWER, accuracy=0.6, seed=12, **ANSWERING_TIMING),
        Profile("sim-judge", behavior=Behavior.JUDGE, **ANSWERING_TIMING),
    ]
    return {profile.name: profile for profile in profiles}


class ProfileOverrideError(ValueError):
    """A ``--profile`` argument that cannot be applied."""


def _coerce(field: dataclasses.Field, raw: str) -> object:
    field_type = field.type if isinstance(field.type, str) else field.type.__name__
    if field_type == "int":
        return int(raw)
    if field_type == "float":
        return float(raw)
    if field_type == "Behavior":
        return Behavior(raw)
    return raw


def apply_override(profiles: dict[str, Profile], spec: str) -> None:
    """Apply ``"model:field=value,field=value"`` to ``profiles`` in place.

    An unknown model name creates a new profile with the default (sim-fast) values.
    """
    name, sep, assignments = spec.partition(":")
    name = name.strip()
    if not name or not sep:
        raise ProfileOverrideError(f"expected MODEL:FIELD=VALUE[,FIELD=VALUE...], got {spec!r}")
    profile = profiles.setdefault(name, Profile(name))
    fields = {field.name: field for field in dataclasses.fields(Profile) if field.name != "name"}
    for assignment in filter(None, (part.strip() for part in assignments.split(","))):
        key, eq, raw = assignment.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise ProfileOverrideError(f"unknown profile field in {assignment!r}; known: {sorted(fields)}")
        try:
            value = _coerce(fields[key], raw.strip())
        except ValueError as exc:
            raise ProfileOverrideError(f"bad value in {assignment!r}: {exc}") from exc
        setattr(profile, key, value)
    if profile.min_output_tokens > profile.max_output_tokens:
        raise ProfileOverrideError(f"{name}: min_output_tokens is greater than max_output_tokens")
    if profile.max_batch < 1:
        raise ProfileOverrideError(f"{name}: max_batch must be at least 1")
    if not 0.0 <= profile.accuracy <= 1.0:
        raise ProfileOverrideError(f"{name}: accuracy must be between 0 and 1")
