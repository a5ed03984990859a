"""What every provider speaks: a neutral chat request in, a stream of events out.

A provider is a callable ``stream(target, request, cancel) -> Iterator[StreamEvent]``. It yields
``Delta`` and ``Reasoning`` as text arrives, at most one ``Usage`` and one final ``Done``; it raises
``ProviderError`` with a category for anything that goes wrong. The relay drives providers through the
callback form (``Streamer``), which a provider may implement itself to read faster (openai_compat does).
Providers know nothing of Flask.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class Image:
    mime: str  # image/png, image/jpeg, image/gif or image/webp, sniffed from the bytes
    data: bytes

    @property
    def format(self) -> str:
        """The short format name Bedrock's Converse API wants (png, jpeg, gif, webp)."""
        return self.mime.split("/", 1)[1]


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["user", "assistant"]
    text: str
    images: tuple[Image, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    system: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    stream: bool = True  # False asks an OpenAI-compatible server for one whole answer
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0  # waiting for the answer to start; callers bound the stream itself


@dataclass(frozen=True, slots=True)
class Target:
    """Where one model is reached; built by the catalogue, never from secrets in the database."""

    key: str  # catalogue key, or "manual:<model_name>" for a manual endpoint
    provider: Literal["bedrock", "openai"]  # the wire protocol
    model_id: str  # Bedrock model/profile id, or the OpenAI "model" field
    base_url: str | None = None  # OpenAI-compatible: ends before /chat/completions
    api_url: str | None = None  # OpenAI-compatible: full chat completions URL, wins over base_url
    api_key: str | None = field(default=None, repr=False)
    region: str | None = None  # Bedrock
    # OpenAI-compatible: the addresses backend/security/targets.py checked; connect only to these (DNS
    # rebinding). None: resolve the host when connecting (catalogue targets).
    addresses: tuple[str, ...] | None = None

    @property
    def chat_url(self) -> str:
        if self.api_url:
            return self.api_url
        if not self.base_url:
            raise ValueError(f"{self.key} has neither api_url nor base_url")
        return self.base_url.rstrip("/") + "/chat/completions"


# --- stream events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str | None


StreamEvent = Delta | Reasoning | Usage | Done

ErrorCode = Literal["auth", "not_found", "throttled", "timeout", "bad_request", "upstream", "cancelled"]


class ProviderError(Exception):
    """A model call failed; ``code`` says in which way, ``message`` says it to a person."""

    def __init__(self, code: ErrorCode, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.status = status

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def code_for_status(status: int) -> ErrorCode:
    """The error category of an HTTP status from an upstream server."""
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "throttled"
    if status in (408, 504):
        return "timeout"
    if 400 <= status < 500:
        return "bad_request"
    return "upstream"


class Cancellation:
    """A one-way flag with callbacks, so a blocked read can be woken up from another thread.

    Providers register a callback that closes their connection (``on_cancel``); whoever decides to
    stop (client gone, per-model timeout) calls ``cancel``. Callbacks run once, in the cancelling thread.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()


class Provider(Protocol):
    def __call__(self, target: Target, request: ChatRequest, cancel: Cancellation) -> Iterator[StreamEvent]: ...


class Streamer(Protocol):
    """A provider driven by callbacks: ``emit`` gets each event; returns at the end, raises ProviderError."""

    def __call__(self, target: Target, request: ChatRequest, cancel: Cancellation,
                 emit: Callable[[StreamEvent], None]) -> None: ...
