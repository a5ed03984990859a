"""The evaluation request: pydantic for shape, ``check_limits`` for the configured bounds (``evaluations.*``).

Errors are 400s that name the field (``backend.validation.parse_body``). Which datasets and models exist is
checked by ``service.create_job`` (it needs the database and the catalogue); this module knows only shapes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from backend.catalog.manual import ManualEndpoint
from backend.errors import ApiError
from backend.jobs.placement import check_labels
from backend.validation import STRICT

# What a score may be computed as. acc: multiple choice (evalscope's extraction of the letter);
# exact_match: the normalised prediction equals the reference (QA); rouge_l: evalscope's ROUGE-L F1 (QA);
# judge: the judge model's verdict (QA, needs ``judge``). BLEU is not offered: without NLTK's data it
# silently scores 0 here.
Metric = Literal["acc", "exact_match", "rouge_l", "judge"]
MCQ_METRICS: tuple[Metric, ...] = ("acc",)
QA_METRICS: tuple[Metric, ...] = ("exact_match", "rouge_l", "judge")
_DATASET_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


class EvaluationParams(BaseModel):
    model_config = STRICT

    models: list[str] = Field(default_factory=list, max_length=50)
    manual_config: ManualEndpoint | None = None
    label: str | None = Field(default=None, max_length=100)
    datasets: list[str] = Field(min_length=1, max_length=50)
    limit: int | None = Field(default=None, ge=1)  # items per dataset; None: all of them
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, ge=1)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    few_shot: int = Field(default=0, ge=0, le=20)
    repeats: int = Field(default=1, ge=1)
    judge: str | None = Field(default=None, min_length=1, max_length=200)
    metrics: list[Metric] | None = None  # None: every metric the dataset's kind has (judge only with a judge)
    timeout_s: int | None = Field(default=None, ge=1)  # per request; default evaluations.request_timeout_s
    retries: int | None = Field(default=None, ge=0, le=5)  # default evaluations.retries
    batch_size: int | None = Field(default=None, ge=1, le=64)  # requests at once; default evaluations.batch_size
    # Only a worker with every one of these labels takes the job (worker.labels; backend/jobs/placement.py),
    # for example the network the endpoint is reachable from.
    labels: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return check_labels(value, "labels")

    @field_validator("models")
    @classmethod
    def _model_keys(cls, value: list[str]) -> list[str]:
        for index, key in enumerate(value):
            if not isinstance(key, str) or not key or len(key) > 200 or not key.isprintable():
                raise ValueError(f"item {index + 1} is not a model key")
        if len(set(value)) != len(value):
            raise ValueError("a model is repeated")
        return value

    @field_validator("datasets")
    @classmethod
    def _dataset_refs(cls, value: list[str]) -> list[str]:
        for index, ref in enumerate(value):
            if not _DATASET_REF.match(ref):
                raise ValueError(f"item {index + 1} is not a dataset id or benchmark name: {ref[:100]!r}")
        if len(set(value)) != len(value):
            raise ValueError("a dataset is repeated")
        return value

    @field_validator("metrics")
    @classmethod
    def _distinct_metrics(cls, value: list[Metric] | None) -> list[Metric] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("give each metric once, at least one")
        return value

    @model_validator(mode="after")
    def _some_model(self) -> EvaluationParams:
        if not self.models and self.manual_config is None:
            raise ValueError("give models (catalogue keys) or manual_config")
        return self


def check_limits(params: EvaluationParams, settings: dict[str, Any]) -> dict[str, Any]:
    """Bounds from ``evaluations.*``; returns the normalised parameters to store (no models, no secrets)."""
    count = len(params.models) + (params.manual_config is not None)
    if count > int(settings["max_models"]):
        raise ApiError(f"models: at most {settings['max_models']} models (evaluations.max_models)", field="models")
    if len(params.datasets) > int(settings["max_datasets"]):
        raise ApiError(f"datasets: at most {settings['max_datasets']} datasets (evaluations.max_datasets)",
                       field="datasets")
    if params.limit is not None and params.limit > int(settings["max_samples"]):
        raise ApiError(f"limit: at most {settings['max_samples']} (evaluations.max_samples)", field="limit")
    if params.repeats > int(settings["max_repeats"]):
        raise ApiError(f"repeats: at most {settings['max_repeats']} (evaluations.max_repeats)", field="repeats")
    if params.max_tokens > int(settings["max_tokens"]):
        raise ApiError(f"max_tokens: at most {settings['max_tokens']} (evaluations.max_tokens)", field="max_tokens")
    if params.timeout_s is not None and params.timeout_s > int(settings["max_request_timeout_s"]):
        raise ApiError(f"timeout_s: at most {settings['max_request_timeout_s']} (evaluations.max_request_timeout_s)",
                       field="timeout_s")
    if params.metrics is not None and "judge" in params.metrics and params.judge is None:
        raise ApiError("metrics: 'judge' needs a judge model (judge)", field="metrics")
    stored = params.model_dump(exclude={"models", "manual_config", "label", "labels"})
    stored.update(timeout_s=params.timeout_s or int(settings["request_timeout_s"]),
                  retries=params.retries if params.retries is not None else int(settings["retries"]),
                  batch_size=params.batch_size or int(settings["batch_size"]))
    return stored


def metrics_for(kind: str, chosen: list[str] | None, has_judge: bool) -> list[str]:
    """The metrics a cell of a dataset of ``kind`` (mcq, qa) computes, in order; the first is primary."""
    offered = MCQ_METRICS if kind == "mcq" else QA_METRICS
    if chosen is None:
        return [m for m in offered if m != "judge" or has_judge]
    return [m for m in chosen if m in offered]
