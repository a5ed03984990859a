"""The stress-test request: pydantic for shape, ``check_limits`` for the configured bounds.

Errors are 400s that name the field (``backend.validation.parse_body``). Presets are parameter
sets an operator starts from; they carry no target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from backend.catalog.manual import ManualEndpoint
from backend.config import resolve_path
from backend.errors import ApiError
from backend.jobs.placement import check_labels
from backend.validation import STRICT

Dataset = Literal["prompt", "random", "random_vl", "line_by_line", "openqa", "custom"]
FILE_DATASETS = ("line_by_line", "openqa", "custom")
TOKENIZER_DATASETS = ("random", "random_vl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class StressParams(BaseModel):
    model_config = STRICT

    model: str | None = Field(default=None, min_length=1, max_length=200)
    manual_config: ManualEndpoint | None = None
    label: str | None = Field(default=None, max_length=100)
    concurrency: list[int] = Field(min_length=1)
    requests: list[int] | int
    input_tokens: int = Field(default=256, ge=1)
    output_tokens: int = Field(default=128, ge=1)
    exact_output_tokens: bool = False  # also send min_tokens (vLLM, SGLang, the simulator)
    dataset: Dataset = "prompt"
    prompt: str | None = Field(default=None, max_length=200_000)
    system: str | None = Field(default=None, max_length=200_000)  # a leading system message (fixed prompt only)
    dataset_file: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$")
    tokenizer: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    image_width: int = Field(default=224, ge=16, le=4096)
    image_height: int = Field(default=224, ge=16, le=4096)
    image_count: int = Field(default=1, ge=1, le=16)
    stream: bool = True
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    connect_timeout_s: int = Field(default=10, ge=1, le=300)
    read_timeout_s: int = Field(default=120, ge=1, le=3600)
    total_timeout_s: int = Field(default=600, ge=1, le=21600)  # per request, and evalscope's overall bound
    # Warm-up requests at the start of every level, excluded from every result (evalscope's --warmup-num):
    # a whole number, or "concurrency" for as many as the level's concurrency, which evalscope advises.
    warmup: int | Literal["concurrency"] = 0
    # Only a worker with every one of these labels takes the job (worker.labels; backend/jobs/placement.py),
    # for example the network the endpoint is reachable from.
    labels: list[str] = Field(default_factory=list, max_length=16)
    # Load generators (evalscope processes) each level is split over: concurrency and requests divided,
    # one seed each, a common start (backend/stress/shards.py); at most stress.max_shards.
    shards: int = Field(default=1, ge=1, le=16)
    # Where the shards run: processes of the one worker that takes the job, or one shard job per worker
    # host, each taken by a different worker, agreeing each level's start through the database
    # (backend/stress/spread.py).
    spread: Literal["processes", "hosts"] = "processes"

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return check_labels(value, "labels")

    @field_validator("requests", mode="before")
    @classmethod
    def _one_or_per_level(cls, value: object) -> object:
        def whole(item: object) -> bool:
            return isinstance(item, int) and not isinstance(item, bool)

        if whole(value) or (isinstance(value, list) and all(whole(item) for item in value)):
            return value
        raise ValueError("must be a whole number, or a list of whole numbers (one per concurrency level)")

    @field_validator("concurrency")
    @classmethod
    def _positive_levels(cls, value: list[int]) -> list[int]:
        for index, level in enumerate(value):
            if level < 1:
                raise ValueError(f"level {index + 1} must be at least 1")
        return value

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup(cls, value: object) -> object:
        if value == "concurrency" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError('must be a whole number of at least 0, or "concurrency" (as many as each level\'s)')

    @model_validator(mode="after")
    def _consistent(self) -> StressParams:
        if (self.model is None) == (self.manual_config is None):
            raise ValueError("give exactly one of model or manual_config")
        return self


def _request_counts(params: StressParams) -> list[int]:
    if isinstance(params.requests, int):
        return [params.requests] * len(params.concurrency)
    return list(params.requests)


def has_chat_template(tokenizer_dir: Path) -> bool:
    """Whether a Hugging Face tokenizer directory carries a chat template (in its config or a file)."""
    if any((tokenizer_dir / name).exists() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def available_tokenizers(settings: dict[str, Any]) -> dict[str, Path]:
    """Tokenizers the operator configured: ``default`` is stress.tokenizer_path itself when it holds one,
    and each sub-directory holding one is offered under its name. Requests pick by name, never by path."""
    configured = settings.get("tokenizer_path")
    if not configured:
        return {}
    root = resolve_path(configured)
    if not root.is_dir():
        return {}

    def holds_tokenizer(path: Path) -> bool:
        return any((path / name).is_file() for name in TOKENIZER_FILES)

    found = {"default": root} if holds_tokenizer(root) else {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and holds_tokenizer(child):
            found.setdefault(child.name, child)
    return found


def check_limits(params: StressParams, settings: dict[str, Any]) -> dict[str, Any]:
    """Bounds from the configuration; returns the normalised parameters (no secrets) to store."""
    max_parallel = int(settings["max_parallel"])
    max_requests = int(settings["max_requests"])
    max_levels = int(settings["max_levels"])
    max_tokens = int(settings["max_tokens"])
    if len(params.concurrency) > max_levels:
        raise ApiError(f"concurrency: at most {max_levels} levels", field="concurrency")
    for index, level in enumerate(params.concurrency):
        if level > max_parallel:
            raise ApiError(f"concurrency[{index}]: at most {max_parallel} (stress.max_parallel)",
                           field=f"concurrency[{index}]")
    if len(set(params.concurrency)) != len(params.concurrency):
        raise ApiError("concurrency: a level is repeated", field="concurrency")
    if isinstance(params.requests, list) and len(params.requests) != len(params.concurrency):
        raise ApiError(f"requests: give one number, or one per concurrency level ({len(params.concurrency)})",
                       field="requests")
    counts = _request_counts(params)
    for index, count in enumerate(counts):
        field = "requests" if isinstance(params.requests, int) else f"requests[{index}]"
        if count < 1:
            raise ApiError(f"{field}: must be at least 1", field=field)
        if count > max_requests:
            raise ApiError(f"{field}: at most {max_requests} (stress.max_requests)", field=field)
    if sum(counts) > max_requests * max_levels:
        raise ApiError("requests: too many requests in total", field="requests")
    for name in ("input_tokens", "output_tokens"):
        if getattr(params, name) > max_tokens:
            raise ApiError(f"{name}: at most {max_tokens}", field=name)

    _check_shards(params.shards, params.concurrency, counts, int(settings.get("max_shards", 8)))

    if isinstance(params.warmup, int) and params.warmup > max_requests:
        raise ApiError(f"warmup: at most {max_requests} (stress.max_requests)", field="warmup")

    if params.dataset == "prompt":
        if params.prompt is None or not params.prompt.strip():
            raise ApiError("prompt: required with dataset 'prompt'", field="prompt")
    elif params.prompt is not None:
        raise ApiError(f"prompt: only used with dataset 'prompt', not {params.dataset!r}", field="prompt")
    if params.system is not None and params.dataset != "prompt":
        raise ApiError(f"system: only used with dataset 'prompt', not {params.dataset!r}", field="system")
    if params.dataset in FILE_DATASETS:
        if params.dataset_file is None:
            raise ApiError(f"dataset_file: required with dataset {params.dataset!r} (upload one first)",
                           field="dataset_file")
    elif params.dataset_file is not None:
        raise ApiError(f"dataset_file: not used with dataset {params.dataset!r}", field="dataset_file")

    tokenizers = available_tokenizers(settings)
    tokenizer = params.tokenizer
    if tokenizer is not None and tokenizer not in tokenizers:
        known = ", ".join(tokenizers) or "none configured (stress.tokenizer_path)"
        raise ApiError(f"tokenizer: unknown tokenizer {tokenizer!r}; available: {known}", field="tokenizer")
    if params.dataset in TOKENIZER_DATASETS and tokenizer is None:
        if "default" in tokenizers:
            tokenizer = "default"
        elif tokenizers:
            raise ApiError(f"tokenizer: dataset {params.dataset!r} needs one of: {', '.join(tokenizers)}",
                           field="tokenizer")
        else:
            raise ApiError(f"tokenizer: dataset {params.dataset!r} needs a local tokenizer and none is configured "
                           "(set stress.tokenizer_path)", field="tokenizer")
    if params.dataset in TOKENIZER_DATASETS and not has_chat_template(tokenizers[tokenizer]):
        # evalscope sizes random chat prompts through the chat template; without one it sends a bare
        # completion prompt, which a chat-completions endpoint refuses.
        raise ApiError(f"tokenizer: {tokenizer!r} has no chat template, which random prompts for a chat "
                       "endpoint need (use the model's own tokenizer files)", field="tokenizer")

    stored = params.model_dump(exclude={"manual_config", "model", "label", "labels"})
    stored.update(requests=counts, tokenizer=tokenizer)
    if params.spread == "hosts" and params.shards == 1:
        raise ApiError("spread: 'hosts' needs shards of 2 or more (one shard job per worker host)", field="spread")
    if params.spread == "processes":  # stored only when it is not the default
        stored.pop("spread")
    if params.shards == 1:  # an unsharded job's parameters stay as they were before shards existed
        stored.pop("shards")
    if params.system is None or not params.system.strip():
        stored.pop("system")
    if params.dataset != "random_vl":
        for name in ("image_width", "image_height", "image_count"):
            stored.pop(name)
    return stored


def _check_shards(shards: int, levels: list[int], counts: list[int], max_shards: int) -> None:
    """Every shard of every level needs at least one concurrency slot and one request."""
    if shards > max_shards:
        raise ApiError(f"shards: at most {max_shards} (stress.max_shards)", field="shards")
    for index, (level, count) in enumerate(zip(levels, counts, strict=True)):
        if shards > level:
            raise ApiError(f"shards: {shards} shards cannot split concurrency[{index}] = {level} "
                           "(at most one shard per concurrency slot)", field="shards")
        if shards > count:
            raise ApiError(f"shards: {shards} shards cannot split requests[{index}] = {count} "
                           "(each shard needs at least one request)", field="shards")


PRESETS: list[dict[str, Any]] = [
    {
        "key": "quick",
        "name": "Quick check",
        "description": "One request at a time, ten requests: does the endpoint answer, and how fast?",
        "params": {"concurrency": [1], "requests": [10], "input_tokens": 128, "output_tokens": 64,
                   "dataset": "prompt", "prompt": DEFAULT_PROMPT, "stream": True, "temperature": 0.0},
    },
    {
        "key": "standard",
        "name": "Standard sweep",
        "description": "Four concurrency levels to see throughput and latency bend as load grows.",
        "params": {"concurrency": [1, 4, 8, 16], "requests": [10, 32, 64, 128], "input_tokens": 512,
                   "output_tokens": 256, "dataset": "prompt", "prompt": DEFAULT_PROMPT, "stream": True,
                   "temperature": 0.0},
    },
    {
        "key": "saturation",
        "name": "Saturation sweep",
        "description": "Push to high concurrency to find where throughput stops growing and queues form.",
        "params": {"concurrency": [1, 8, 32, 64, 128, 256], "requests": [16, 64, 256, 512, 1024, 2048],
                   "input_tokens": 1024, "output_tokens": 256, "dataset": "prompt", "prompt": DEFAULT_PROMPT,
                   "stream": True, "temperature": 0.0},
    },
]
