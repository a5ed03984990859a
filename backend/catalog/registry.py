"""The model catalogue as configured in config/models.yaml, validated when loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ProviderName = Literal["bedrock", "openai", "emd", "simulator"]
KEY_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")

    streaming: bool = True
    images: bool = False
    video: bool | None = None  # video is sent as sampled frames, so it follows images unless set
    reasoning: bool = False

    @model_validator(mode="after")
    def _video_follows_images(self) -> Capabilities:
        if self.video is None:
            self.video = self.images
        return self

    def as_list(self) -> list[str]:
        return [name for name in ("streaming", "images", "video", "reasoning") if getattr(self, name)]


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=KEY_PATTERN)
    name: str
    provider: ProviderName
    model_id: str | None = None  # Bedrock model or inference-profile id; OpenAI "model"; EMD model id
    tag: str | None = None  # EMD deployment tag
    region: str | None = None  # Bedrock; defaults to bedrock.region / aws.region
    base_url: str | None = None  # OpenAI-compatible base URL ending before /chat/completions
    api_key_env: str | None = None  # name of the environment variable holding the API key
    capabilities: Capabilities = Field(default_factory=Capabilities)
    max_tokens: int = 4096
    description: str | None = None
    discovered: bool = False  # an EMD deployment found in CloudFormation, not listed in models.yaml
    # What a self-hosted deployment runs on, for its cost (config/pricing.yaml); EMD stacks say it too.
    instance_type: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,40}$")
    instances: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider in ("bedrock", "openai", "simulator") and not self.model_id:
            raise ValueError(f"{self.provider} models need model_id")
        if self.provider == "openai" and not self.base_url:
            raise ValueError("openai models need base_url")
        if self.provider == "emd" and not (self.model_id and self.tag):
            raise ValueError("emd models need model_id and tag")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self

    @property
    def emd_model(self) -> str:
        """EMD's router addresses a deployment as ``model_id/tag``."""
        return f"{self.model_id}/{self.tag}"

    def summary(self) -> dict[str, object]:
        data: dict[str, object] = {
            "key": self.key,
            "name": self.name,
            "provider": self.provider,
            "model_id": self.emd_model if self.provider == "emd" else self.model_id,
            "capabilities": self.capabilities.as_list(),
            "max_tokens": self.max_tokens,
            "description": self.description,
        }
        if self.provider == "bedrock":
            data["region"] = self.region
        if self.base_url:
            data["base_url"] = self.base_url
        if self.discovered:
            data["discovered"] = True
        if self.instance_type:
            data["instance_type"] = self.instance_type
            data["instances"] = self.instances
        return data


class CatalogError(ValueError):
    """config/models.yaml is malformed."""


def load_models(path: Path) -> dict[str, ModelSpec]:
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("models") or {}
    if not isinstance(entries, dict):
        raise CatalogError(f"{path}: 'models' must be a mapping of key -> model")
    models: dict[str, ModelSpec] = {}
    for key, entry in entries.items():
        try:
            models[key] = ModelSpec(key=key, **(entry or {}))
        except (ValidationError, TypeError) as exc:
            raise CatalogError(f"{path}: model {key!r}: {exc}") from exc
    return models
