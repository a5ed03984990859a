"""One module per wire protocol; ``provider_for`` picks the stream function of a target."""

from __future__ import annotations

from collections.abc import Callable

from backend.providers.base import Cancellation, ChatRequest, Provider, Streamer, StreamEvent, Target


def provider_for(target: Target) -> Provider:
    if target.provider == "bedrock":
        from backend.providers import bedrock

        return bedrock.stream
    from backend.providers import openai_compat

    return openai_compat.stream


def streamer_for(target: Target) -> Streamer:
    """The callback form of a target's provider: its own when it has one, else its iterator driven by a loop."""
    if target.provider == "openai":
        from backend.providers import openai_compat

        return openai_compat.stream_to
    provider = provider_for(target)

    def drive(target: Target, request: ChatRequest, cancel: Cancellation,
              emit: Callable[[StreamEvent], None]) -> None:
        for event in provider(target, request, cancel):
            if cancel.is_set():
                return
            emit(event)

    return drive
