"""Cost per million output tokens, from ``config/pricing.yaml`` and what a level measured.

- A deployment on instances (EMD, any self-hosted endpoint whose instance type is known) costs its
  hourly price whatever it serves: ``hourly price x instances / (3600 x output tokens/s) x 10^6``.
- A Bedrock model is paid per token: the input and output tokens one request used, at their prices,
  per output token: ``(input price x avg input tokens + output price x avg output tokens) / avg output
  tokens`` (prices per million tokens).

Nothing is guessed: an unknown price, an unknown instance type, or no measured output gives
``Cost(value=None, reason=...)``, which the pages show as "unknown" with the reason, never as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from backend.config import resolve_path


@dataclass(frozen=True)
class Cost:
    value: float | None  # USD per million output tokens
    reason: str  # how it was computed, or why it could not be
    basis: str | None = None  # "instance" | "tokens"

    def as_dict(self) -> dict[str, Any]:
        return {"usd_per_m_output_tokens": self.value, "basis": self.basis, "reason": self.reason}


@dataclass(frozen=True)
class Pricing:
    instances: dict[str, float]
    bedrock: dict[str, dict[str, float]]
    as_of: str | None = None
    region: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> Pricing:
        """The pricing file; a missing file means every price is unknown (said so per figure)."""
        resolved = resolve_path(str(path))
        if not resolved.is_file():
            return cls(instances={}, bedrock={})
        data = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
        instances = {str(k): float(v) for k, v in (data.get("instances") or {}).items() if v is not None}
        bedrock = {str(k): {"input_per_m": float(v["input_per_m"]), "output_per_m": float(v["output_per_m"])}
                   for k, v in (data.get("bedrock") or {}).items()
                   if isinstance(v, dict) and v.get("input_per_m") is not None and v.get("output_per_m") is not None}
        return cls(instances=instances, bedrock=bedrock, as_of=data.get("as_of"), region=data.get("region"))

    def note(self) -> str:
        where = f" in {self.region}" if self.region else ""
        return f"list prices{where} as of {self.as_of}" if self.as_of else "list prices of config/pricing.yaml"


def instance_cost(pricing: Pricing, instance_type: str | None, instances: int | None,
                  output_tokens_per_s: float | None) -> Cost:
    if not instance_type:
        return Cost(None, "instance type unknown: set instance_type in config/models.yaml")
    hourly = pricing.instances.get(instance_type)
    if hourly is None:
        return Cost(None, f"no price for {instance_type} in config/pricing.yaml")
    count = instances or 1
    if not output_tokens_per_s or output_tokens_per_s <= 0:
        return Cost(None, "no output tokens measured")
    value = hourly * count / (3600.0 * output_tokens_per_s) * 1e6
    return Cost(value, f"{count} x {instance_type} at ${hourly:g}/h, {pricing.note()}", "instance")


def token_cost(pricing: Pricing, model_key: str, avg_input_tokens: float | None,
               avg_output_tokens: float | None) -> Cost:
    prices = pricing.bedrock.get(model_key)
    if prices is None:
        return Cost(None, f"no Bedrock price for {model_key} in config/pricing.yaml")
    if not avg_output_tokens or avg_output_tokens <= 0:
        return Cost(None, "no output tokens measured")
    spent = prices["input_per_m"] * (avg_input_tokens or 0.0) + prices["output_per_m"] * avg_output_tokens
    return Cost(spent / avg_output_tokens,
                f"${prices['input_per_m']:g} per M input and ${prices['output_per_m']:g} per M output tokens, "
                f"{pricing.note()}", "tokens")


def level_cost(pricing: Pricing, target: dict[str, Any], level: dict[str, Any]) -> Cost:
    """The cost of one level of a job, by what its target is paid for."""
    if target.get("provider") == "bedrock":
        return token_cost(pricing, str(target.get("key") or ""), level.get("avg_input_tokens"),
                          level.get("avg_output_tokens"))
    if target.get("catalog_provider") == "simulator":
        return Cost(None, "the built-in simulator has no price")
    return instance_cost(pricing, target.get("instance_type"), target.get("instances"),
                         level.get("output_tokens_per_s"))
