"""The request bodies of the inference API, validated with pydantic; errors name the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from backend.catalog.manual import ManualEndpoint
from backend.errors import ApiError


class ManualConfig(ManualEndpoint):
    """A manual endpoint for the playground; ``label`` names its column."""

    label: str | None = Field(default=None, max_length=100)


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class InferenceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def parse_body(raw: Any, model: type[BaseModel]) -> Any:
    """A validated body, or a 400 ApiError naming the first offending field."""
    if not isinstance(raw, dict):
        raise ApiError("the request body must be a JSON object", field="body")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_name(tuple(first["loc"])) or "body"
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(f"{field}: {message}", field=field,
                       details={"errors": [{"field": _field_name(tuple(e["loc"])) or "body",
                                            "message": e["msg"].removeprefix("Value error, ")}
                                           for e in exc.errors()]}) from None
