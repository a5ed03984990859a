"""A one-token request straight through a model's provider: "does this model answer, and how fast?".

Unlike the availability probe (credentials present, ``GET /models`` answers), a check costs one real
call, so it only runs when an operator asks for it. It goes to the provider directly and stores
nothing: a check is not a run and never shows up in History.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from backend.catalog.registry import ModelSpec
from backend.catalog.service import Catalog
from backend.providers import provider_for
from backend.providers.base import Cancellation, ChatRequest, Delta, Message, ProviderError, Reasoning

log = logging.getLogger(__name__)

CHECK_PROMPT = "Reply with the single word: OK"


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    latency_ms: float | None = None  # request sent to the end of the answer
    ttft_ms: float | None = None  # request sent to the first content or reasoning token
    text: str = ""  # what the model said (one token or so)
    code: str | None = None  # the ProviderError category when not ok
    message: str | None = None


def check_model(catalog: Catalog, spec: ModelSpec, timeout_s: float = 15.0) -> CheckResult:
    """Send ``max_tokens=1`` to ``spec`` and time it; every failure becomes a result, never an exception."""
    request = ChatRequest(
        messages=(Message(role="user", text=CHECK_PROMPT),),
        max_tokens=1,
        temperature=0.0,
        stream=spec.capabilities.streaming,
        connect_timeout_s=min(5.0, timeout_s),
        read_timeout_s=timeout_s,
    )
    cancel = Cancellation()
    # The read timeout bounds each wait; this bounds the whole call (a server that trickles bytes).
    deadline = threading.Timer(timeout_s, cancel.cancel)
    deadline.daemon = True
    started = time.perf_counter()
    first_token: float | None = None
    text: list[str] = []
    try:
        target = catalog.target(spec)
        deadline.start()
        for event in provider_for(target)(target, request, cancel):
            if isinstance(event, Delta | Reasoning):
                first_token = first_token or time.perf_counter()
                if isinstance(event, Delta):
                    text.append(event.text)
    except ProviderError as exc:
        if cancel.is_set():
            return _too_slow(timeout_s)
        return CheckResult(ok=False, code=exc.code, message=exc.message)
    except Exception as exc:  # a bug or an unexpected library error is still an answer to show
        if cancel.is_set():  # a read woken by our own cancel may fail in any way
            return _too_slow(timeout_s)
        log.exception("check of %s failed unexpectedly", spec.key)
        return CheckResult(ok=False, code="upstream", message=f"unexpected error: {exc.__class__.__name__}: {exc}")
    finally:
        deadline.cancel()
    ended = time.perf_counter()
    if cancel.is_set():  # providers end quietly when cancelled; here that means our deadline passed
        return _too_slow(timeout_s)
    return CheckResult(
        ok=True,
        latency_ms=round((ended - started) * 1000, 1),
        ttft_ms=round((first_token - started) * 1000, 1) if first_token else None,
        text="".join(text),
    )


def _too_slow(timeout_s: float) -> CheckResult:
    return CheckResult(ok=False, code="timeout", message=f"no complete answer within {timeout_s:g} s")
