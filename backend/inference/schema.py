"""The request bodies of the inference API, validated with pydantic; errors name the field."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from backend.errors import ApiError


class ManualConfig(BaseModel):
    """An unregistered OpenAI-compatible endpoint. The key is used for the call and never stored."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None
    api_url: str | None = None
    model_name: str = Field(min_length=1, max_length=200)
    api_key: SecretStr | None = None
    label: str | None = Field(default=None, max_length=100)

    @field_validator("base_url", "api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parsed.netloc:
            raise ValueError("must name a host")
        return value

    @model_validator(mode="after")
    def _one_url(self) -> ManualConfig:
        if not (self.base_url or self.api_url):
            raise ValueError("needs base_url or api_url")
        return self


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
