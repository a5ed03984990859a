"""The catalogue as the rest of the platform sees it: specs, availability with a reason, and targets.

Availability is checked the cheap way for each provider and cached briefly: Bedrock needs credentials
(the Converse call itself is the only real check), OpenAI-compatible endpoints must answer
``GET /models``, EMD deployments must exist and be ready in CloudFormation.

Available means only that: the endpoint answers. A simulator profile built to fail or to hang answers
too, so its summary says what it does (``behavior``) rather than letting "available" pass for healthy.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import requests
from flask import Flask, current_app

from backend.catalog.emd import EmdDeployment, EmdDiscovery
from backend.catalog.registry import ModelSpec, load_models
from backend.config import resolve_path
from backend.providers.base import ProviderError, Target

NO_AWS_CREDENTIALS = "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"

# What the simulator's built-in profiles that fail by design do: (short label, what happens to a request),
# by profile name. backend.simulator is not imported for this (it would bring aiohttp into every web
# worker); tests/test_catalog_behavior.py holds this table to the simulator's own profiles.
SIMULATOR_BEHAVIORS: dict[str, tuple[str, str]] = {
    "sim-error": ("always fails", "every request gets an HTTP 500 error (a profile for seeing how failures look)"),
    "sim-midstream-error": ("fails mid-answer",
                            "the answer breaks off after a few tokens (a profile for seeing a failure mid-stream)"),
    "sim-hang": ("never answers",
                 "no token ever arrives and a request waits until the client gives up (for trying timeouts and Stop)"),
}
PROVIDER_LABELS = {"bedrock": "Bedrock", "emd": "EMD", "openai": "OpenAI-compatible", "simulator": "simulator"}


@dataclass(frozen=True, slots=True)
class Availability:
    available: bool
    reason: str | None = None
    detail: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"available": self.available, "reason": self.reason}
        if self.detail:
            data["deployment"] = self.detail
        return data


def simulator_behavior(spec: ModelSpec) -> tuple[str, str] | None:
    """(label, detail) for a simulator profile that fails or hangs by design; None for an ordinary one."""
    return SIMULATOR_BEHAVIORS.get(spec.model_id or "") if spec.provider == "simulator" else None


def unavailable_groups(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The unavailable models of ``models`` (``describe`` summaries), one group per reason, each with one
    sentence for all of them: the reason is said once, not on every row."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        if not model["available"]:
            groups.setdefault(model["reason"] or "reason unknown", []).append(model)
    simulator_works = any(m["available"] and m["provider"] == "simulator" and not m.get("behavior") for m in models)
    return [{"reason": reason, "message": _group_message(reason, members, simulator_works), "models": members}
            for reason, members in groups.items()]


def _group_message(reason: str, members: list[dict[str, Any]], simulator_works: bool) -> str:
    providers = list(dict.fromkeys(PROVIDER_LABELS.get(m["provider"], m["provider"]) for m in members))
    if reason == NO_AWS_CREDENTIALS:
        message = (f"No AWS credentials: {_and(providers)} models are unavailable "
                   "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)")
        return message + ("; the sim-* models work without a cloud account." if simulator_works else ".")
    if len(members) == 1:
        return f"{members[0]['name']} is unavailable: {reason}."
    return f"{len(members)} {_and(providers)} models are unavailable: {reason}."


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


class _TtlCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: Any, compute: Any) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._values.get(key)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        value = compute()
        with self._lock:
            self._values[key] = (time.monotonic(), value)
        return value


def _deployment_detail(deployment: EmdDeployment) -> dict[str, Any]:
    return {
        "stack_name": deployment.stack_name,
        "status": deployment.status,
        "instance_type": deployment.instance_type,
        "engine_type": deployment.engine_type,
        "service_type": deployment.service_type,
        "base_url": deployment.base_url,
    }


class Catalog:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.models = load_models(resolve_path(config["catalog"]["models_file"]))
        aws_region = config["aws"]["region"]
        self.bedrock_region = config["bedrock"].get("region") or aws_region
        sim = config["simulator"]
        self.simulator_base_url = f"http://{sim['host']}:{sim['port']}/v1"
        self.probe_timeout_s = float(config["catalog"]["probe_timeout_s"])
        self.emd = EmdDiscovery(
            region=config["catalog"].get("emd_region") or aws_region,
            ttl_s=float(config["catalog"]["emd_cache_ttl_s"]),
        )
        self._probes = _TtlCache(float(config["catalog"]["availability_ttl_s"]))

    # --- specs -----------------------------------------------------------------------------------

    def all_specs(self) -> list[ModelSpec]:
        """Configured models, then EMD deployments found in CloudFormation that are not configured."""
        specs = list(self.models.values())
        configured = {(m.model_id, m.tag) for m in specs if m.provider == "emd"}
        discovery = self.emd.get()
        for deployment in discovery.deployments:
            if (deployment.model_id, deployment.tag) in configured or deployment.key in self.models:
                continue
            specs.append(
                ModelSpec(
                    key=deployment.key,
                    name=f"{deployment.model_id}/{deployment.tag} (EMD)",
                    provider="emd",
                    model_id=deployment.model_id,
                    tag=deployment.tag,
                    api_key_env="EMD_API_KEY",
                    discovered=True,
                    instance_type=deployment.instance_type,
                )
            )
        return specs

    def get(self, key: str) -> ModelSpec | None:
        if key in self.models:
            return self.models[key]
        return next((spec for spec in self.all_specs() if spec.key == key), None)

    def instance(self, spec: ModelSpec) -> tuple[str | None, int]:
        """The instance type and count a model runs on: its catalogue entry's, else its EMD stack's."""
        if spec.instance_type or spec.provider != "emd":
            return spec.instance_type, spec.instances
        deployment = next((d for d in self.emd.get().deployments if (d.model_id, d.tag) == (spec.model_id, spec.tag)),
                          None)
        return (deployment.instance_type if deployment else None), spec.instances

    def known_keys(self) -> list[str]:
        return sorted(self.models)

    # --- availability ----------------------------------------------------------------------------

    def availability(self, spec: ModelSpec) -> Availability:
        if spec.provider == "bedrock":
            return self._probes.get_or_compute(("bedrock-credentials",), self._bedrock_credentials)
        if spec.provider == "emd":
            return self._emd_availability(spec)
        url = self._base_url(spec)
        return self._probes.get_or_compute(("probe", url, spec.api_key_env), lambda: self._probe(url, spec))

    def describe(self, specs: list[ModelSpec]) -> list[dict[str, Any]]:
        """Summaries with availability; endpoint probes run side by side so one slow host costs once."""
        if not specs:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
            results = list(pool.map(self.availability, specs))
        return [{**spec.summary(), **self._effective_fields(spec), **avail.as_dict(), **_behavior_fields(spec)}
                for spec, avail in zip(specs, results, strict=True)]

    def _effective_fields(self, spec: ModelSpec) -> dict[str, Any]:
        if spec.provider == "bedrock":
            return {"region": spec.region or self.bedrock_region}
        if spec.provider == "simulator":
            return {"base_url": self._base_url(spec)}
        return {}

    def _bedrock_credentials(self) -> Availability:
        try:
            credentials = boto3.Session(region_name=self.bedrock_region).get_credentials()
        except Exception as exc:  # a broken profile file is a reason too
            return Availability(False, f"AWS credentials unreadable: {exc}")
        if credentials is None:
            return Availability(False, NO_AWS_CREDENTIALS)
        return Availability(True)

    def _emd_availability(self, spec: ModelSpec) -> Availability:
        discovery = self.emd.get()
        deployment = next(
            (d for d in discovery.deployments if (d.model_id, d.tag) == (spec.model_id, spec.tag)), None
        )
        if deployment is not None:
            detail = _deployment_detail(deployment)
            if not deployment.ready:
                return Availability(False, f"deployment not ready: {deployment.status}", detail)
            if not (spec.base_url or deployment.base_url):
                return Availability(False, "deployment has no BaseURL output", detail)
            return Availability(True, None, detail)
        if spec.base_url:  # a router URL configured by hand: reachable is the best we can say
            return self._probes.get_or_compute(
                ("probe", spec.base_url, spec.api_key_env), lambda: self._probe(spec.base_url, spec)
            )
        if discovery.error:
            # EMD and Bedrock read the same credential chain: with none, both say so in the same words.
            credentials = self._probes.get_or_compute(("bedrock-credentials",), self._bedrock_credentials)
            return credentials if not credentials.available else Availability(False, discovery.error)
        return Availability(False, f"not deployed (no CloudFormation stack for {spec.emd_model})")

    def _probe(self, base_url: str, spec: ModelSpec) -> Availability:
        headers = {}
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = requests.get(base_url.rstrip("/") + "/models", headers=headers,
                                    timeout=self.probe_timeout_s)
        except requests.ConnectionError:
            return Availability(False, f"endpoint unreachable: cannot connect to {base_url}")
        except requests.Timeout:
            return Availability(False, f"endpoint unreachable: no answer from {base_url} in {self.probe_timeout_s:g} s")
        with response:
            if response.status_code in (401, 403):
                hint = f" (set {spec.api_key_env})" if spec.api_key_env and not key else ""
                return Availability(False, f"endpoint refused the API key: HTTP {response.status_code}{hint}")
            if response.status_code >= 500:
                return Availability(False, f"endpoint error: HTTP {response.status_code}")
        return Availability(True)

    # --- targets ---------------------------------------------------------------------------------

    def _base_url(self, spec: ModelSpec) -> str:
        if spec.provider == "simulator":
            return spec.base_url or self.simulator_base_url
        return spec.base_url or ""

    def target(self, spec: ModelSpec) -> Target:
        """Where to send a request for ``spec``; raises ProviderError when it cannot be reached at all."""
        api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        if spec.provider == "bedrock":
            return Target(key=spec.key, provider="bedrock", model_id=spec.model_id or "",
                          region=spec.region or self.bedrock_region)
        if spec.provider == "emd":
            base_url = spec.base_url
            if not base_url:
                availability = self._emd_availability(spec)
                if not availability.available:
                    raise ProviderError("not_found", f"{spec.emd_model}: {availability.reason}")
                base_url = (availability.detail or {}).get("base_url")
            return Target(key=spec.key, provider="openai", model_id=spec.emd_model,
                          base_url=_openai_base(base_url or ""), api_key=api_key)
        return Target(key=spec.key, provider="openai", model_id=spec.model_id or "",
                      base_url=self._base_url(spec), api_key=api_key)


def _behavior_fields(spec: ModelSpec) -> dict[str, Any]:
    behavior = simulator_behavior(spec)
    return {"behavior": behavior[0], "behavior_detail": behavior[1]} if behavior else {"behavior": None}


def _openai_base(url: str) -> str:
    """EMD's BaseURL output is the router root; its OpenAI API lives under /v1."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def init_app(app: Flask) -> None:
    app.extensions["catalog"] = Catalog(app.config["PEP"])


def get_catalog() -> Catalog:
    return current_app.extensions["catalog"]
