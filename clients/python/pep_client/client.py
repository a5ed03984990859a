"""``Client``: every ``/api/v1`` route of the platform, grouped as the API is (``client.stress``,
``client.evaluations``, ...). Answers are the JSON the platform sends, typed by ``pep_client.types``
(generated from the platform's OpenAPI document); streams are iterators of ``pep_client.events``.

    from pep_client import Client

    with Client("http://127.0.0.1:5000") as pep:            # token: PEP_API_TOKEN, or token=...
        job = pep.stress.create(model="sim-fast", concurrency=[1, 4], requests=[8, 16], prompt="Hi")
        for event in pep.stress.follow(job["id"]):
            print(event)
        print(pep.results.get(job["id"])["summary"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent
from typing_extensions import Unpack  # typing's own from Python 3.12

from pep_client import types as t
from pep_client._http import Http
from pep_client.errors import PepConnectionError
from pep_client.events import InferenceEvent, JobEnded, JobEvent, inference_event, job_event

E = TypeVar("E")
FINISHED = frozenset({"completed", "succeeded", "failed", "cancelled", "interrupted", "deleted"})


def _id(value: str) -> str:
    """A path segment: quoted, so that an id can never name another route."""
    if not isinstance(value, str) or not value:
        raise ValueError("an id must be a non-empty string")
    return quote(value, safe="")


def _ids(values: Sequence[str]) -> str:
    return ",".join(values)


def _file(value: str | Path | bytes, default_name: str) -> tuple[str, bytes]:
    if isinstance(value, bytes):
        return default_name, value
    path = Path(value)
    return path.name, path.read_bytes()


class EventStream(Generic[E]):
    """An open event stream: iterate it for typed events; it closes at its end, on ``close()``, or when
    its ``with`` block is left (the platform then stops what it did for it). Opening it raises the
    platform's error at once (a job that does not exist, a model that is refused)."""

    def __init__(self, opened: AbstractContextManager[Iterator[ServerSentEvent]],
                 parse: Callable[[str, str], E]) -> None:
        self._opened = opened
        self._events = opened.__enter__()
        self._parse = parse
        self._closed = False

    def __iter__(self) -> Iterator[E]:
        try:
            for sse in self._events:
                if sse.data == "" and sse.event == "message":
                    continue
                yield self._parse(sse.event, sse.data)
        except httpx.TransportError as error:
            raise PepConnectionError(f"the event stream broke: {error or type(error).__name__}") from error
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._opened.__exit__(None, None, None)

    def __enter__(self) -> EventStream[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Part:
    def __init__(self, http: Http) -> None:
        self._http = http


class Models(_Part):
    def list(self, *, provider: str | None = None, capability: str | None = None) -> list[dict[str, Any]]:
        body = cast(t.ModelList, self._http.json("GET", "/models",
                                                 params={"provider": provider, "capability": capability}))
        return body["models"]

    def get(self, key: str) -> dict[str, Any]:
        return self._http.json("GET", f"/models/{_id(key)}")


class Inference(_Part):
    def stream(self, models: Sequence[str], prompt: str, **options: Any) -> EventStream[InferenceEvent]:
        """One prompt to several models at once, their answers as they stream: ``RunStarted``, then
        ``TextDelta`` / ``ReasoningDelta`` of each model interleaved, ``ModelDone`` or ``ModelFailed`` for each,
        ``RunDone``. ``options``: ``system``, ``max_tokens``, ``temperature``, ``images``, ``video``, ... as in
        ``InferenceBody``. Closing the stream early stops the models' answers."""
        body: dict[str, Any] = {"models": list(models), "prompt": prompt, **options}
        return EventStream(self._http.events("POST", "/multi-inference", json=body), inference_event)

    def complete(self, model: str, prompt: str, **options: Any) -> dict[str, Any]:
        """One model's whole answer as JSON (``POST /inference``)."""
        return self._http.json("POST", "/inference", json={"model": model, "prompt": prompt, **options})

    def runs(self, *, model: str | None = None, q: str | None = None, limit: int | None = None,
             offset: int | None = None) -> t.InferenceRunList:
        return self._http.json("GET", "/inference/runs", params={"model": model, "q": q, "limit": limit,
                                                                  "offset": offset})

    def run(self, run_id: str) -> dict[str, Any]:
        return self._http.json("GET", f"/inference/runs/{_id(run_id)}")


class _Jobs(_Part):
    """What stress tests, evaluations and capacity searches share: one job machinery on the platform."""

    path = ""

    def get(self, job_id: str) -> t.JobOut:
        return self._http.json("GET", f"{self.path}/{_id(job_id)}")

    def cancel(self, job_id: str) -> t.JobOut:
        """Ask the job to stop (it ends as cancelled once its processes are gone); repeating it is harmless."""
        return self._http.json("POST", f"{self.path}/{_id(job_id)}/cancel")

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0) -> t.JobOut:
        """Poll until the job has finished (any end: look at ``status``); ``TimeoutError`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.get("is_finished") or job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:g} s")
            time.sleep(poll_s)


class _Followed(_Jobs):
    def follow(self, job_id: str) -> EventStream[JobEvent]:
        """The job's events until it ends: ``StatusChanged``, ``Progress``, the kind's own (``LevelDone`` and
        ``RequestSample`` for a stress test, ``CellUpdate`` for an evaluation), and last ``JobEnded``."""
        return EventStream(self._http.events("GET", f"{self.path}/{_id(job_id)}/events"), job_event)

    def follow_to_end(self, job_id: str, on_event: Callable[[JobEvent], None] | None = None) -> dict[str, Any]:
        """Follow the job, handing each event to ``on_event``; the finished job. A stream that breaks is
        opened again (reading is safe to repeat) as long as the job runs."""
        broken = 0
        while True:
            try:
                with self.follow(job_id) as events:
                    for event in events:
                        if on_event is not None:
                            on_event(event)
                        if isinstance(event, JobEnded):
                            return event.job
            except PepConnectionError:
                broken += 1
                if broken > self._http.retries:
                    raise
                time.sleep(0.5 * broken)
            else:  # the stream ended without its last event (a proxy cut it): ask for the job
                job = dict(self.get(job_id))
                if job.get("is_finished") or job["status"] in FINISHED:
                    return job

    def log(self, job_id: str, *, lines: int | None = None) -> list[str]:
        body = cast(t.LogLines, self._http.json("GET", f"{self.path}/{_id(job_id)}/log",
                                                params={"format": "json", "lines": lines}))
        return body["lines"]


class Stress(_Followed):
    path = "/stress-tests"

    def create(self, **params: Unpack[t.StressParams]) -> t.JobOut:
        """Start a stress test (``StressParams``: ``model``, ``concurrency``, ``requests``, ...); it is queued
        for a worker. Raises ``BadRequest`` naming the field, ``Conflict`` when no worker could take it."""
        return self._http.json("POST", self.path, json=params)

    def list(self, *, status: str | None = None, model: str | None = None, limit: int | None = None,
             offset: int | None = None) -> t.StressJobList:
        return self._http.json("GET", self.path, params={"status": status, "model": model, "limit": limit,
                                                         "offset": offset})

    def delete(self, job_id: str) -> None:
        self._http.request("DELETE", f"{self.path}/{_id(job_id)}")

    def files(self, job_id: str) -> t.StressFileList:
        return self._http.json("GET", f"{self.path}/{_id(job_id)}/files")

    def file(self, job_id: str, name: str) -> bytes:
        return self._http.request("GET", f"{self.path}/{_id(job_id)}/files/{_id(name)}").content

    def presets(self) -> t.StressPresets:
        return self._http.json("GET", f"{self.path}/presets")

    def datasets(self) -> t.StressDatasetList:
        return self._http.json("GET", f"{self.path}/datasets")

    def upload_dataset(self, file: str | Path | bytes, *, format: str | None = None) -> dict[str, Any]:
        data = {"format": format} if format else None
        return self._http.json("POST", f"{self.path}/datasets", files={"file": _file(file, "dataset.jsonl")},
                               data=data)


class CapacitySearches(_Jobs):
    path = "/capacity-searches"

    def create(self, **params: Unpack[t.CapacitySearchBody]) -> t.JobOut:
        """Find the highest concurrency that meets an SLO (``CapacitySearchBody``)."""
        return self._http.json("POST", self.path, json=params)

    def list(self, *, status: str | None = None, model: str | None = None, limit: int | None = None,
             offset: int | None = None) -> t.CapacitySearchList:
        return self._http.json("GET", self.path, params={"status": status, "model": model, "limit": limit,
                                                         "offset": offset})


class Results(_Part):
    """What finished stress tests measured. ``slo``: ``ttft_ms``, ``tpot_ms``, ``latency_s``, ``error_rate``,
    ``percentile`` to judge goodput and capacity by (the platform's defaults otherwise)."""

    def list(self, *, model: str | None = None, status: str | None = None, since: str | None = None,
             until: str | None = None, q: str | None = None, limit: int | None = None,
             offset: int | None = None) -> t.ResultList:
        return self._http.json("GET", "/results", params={"model": model, "status": status, "since": since,
                                                           "until": until, "q": q, "limit": limit,
                                                           "offset": offset})

    def get(self, job_id: str, **slo: float) -> dict[str, Any]:
        return self._http.json("GET", f"/results/{_id(job_id)}", params=slo)

    def export(self, job_id: str, format: str, **slo: float) -> bytes:
        """``csv`` (levels), ``json``, ``requests.csv`` (one row per request) or ``html`` (an offline report)."""
        return self._http.request("GET", f"/results/{_id(job_id)}/export",
                                  params={"format": format, **slo}).content

    def compare(self, job_ids: Sequence[str], *, baseline: str | None = None, **slo: float) -> dict[str, Any]:
        return self._http.json("GET", "/results/compare",
                               params={"ids": _ids(job_ids), "baseline": baseline, **slo})

    def export_comparison(self, job_ids: Sequence[str], format: str, *, baseline: str | None = None,
                          **slo: float) -> bytes:
        return self._http.request("GET", "/results/compare/export", params={
            "ids": _ids(job_ids), "format": format, "baseline": baseline, **slo}).content


class Evaluations(_Followed):
    path = "/evaluations"

    def create(self, **params: Unpack[t.EvaluationParams]) -> t.JobOut:
        """Score models on datasets with ``evalscope eval`` (``EvaluationParams``: ``models``, ``datasets``,
        ``limit``, ``judge``, ...)."""
        return self._http.json("POST", self.path, json=params)

    def list(self, *, status: str | None = None, model: str | None = None, limit: int | None = None,
             offset: int | None = None) -> t.EvaluationJobList:
        return self._http.json("GET", self.path, params={"status": status, "model": model, "limit": limit,
                                                         "offset": offset})

    def samples(self, job_id: str, *, wrong: bool | None = None, cell: int | None = None,
                min_score: float | None = None, max_score: float | None = None, subset: str | None = None,
                q: str | None = None, limit: int | None = None, after: str | None = None,
                before: str | None = None) -> t.SamplePage:
        """One page of the run's answers, filtered; ``next`` is the cursor of the page after."""
        return self._http.json("GET", f"{self.path}/{_id(job_id)}/samples", params={
            "wrong": wrong, "cell": cell, "min_score": min_score, "max_score": max_score, "subset": subset,
            "q": q, "limit": limit, "after": after, "before": before})

    def all_samples(self, job_id: str, **filters: Any) -> Iterator[t.ReviewSample]:
        """Every sample the filters keep, page after page."""
        after: str | None = None
        while True:
            page = self.samples(job_id, after=after, **filters)
            yield from page["samples"]
            after = page["next"]
            if not after:
                return

    def side_by_side(self, a: int, b: int, *, outcome: str | None = None, limit: int | None = None,
                     offset: int | None = None) -> t.SideBySide:
        """Two cells' answers to the same samples (``a``, ``b``: cell ids)."""
        return self._http.json("GET", f"{self.path}/side-by-side", params={
            "a": a, "b": b, "outcome": outcome, "limit": limit, "offset": offset})

    def export(self, job_id: str, format: str, *, what: str = "scores") -> bytes:
        """``csv``, ``json`` or ``xlsx`` of the ``scores`` or of every sample (``what="samples"``)."""
        return self._http.request("GET", f"{self.path}/{_id(job_id)}/export",
                                  params={"format": format, "what": what}).content


class Datasets(_Part):
    """Evaluation datasets (uploaded and bundled)."""

    def list(self) -> t.DatasetList:
        return self._http.json("GET", "/datasets")

    def get(self, dataset_id: str) -> t.EvaluationDatasetOut:
        return self._http.json("GET", f"/datasets/{_id(dataset_id)}")

    def preview(self, dataset_id: str, *, rows: int | None = None) -> dict[str, Any]:
        return self._http.json("GET", f"/datasets/{_id(dataset_id)}/preview", params={"rows": rows})

    def upload(self, kind: str, name: str, file: str | Path | bytes, *,
               dev_file: str | Path | bytes | None = None) -> t.EvaluationDatasetUploaded:
        """Store a dataset (``kind``: ``mcq`` or ``qa``); the same content twice gives the stored one back."""
        files = {"file": _file(file, "items.jsonl")}
        if dev_file is not None:
            files["dev_file"] = _file(dev_file, "dev.jsonl")
        return self._http.json("POST", "/datasets", files=files, data={"kind": kind, "name": name})


class Analytics(_Part):
    """Filters as the pages take them: ``models``, ``datasets``, ``provider``, ``group``, ``pick``, ``since``,
    ``until``, ``runs`` (lists as comma-separated text)."""

    def compare(self, **query: Any) -> dict[str, Any]:
        return self._http.json("GET", "/analytics/compare", params=query)

    def trends(self, **query: Any) -> dict[str, Any]:
        return self._http.json("GET", "/analytics/trends", params=query)

    def correlations(self, **query: Any) -> dict[str, Any]:
        return self._http.json("GET", "/analytics/correlations", params=query)

    def quality_cost(self, **query: Any) -> dict[str, Any]:
        return self._http.json("GET", "/analytics/quality-cost", params=query)

    def overview(self) -> dict[str, Any]:
        return self._http.json("GET", "/stats/overview")

    def export(self, what: str, format: str, **query: Any) -> bytes:
        """``what``: ``leaderboard``, ``compare``, ``trends``, ``correlations`` or ``quality-cost``."""
        path = {"leaderboard": "/leaderboard"}.get(what, f"/analytics/{what}")
        return self._http.request("GET", path, params={**query, "format": format}).content


class Client:
    """The platform's API. ``base_url``: ``PEP_BASE_URL`` or http://127.0.0.1:5000; ``token``:
    ``PEP_API_TOKEN`` when not given; ``retries``: for connections that could not open and for reads
    (``GET``) that failed or met a 502/503/504 (never for a ``POST``)."""

    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 retries: int = 2, transport: httpx.BaseTransport | None = None) -> None:
        self._http = Http(base_url, token, timeout=timeout, retries=retries, transport=transport)
        self.base_url = self._http.base_url
        self.models = Models(self._http)
        self.inference = Inference(self._http)
        self.stress = Stress(self._http)
        self.capacity = CapacitySearches(self._http)
        self.results = Results(self._http)
        self.evaluations = Evaluations(self._http)
        self.datasets = Datasets(self._http)
        self.analytics = Analytics(self._http)

    def leaderboard(self, **query: Any) -> dict[str, Any]:
        """Models ranked by score per dataset column, each score with its n and 95 % interval, and ties."""
        return self._http.json("GET", "/leaderboard", params=query)

    def workers(self) -> t.WorkerList:
        return self._http.json("GET", "/workers")

    def openapi(self) -> dict[str, Any]:
        return self._http.json("GET", "/openapi.json")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
