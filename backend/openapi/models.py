"""Response models for the parts of the API whose JSON shape is stable.

They describe answers; nothing validates a response with them at run time (the fuzz test in
``tests/test_fuzz_api.py`` checks that answers match them). Extra fields are allowed where a shape grows by
adding fields (a job gains ``created_by``, a list gains a filter echo), refused where it must not (errors).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OPEN = ConfigDict(extra="allow")
CLOSED = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    model_config = CLOSED

    code: str = Field(description="a machine-readable name: bad_request, not_found, conflict, ...")
    message: str = Field(description="a sentence naming the offending field when there is one")
    details: dict[str, Any] = Field(description="``field`` names the request field; ``errors`` lists them all")


class ErrorOut(BaseModel):
    """Every refusal of the JSON API: ``{"error": {"code", "message", "details"}}`` (backend/errors.py)."""

    model_config = CLOSED

    error: ErrorDetail


class JobOut(BaseModel):
    """A job row as the API shows it (stress test, evaluation or capacity search)."""

    model_config = OPEN

    id: str
    status: str = Field(description="queued, starting, running, cancelling, succeeded, failed or cancelled")
    is_finished: bool | None = None
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    worker_id: str | None = Field(default=None, description="the worker that runs or ran it (not a capacity search)")
    worker_host: str | None = Field(default=None, description="the host that worker's processes run on")
    labels: list[str] | None = Field(default=None, description="what a worker must have to take it")


class WorkerOut(BaseModel):
    """A job worker: where it runs, what it takes, what it runs now, and its lease."""

    model_config = OPEN

    id: str
    host: str | None
    pid: int
    labels: list[str]
    capacity: dict[str, int] = Field(description="jobs of each kind it runs at once")
    running: dict[str, int] = Field(description="jobs of each kind it runs now")
    started_at: str
    heartbeat_at: str
    lease_until: str | None = Field(description="its jobs are another worker's to end after this")
    alive: bool


class WorkerList(BaseModel):
    model_config = OPEN

    workers: list[WorkerOut]


class WorkerState(BaseModel):
    model_config = OPEN

    alive: bool


class StressJobList(BaseModel):
    model_config = OPEN

    jobs: list[JobOut]
    total: int
    worker: WorkerState


class EvaluationJobList(BaseModel):
    model_config = OPEN

    jobs: list[JobOut]
    total: int


class CapacitySearchList(BaseModel):
    model_config = OPEN

    searches: list[JobOut]
    total: int


class Page(BaseModel):
    """The paging fields of a list answer: ``total`` rows match, ``limit`` from ``offset`` are shown."""

    model_config = OPEN

    total: int
    limit: int
    offset: int


class InferenceRunList(Page):
    runs: list[dict[str, Any]]


class ResultList(Page):
    results: list[dict[str, Any]]


class LogLines(BaseModel):
    model_config = CLOSED

    id: str
    lines: list[str]


class ModelList(BaseModel):
    model_config = OPEN

    models: list[dict[str, Any]]


class DatasetList(BaseModel):
    model_config = OPEN

    datasets: list[dict[str, Any]]


class StressPresets(BaseModel):
    model_config = OPEN

    presets: list[dict[str, Any]] = Field(description="named sets of stress-test fields (backend/stress/params.py)")


class StressDatasetList(BaseModel):
    model_config = OPEN

    datasets: list[dict[str, Any]]
    formats: list[str] = Field(description="the ``format`` values an upload may name")
    max_bytes: int


class StressFile(BaseModel):
    model_config = CLOSED

    name: str = Field(description="the name to ask ``.../files/{name}`` for")
    bytes: int
    modified: float = Field(description="seconds since the epoch")


class StressFileList(BaseModel):
    model_config = CLOSED

    id: str
    files: list[StressFile]


class EvaluationDatasetOut(BaseModel):
    """An evaluation dataset (``EvalDataset.as_dict``): one row per distinct content."""

    model_config = OPEN

    id: str
    content_hash: str
    created_at: str
    kind: str
    name: str
    bundled: bool
    filename: str | None = None
    dev_filename: str | None = None
    items: int
    dev_items: int | None = None
    size_bytes: int | None = None
    summary: dict[str, Any]


class EvaluationDatasetUploaded(EvaluationDatasetOut):
    created: bool = Field(description="false when the same content was stored already (200, not 201)")


class EvaluationCellOut(BaseModel):
    """One model x dataset cell of an evaluation (``review.cell_dict``)."""

    model_config = OPEN

    id: int
    job_id: str
    model: str
    dataset: str | None = None
    dataset_id: str | None = None
    status: str
    metrics: dict[str, Any]


class ReviewSample(BaseModel):
    """One scored sample (``review.sample_dict``)."""

    model_config = OPEN

    cell_id: int
    index: int
    sample_id: str | None = None
    score: float | None = None
    correct: bool | None = None


class SamplePage(BaseModel):
    """A page of an evaluation's samples; ``next``/``previous`` are the cursors for ``after``/``before``."""

    model_config = OPEN

    job_id: str
    total: int
    limit: int
    filter: dict[str, str] = Field(description="the filter as the query arguments that give it back")
    samples: list[ReviewSample]
    next: str | None
    previous: str | None


class SamplePair(BaseModel):
    model_config = OPEN

    sample_id: str
    outcome: str
    a: ReviewSample
    b: ReviewSample


class SideBySide(BaseModel):
    """Two cells on the same dataset content, sample by sample (``review.side_by_side``)."""

    model_config = OPEN

    a: EvaluationCellOut
    b: EvaluationCellOut
    matched: int
    counts: dict[str, int]
    only_in_a: int
    only_in_b: int
    outcome: str | None
    offset: int
    limit: int
    total: int
    pairs: list[SamplePair]


class OpenApiDocument(BaseModel):
    model_config = OPEN

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


DOWNLOAD = {"application/json": None, "*/*": None}  # an export: JSON, CSV, HTML or XLSX by ``format``
JSON = {"application/json": None}  # a JSON answer whose shape is the service's (no model yet)


class StressDatasetUpload(BaseModel):
    """``POST /api/v1/stress-tests/datasets``: the file, and its format (see ``GET .../datasets``)."""

    file: bytes = Field(description="the dataset file")
    format: str | None = Field(None, description="one of the formats the list route names")


class EvaluationDatasetUpload(BaseModel):
    """``POST /api/v1/datasets``: an evaluation dataset (JSONL or CSV) and an optional dev (few-shot) file."""

    kind: str = Field(description="the dataset's kind: multiple choice or question and answer")
    name: str = Field(description="a name for the dataset")
    file: bytes = Field(description="the test items")
    dev_file: bytes | None = Field(None, description="few-shot examples")


def capacity_search_body() -> type[BaseModel]:
    """The capacity search's own fields (``SearchBody``) with a stress test's workload (``StressParams``
    but ``concurrency``, which the search chooses; ``requests`` defaults to 1), as ``create_search`` reads them."""
    from pydantic import create_model

    from backend.results.capacity_search import SearchBody
    from backend.stress.params import StressParams

    workload = {name: (info.annotation, info) for name, info in StressParams.model_fields.items()
                if name != "concurrency" and name not in SearchBody.model_fields}
    workload["requests"] = (int, Field(1, ge=1, description="at least this many requests per probe"))
    return create_model("CapacitySearchBody", __base__=SearchBody, **workload)  # type: ignore[call-overload]
