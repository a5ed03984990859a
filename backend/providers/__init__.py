"""One module per wire protocol; ``provider_for`` picks the stream function of a target."""

from __future__ import annotations

from backend.providers.base import Provider, Target


def provider_for(target: Target) -> Provider:
    if target.provider == "bedrock":
        from backend.providers import bedrock

        return bedrock.stream
    from backend.providers import openai_compat

    return openai_compat.stream
