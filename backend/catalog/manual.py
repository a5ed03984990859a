"""Endpoints that are not in the catalogue: what a request may name, validated the same everywhere."""

from __future__ import annotations

from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from backend.validation import STRICT


class ManualEndpoint(BaseModel):
    """An OpenAI-compatible endpoint named in a request. Its key is used, never stored in clear or echoed."""

    model_config = STRICT

    base_url: str | None = Field(default=None, max_length=2000)
    api_url: str | None = Field(default=None, max_length=2000)
    model_name: str = Field(min_length=1, max_length=200)
    api_key: SecretStr | None = Field(default=None, max_length=4096)

    @field_validator("base_url", "api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parsed.hostname:
            raise ValueError("must name a host")
        if any(c.isspace() for c in value):
            raise ValueError("must not contain spaces")
        return value

    @field_validator("model_name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("must be printable text without surrounding spaces")
        return value

    @model_validator(mode="after")
    def _one_url(self) -> ManualEndpoint:
        if not (self.base_url or self.api_url):
            raise ValueError("needs base_url or api_url")
        return self
