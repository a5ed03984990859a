"""The request bodies of the inference API, validated with pydantic (``backend.validation``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from backend.catalog.manual import ManualEndpoint
from backend.validation import STRICT


class ManualConfig(ManualEndpoint):
    """A manual endpoint for the playground; ``label`` names its column."""

    label: str | None = Field(default=None, max_length=100)


class ChatTurn(BaseModel):
    model_config = STRICT

    role: Literal["system", "user", "assistant"]
    content: str


class InferenceBody(BaseModel):
    model_config = STRICT

    models: list[str] = Field(default_factory=list, max_length=16)
    model: str | None = None  # POST /api/v1/inference names one model
    text: str | None = None
    prompt: str | None = None
    messages: list[ChatTurn] | None = None
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    images: list[str] = Field(default_factory=list)
    video: str | None = None
    manual_config: ManualConfig | None = None
    stream: bool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> InferenceBody:
        given = [name for name in ("text", "prompt", "messages") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of text, prompt or messages (got {', '.join(given)})")
        return self
