"""The capacity search: the highest concurrency that meets an SLO, found by probing.

The planner (this first part) is pure: it reads the probes measured so far and says which concurrency
to probe next, or that the search is over and why. It starts at ``start`` and doubles the concurrency
until a probe breaks the SLO (or the maximum is reached), then bisects between the last good and the
first bad level until the bracket is no wider than the precision, as evalscope's ``--sla-auto-tune`` and
vLLM's ``bench sweep serve_sla`` do. Each probe is run ``repeats`` times and judged on the mean of its
repeats' figures (percentile TTFT, TPOT and latency at the SLO's percentile, and the error rate); the
spread of the repeats (min/max, and a t-based 95 % interval from three repeats) is kept for display.

A figure that cannot be computed (no successful request) breaks nothing: a probe whose bounded figure
is unknown cannot be judged, and the search stops there and says so, rather than guess.

The second part runs a search on the stress-job machinery. A search is a ``capacity_searches`` row;
each repeat of a probe is an ordinary one-level stress job linked to it by ``stress_jobs.search_id``
(evalscope refuses a repeated level, and repeats run one after the other so that they never load the
target together). ``advance_searches`` (called by the worker on every tick) moves each active search
one step: it waits for the probe job that runs, queues the next repeat, records a probe whose repeats
have all finished (its figures from ``backend.results.service``), asks the planner, and queues the next
probe or ends the search. Everything is in rows, so a restarted worker carries on where the last left
off; every change to a search is one UPDATE conditional on its ``version``, so two workers never both
advance it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from scipy import stats
from sqlalchemy import Boolean, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from backend.db import db
from backend.db_types import Json, UtcDateTime
from backend.errors import ApiError, NotFound
from backend.jobs import service as job_service
from backend.results.figures import _clean, _figure
from backend.results.metrics import LIMITED, Slo, percentile
from backend.results.service import job_results, load_requests
from backend.security.auth import created_by as actor_name
from backend.stress import secrets
from backend.stress.datasets import get_dataset
from backend.stress.models import ACTIVE, JobStatus, StressJob, new_job_id, transition, utcnow
from backend.stress.params import StressParams, check_limits
from backend.stress.service import resolve_target
from backend.validation import STRICT, parse_body

FIGURES = ("ttft_ms", "tpot_ms", "latency_s", "error_rate")


@dataclass(frozen=True)
class Precision:
    """How narrow the final bracket must be: a number of concurrency steps, or a fraction of the
    last good concurrency (``relative``), never less than one step."""

    value: float = 1.0
    relative: bool = False

    @classmethod
    def parse(cls, raw: int | str) -> Precision:
        """``1`` or ``4`` (steps), ``"10%"`` (of the last good concurrency)."""
        if isinstance(raw, str) and raw.strip().endswith("%"):
            percent = float(raw.strip()[:-1])
            if not 0 < percent < 100:
                raise ValueError("a relative precision must be between 0 and 100 %")
            return cls(percent / 100.0, relative=True)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise ValueError('must be a whole number of at least 1, or a percentage such as "10%"')
        return cls(float(raw))

    def step(self, last_good: int) -> int:
        if self.relative:
            return max(1, math.ceil(self.value * last_good))
        return int(self.value)

    def as_json(self) -> int | str:
        return f"{self.value * 100:g}%" if self.relative else int(self.value)

    def describe(self) -> str:
        return f"{self.value * 100:g} % of the last good concurrency" if self.relative else f"{int(self.value)}"


@dataclass(frozen=True)
class Spread:
    mean: float | None
    low: float | None  # the smallest repeat
    high: float | None  # the largest repeat
    ci95: float | None = None  # half-width of the t-based 95 % interval (three repeats or more)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "min": self.low, "max": self.high, "ci95": self.ci95}


def spread(values: Sequence[float | None]) -> Spread:
    """Mean, min and max of the repeats' values; None when any repeat has no value (a mean of the
    others would describe a different measurement)."""
    if not values or any(v is None for v in values):
        return Spread(None, None, None)
    clean = [float(v) for v in values if v is not None]
    mean = sum(clean) / len(clean)
    ci = None
    if len(clean) >= 3:
        sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1))
        ci = float(stats.t.ppf(0.975, len(clean) - 1)) * sd / math.sqrt(len(clean))
    return Spread(mean, min(clean), max(clean), ci)


@dataclass(frozen=True)
class Probe:
    """One concurrency, measured ``len(repeats)`` times. Each repeat maps the figures the SLO may bound
    (``ttft_ms``, ``tpot_ms``, ``latency_s`` at the SLO's percentile, ``error_rate``) to a value or None."""

    concurrency: int
    repeats: tuple[Mapping[str, float | None], ...]

    def spreads(self) -> dict[str, Spread]:
        return {name: spread([repeat.get(name) for repeat in self.repeats]) for name in FIGURES}


@dataclass(frozen=True)
class ProbeVerdict:
    meets: bool | None  # None: cannot be judged
    broken: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"meets": self.meets, "broken": list(self.broken), "unknown": list(self.unknown)}


def judge_probe(probe: Probe, slo: Slo) -> ProbeVerdict:
    """The SLO against the mean over the repeats. A broken limit is a verdict even when another
    figure is unknown (every request failing breaks an error-rate limit); otherwise an unknown bounded
    figure leaves the probe unjudged."""
    spreads = probe.spreads()
    limits = {**slo.limits(), **({"error_rate": slo.error_rate} if slo.error_rate is not None else {})}
    broken, unknown = [], []
    for name, limit in limits.items():
        mean = spreads[name].mean
        if mean is None:
            unknown.append(name)
        elif mean > limit:
            broken.append(name)
    if broken:
        return ProbeVerdict(False, tuple(broken), tuple(unknown))
    if unknown:
        return ProbeVerdict(None, (), tuple(unknown))
    return ProbeVerdict(True)


@dataclass(frozen=True)
class SearchState:
    slo: Slo
    start: int = 1
    precision: Precision = field(default_factory=Precision)
    repeats: int = 2
    max_concurrency: int = 512
    probes: tuple[Probe, ...] = ()


@dataclass(frozen=True)
class Outcome:
    finished: bool
    last_good: int | None  # the highest concurrency measured to meet the SLO below the first bad one
    first_bad: int | None  # the lowest concurrency measured to break it
    capacity: int | None  # last_good once finished (None when nothing measured meets the SLO)
    reason: str
    next_probe: int | None = None
    judged: bool = True  # False: stopped on a probe that could not be judged
    at_max: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"finished": self.finished, "bracket": [self.last_good, self.first_bad], "capacity": self.capacity,
                "reason": self.reason, "next_probe": self.next_probe, "judged": self.judged,
                "at_max": self.at_max}


NAMES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "latency_s": "latency", "error_rate": "error rate"}


def _names(figures: Sequence[str], slo: Slo) -> str:
    return ", ".join(NAMES[name] if name == "error_rate" else f"p{slo.percentile:g} {NAMES[name]}"
                     for name in figures)


def outcome(state: SearchState) -> Outcome:
    """Where the search stands: its bracket, the next probe or why it has stopped, in words."""
    slo = state.slo
    verdicts = [(probe, judge_probe(probe, slo)) for probe in state.probes]
    unjudged = next(((p, v) for p, v in verdicts if v.meets is None), None)
    bad = [p.concurrency for p, v in verdicts if v.meets is False]
    first_bad = min(bad) if bad else None
    good = [p.concurrency for p, v in verdicts if v.meets and (first_bad is None or p.concurrency < first_bad)]
    last_good = max(good) if good else None
    higher_good = sorted(p.concurrency for p, v in verdicts if v.meets and first_bad is not None
                         and p.concurrency > first_bad)
    note = (f"; concurrency {', '.join(map(str, higher_good))} met the SLO above the first bad level "
            "(the target is not monotonic at this precision)" if higher_good else "")

    def done(reason: str, **extra: Any) -> Outcome:
        return Outcome(True, last_good, first_bad, last_good, reason + note, **extra)

    if unjudged is not None:
        probe, verdict = unjudged
        return done(f"stopped: concurrency {probe.concurrency} could not be judged (no value for "
                    f"{_names(verdict.unknown, slo)}: no successful request)", judged=False)
    if not state.probes:
        first = min(state.start, state.max_concurrency)
        return Outcome(False, None, None, None, f"first probe at concurrency {first}", next_probe=first)
    if first_bad is None:
        assert last_good is not None
        if last_good >= state.max_concurrency:
            return done(f"concurrency {last_good}, the maximum allowed, meets the SLO: the capacity may be higher",
                        at_max=True)
        following = min(last_good * 2, state.max_concurrency)
        return Outcome(False, last_good, None, None, f"concurrency {last_good} meets the SLO; doubling to {following}",
                       next_probe=following)
    low = last_good or 0
    step = state.precision.step(low)
    if first_bad - low <= step:
        if last_good is None:
            return done(f"concurrency {first_bad} already breaks the SLO ({_broken(verdicts, first_bad, slo)}): "
                        "no tested concurrency meets it")
        return done(f"capacity {last_good}: concurrency {first_bad} breaks the SLO "
                    f"({_broken(verdicts, first_bad, slo)}), bracket within the precision "
                    f"({state.precision.describe()})")
    middle = (low + first_bad) // 2
    return Outcome(False, last_good, first_bad, None,
                   f"between {low} (good) and {first_bad} (breaks the SLO): bisecting at {middle}", next_probe=middle)


def _broken(verdicts: Sequence[tuple[Probe, ProbeVerdict]], concurrency: int, slo: Slo) -> str:
    verdict = next(v for p, v in verdicts if p.concurrency == concurrency)
    return _names(verdict.broken, slo) + " over the limit"


def next_probe(state: SearchState) -> int | None:
    """The next concurrency to probe, or None when the search is over (``outcome`` says why)."""
    return outcome(state).next_probe


def probe_dict(probe: Probe, slo: Slo) -> dict[str, Any]:
    return {"concurrency": probe.concurrency, "repeats": [dict(r) for r in probe.repeats],
            "mean": {name: s.mean for name, s in probe.spreads().items()},
            "spread": {name: s.as_dict() for name, s in probe.spreads().items()},
            "verdict": judge_probe(probe, slo).as_dict()}


# --- where to start: Little's law ----------------------------------------------------------------

ESTIMATE_PROBE = 32  # the estimate's probe sends this many requests at once (max_concurrency when lower)


@dataclass(frozen=True)
class Estimate:
    start: int  # the first concurrency the search probes
    value: float | None  # lambda x W, or None when it cannot be computed
    reason: str
    allowed_s: float | None = None  # W

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "value": self.value, "allowed_s": self.allowed_s, "reason": self.reason}


def littles_law(level: Mapping[str, Any], slo: Slo, maximum: int) -> Estimate:
    """The concurrency the target can hold within the SLO by Little's law, L = lambda x W: lambda is the
    request rate of a short probe with every request in flight at once (what the target delivers when
    saturated), W the time the SLO allows one request. W is the latency limit; else the TTFT limit
    (or, unbounded, one TPOT) plus the TPOT limit for each further output token; else, with only a TTFT
    limit, that limit plus the probe's own decode time (latency - TTFT). With no time bound, or no
    successful request, there is no estimate and the search starts at 1. Saturation overstates lambda
    at the SLO's load, so the estimate tends high; the search bisects down from a start that breaks."""
    def start_at_one(reason: str) -> Estimate:
        return Estimate(1, None, f"{reason}: starting at 1")

    rate, metrics = level.get("req_per_s"), level.get("metrics") or {}
    if not level.get("succeeded") or not rate:
        return start_at_one("the estimate's probe had no successful request")
    output = level.get("avg_output_tokens")
    mean = {name: (metrics.get(name) or {}).get("avg") for name in ("latency_s", "ttft_ms")}
    if slo.latency_s is not None:
        allowed, how = slo.latency_s, f"the latency limit {slo.latency_s:g} s"
    elif slo.tpot_ms is not None and output:
        first = slo.ttft_ms if slo.ttft_ms is not None else slo.tpot_ms
        allowed = (first + slo.tpot_ms * max(float(output) - 1.0, 0.0)) / 1000.0
        how = (f"{'the TTFT limit' if slo.ttft_ms is not None else 'one TPOT'} plus the TPOT limit for "
               f"{max(float(output) - 1.0, 0.0):.3g} more output tokens")
    elif slo.ttft_ms is not None and mean["latency_s"] is not None and mean["ttft_ms"] is not None:
        allowed = slo.ttft_ms / 1000.0 + max(mean["latency_s"] - mean["ttft_ms"] / 1000.0, 0.0)
        how = "the TTFT limit plus the probe's decode time"
    else:
        return start_at_one("the SLO bounds no time per request, so Little's law gives no estimate")
    value = float(rate) * allowed
    start = min(max(1, math.floor(value)), maximum)
    return Estimate(start, value, f"{float(rate):.3g} req/s saturated x {allowed:.3g} s allowed per request "
                                  f"({how}) = {value:.3g}: starting at {start}", allowed)


# --- the search as rows --------------------------------------------------------------------------

log = logging.getLogger("backend.results.capacity_search")


class CapacitySearch(db.Model):
    __tablename__ = "capacity_searches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    model_key: Mapped[str] = mapped_column(String(200))
    target: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # as a stress job's
    params: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # the workload, without levels
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)  # copied to each probe job; wiped at the end
    slo: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    start: Mapped[int] = mapped_column(Integer, default=1)  # with start_auto: set from the estimate
    start_auto: Mapped[bool] = mapped_column(Boolean, default=False)  # start from a Little's-law estimate
    # The estimate's probe and its figures: {concurrency, jobs, req_per_s, latency_s, allowed_s, value, reason}
    estimate: Mapped[dict[str, Any] | None] = mapped_column(Json)
    precision: Mapped[str] = mapped_column(String(16), default="1")  # "4" (steps) or "10%"
    repeats: Mapped[int] = mapped_column(Integer, default=2)
    max_concurrency: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)  # at least this many requests per probe job
    requests_per_slot: Mapped[int] = mapped_column(Integer, default=2)  # and at least this many per slot
    # Recorded probes: {concurrency, jobs, repeats: [figures], levels: [{req_per_s, ..., cost}]}
    probes: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    pending: Mapped[dict[str, Any] | None] = mapped_column(Json)  # the probe running: {concurrency, jobs}
    reason: Mapped[str | None] = mapped_column(Text)  # why it ended (the planner's words, or a failure)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(100), default=actor_name)  # who started it (backend/security)

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    @property
    def is_finished(self) -> bool:
        return self.job_status.is_finished

    def state(self) -> SearchState:
        slo = Slo.from_mapping(self.slo)
        probes = tuple(Probe(int(p["concurrency"]), tuple(p["repeats"])) for p in self.probes or [])
        return SearchState(slo=slo, start=self.start, precision=Precision.parse(_precision_raw(self.precision)),
                           repeats=self.repeats, max_concurrency=self.max_concurrency, probes=probes)


def _precision_raw(stored: str) -> int | str:
    return stored if stored.endswith("%") else int(stored)


def _save(search: CapacitySearch, to: JobStatus | None = None, **values: Any) -> bool:
    """One conditional UPDATE: applies only if nobody changed the search since it was read (its
    ``version``) and, with ``to``, only through the status change stress jobs use (``transition``).
    The caller commits."""
    unchanged = CapacitySearch.version == search.version
    values["version"] = CapacitySearch.version + 1
    if to is not None:
        return transition(search.id, to, unchanged, model=CapacitySearch, **values)
    statement = (update(CapacitySearch).where(CapacitySearch.id == search.id, unchanged).values(**values)
                 .execution_options(synchronize_session=False))
    return db.session.execute(statement).rowcount == 1


# --- creating ------------------------------------------------------------------------------------


class SloBody(BaseModel):
    model_config = STRICT

    percentile: float = Field(default=95.0, ge=1, le=100)
    ttft_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    tpot_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    latency_s: float | None = Field(default=None, gt=0, le=86_400)
    error_rate: float | None = Field(default=None, ge=0, le=1)


class SearchBody(BaseModel):
    """What a capacity search adds to a stress test's body (which gives no ``concurrency``)."""

    model_config = STRICT

    start: int | Literal["auto"] = 1  # "auto": from the Little's-law estimate of one short unbounded probe
    precision: int | str = 1
    repeats: int = Field(default=2, ge=1, le=5)
    max_concurrency: int | None = Field(default=None, ge=1)
    requests_per_slot: int = Field(default=2, ge=1, le=100)
    slo: SloBody | None = None

    @field_validator("start")
    @classmethod
    def _start(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or \"auto\"")
        return value

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: int | str) -> int | str:
        try:
            return Precision.parse(value).as_json()
        except ValueError as exc:
            raise ValueError(str(exc)) from None


def create_search(raw: Any, catalog: Any, config: dict[str, Any]) -> CapacitySearch:
    """A queued search from a request body: the search's own fields, and a stress test's workload
    validated as a stress job's is (``StressParams``, ``check_limits``) with ``start`` as its level."""
    if not isinstance(raw, dict):
        raise ApiError("body: must be a JSON object", field="body")
    if "concurrency" in raw:
        raise ApiError("concurrency: a capacity search chooses its own levels; give start and max_concurrency",
                       field="concurrency")
    own = {key: raw[key] for key in SearchBody.model_fields if key in raw}
    search_body: SearchBody = parse_body(own, SearchBody)
    workload = {key: value for key, value in raw.items() if key not in SearchBody.model_fields}
    if "requests" in workload and not (isinstance(workload["requests"], int)
                                       and not isinstance(workload["requests"], bool)):
        raise ApiError("requests: must be a whole number (at least this many requests per probe)", field="requests")
    workload.setdefault("requests", 1)
    body: StressParams = parse_body({**workload, "concurrency": [1 if search_body.start == "auto"
                                                                  else search_body.start]}, StressParams)
    settings = config["stress"]
    params = check_limits(body, settings)
    if body.labels:
        params["labels"] = body.labels  # every probe job requires them (_queue_probe_job)
    max_parallel, max_requests = int(settings["max_parallel"]), int(settings["max_requests"])
    maximum = search_body.max_concurrency or max_parallel
    if maximum > max_parallel:
        raise ApiError(f"max_concurrency: at most {max_parallel} (stress.max_parallel)", field="max_concurrency")
    auto = search_body.start == "auto"
    start = 1 if auto else int(search_body.start)
    if maximum < start:
        raise ApiError(f"max_concurrency: must be at least start ({start})", field="max_concurrency")
    if search_body.requests_per_slot * maximum > max_requests:
        raise ApiError(f"requests_per_slot: {search_body.requests_per_slot} per slot at max_concurrency {maximum} "
                       f"is more than {max_requests} requests (stress.max_requests)", field="requests_per_slot")
    if params.get("dataset_file"):
        dataset = get_dataset(params["dataset_file"])
        if dataset is None or dataset.format != params["dataset"]:
            raise ApiError(f"dataset_file: no uploaded {params['dataset']} dataset {params['dataset_file']!r}",
                           field="dataset_file")
    slo = (Slo.from_mapping(search_body.slo.model_dump()) if search_body.slo is not None
           else Slo.from_mapping(config["results"]["slo"]))
    if not slo.limits() and slo.error_rate is None:
        raise ApiError("slo: give at least one limit (ttft_ms, tpot_ms, latency_s or error_rate)", field="slo")
    target = resolve_target(body, catalog, params)
    requests = params.pop("requests")[0]
    params.pop("concurrency")
    search = CapacitySearch(model_key=target["key"], target=target, params=params, slo=slo.as_dict(),
                            start=start, start_auto=auto, precision=str(search_body.precision),
                            repeats=search_body.repeats, max_concurrency=maximum, requests=requests,
                            requests_per_slot=search_body.requests_per_slot, probes=[])
    if body.manual_config is not None and body.manual_config.api_key is not None:
        search.api_key_encrypted = secrets.encrypt(config["server"]["secret_key"],
                                                   body.manual_config.api_key.get_secret_value())
    db.session.add(search)
    db.session.commit()
    log.info("capacity search %s queued: %s, %s", search.id, search.model_key, slo.describe())
    return search


# --- reading -------------------------------------------------------------------------------------


def get_search(search_id: str) -> CapacitySearch:
    search = db.session.get(CapacitySearch, search_id)
    if search is None:
        raise NotFound(f"no capacity search {search_id!r}")
    return search


def where(search: CapacitySearch) -> Outcome:
    """The planner's outcome, or, while an automatic start is being measured, that."""
    if search.start_auto and search.estimate is None:
        count = min(search.max_concurrency, ESTIMATE_PROBE)
        return Outcome(False, None, None, None, f"estimating where to start: {count} requests at once, then "
                       "Little's law")
    return outcome(search.state())


def list_searches(*, status: str | None, model: str | None, limit: int, offset: int) -> dict[str, Any]:
    """Searches, newest first, each with its bracket and capacity (from its row: no job is read)."""
    query = select(CapacitySearch)
    if (wanted := job_service.statuses(status)) is not None:
        query = query.where(CapacitySearch.status.in_(wanted))
    if model:
        query = query.where(CapacitySearch.model_key == model)
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    rows = db.session.scalars(query.order_by(CapacitySearch.created_at.desc(), CapacitySearch.id)
                              .limit(limit).offset(offset)).all()
    items = []
    for search in rows:
        found = where(search)
        completed = search.status == JobStatus.COMPLETED.value
        items.append({"id": search.id, "status": search.status, "is_finished": search.is_finished,
                      "created_at": _iso(search.created_at), "finished_at": _iso(search.finished_at),
                      "model": search.model_key, "name": (search.target or {}).get("name"),
                      "label": (search.params or {}).get("label"),
                      "slo": Slo.from_mapping(search.slo).describe(), "probes": len(search.probes or []),
                      "bracket": {"last_good": found.last_good, "first_bad": found.first_bad},
                      "capacity": found.capacity if completed else None,
                      "reason": search.reason if search.is_finished else found.reason})
    return {"searches": items, "total": total, "limit": limit, "offset": offset}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return spread(values).mean


def search_dict(search: CapacitySearch) -> dict[str, Any]:
    """The search as the API and its page show it: every probe with its figures and their spread, the
    bracket, the capacity and why, and the cost at capacity."""
    state = search.state()
    found = where(search)
    probes = []
    for stored, probe in zip(search.probes or [], state.probes, strict=True):
        levels = stored.get("levels") or []
        probes.append({**probe_dict(probe, state.slo), "jobs": stored.get("jobs", []),
                       "replaced": stored.get("replaced", []),  # interrupted jobs run again
                       "req_per_s": _mean_or_none([lv.get("req_per_s") for lv in levels]),
                       "output_tokens_per_s": _mean_or_none([lv.get("output_tokens_per_s") for lv in levels]),
                       "usd_per_m_output_tokens": _mean_or_none([(lv.get("cost") or {}).get("usd_per_m_output_tokens")
                                                                 for lv in levels])})
    at_capacity = next((p for p in probes if found.capacity is not None and p["concurrency"] == found.capacity), None)
    if at_capacity is None:
        cost = {"usd_per_m_output_tokens": None, "reason": "no capacity: no probe meets the SLO"}
    elif at_capacity["usd_per_m_output_tokens"] is None:
        stored = next(p for p in search.probes if p["concurrency"] == found.capacity)
        reasons = {(lv.get("cost") or {}).get("reason") for lv in stored.get("levels") or []}
        cost = {"usd_per_m_output_tokens": None, "reason": "; ".join(sorted(r for r in reasons if r)) or "unknown"}
    else:
        cost = {"usd_per_m_output_tokens": at_capacity["usd_per_m_output_tokens"],
                "reason": f"mean over the {len(at_capacity['jobs'])} repeats at concurrency {found.capacity}"}
    pending = dict(search.pending) if search.pending else None
    jobs = [*(search.estimate or {}).get("jobs", []), *(job for p in search.probes or [] for job in p.get("jobs", [])),
            *(pending or {}).get("jobs", [])]  # the estimate's probe, each probe's repeats, the one running
    finished = search.is_finished
    return {
        "id": search.id, "status": search.status, "is_finished": finished,
        "created_at": _iso(search.created_at), "started_at": _iso(search.started_at),
        "finished_at": _iso(search.finished_at), "model": search.model_key, "created_by": search.created_by,
        "target": {k: v for k, v in dict(search.target).items() if k != "api_key_env"},
        "params": dict(search.params), "slo": {**state.slo.as_dict(), "description": state.slo.describe()},
        "start": search.start, "start_auto": search.start_auto, "estimate": search.estimate,
        "precision": _precision_raw(search.precision), "repeats": search.repeats,
        "max_concurrency": search.max_concurrency, "requests": search.requests,
        "requests_per_slot": search.requests_per_slot,
        "probes": probes, "pending": pending,
        "bracket": {"last_good": found.last_good, "first_bad": found.first_bad},
        "capacity": found.capacity if finished and search.status == JobStatus.COMPLETED.value else None,
        "capacity_so_far": found.last_good,
        "reason": search.reason if finished else found.reason,
        "next_probe": None if finished else found.next_probe,
        "cost_at_capacity": cost,
        "jobs": jobs,
        "figures": search_figures(probes, state.slo, found.capacity),
    }


def search_figures(probes: Sequence[Mapping[str, Any]], slo: Slo, capacity: int | None) -> list[dict[str, Any]]:
    """The curve as plotly JSON (``backend.results.figures``' conventions): each figure the SLO bounds
    against concurrency, the mean of the repeats with their min-max as error bars and the limit as a
    dashed line, then the throughput with the capacity marked. Probes in concurrency order."""
    ordered = sorted(probes, key=lambda p: p["concurrency"])
    x = [p["concurrency"] for p in ordered]
    colours = ["#15803d" if p["verdict"]["meets"] else "#b91c1c" if p["verdict"]["meets"] is False else "#6b7280"
               for p in ordered]
    limits = {**slo.limits(), **({"error_rate": slo.error_rate} if slo.error_rate is not None else {})}
    units = {"ttft_ms": "ms", "tpot_ms": "ms", "latency_s": "s", "error_rate": "fraction"}
    figures = []
    for name, limit in limits.items():
        spreads = [p["spread"][name] for p in ordered]
        means = [_clean(s["mean"]) for s in spreads]
        label = _names([name], slo)
        trace = {"type": "scatter", "mode": "lines+markers", "name": f"{label} (mean of repeats)", "x": x, "y": means,
                 "marker": {"color": colours, "size": 9},
                 "error_y": {"type": "data", "symmetric": False,
                             "array": [_clean(s["max"] - s["mean"]) if s["mean"] is not None else None
                                       for s in spreads],
                             "arrayminus": [_clean(s["mean"] - s["min"]) if s["mean"] is not None else None
                                            for s in spreads]}}
        line = {"type": "scatter", "mode": "lines", "name": f"limit {limit:g} {units[name]}",
                "x": [min(x, default=1), max(x, default=1)], "y": [limit, limit],
                "line": {"dash": "dash", "color": "#b91c1c"}, "hoverinfo": "skip"}
        figures.append(_figure(f"{label} against concurrency", [trace, line], "concurrency", units[name],
                               xaxis={"type": "log", "tickvals": x} if x else None))
    throughput = {"type": "scatter", "mode": "lines+markers", "name": "output tokens/s", "x": x,
                  "y": [_clean(p["output_tokens_per_s"]) for p in ordered], "marker": {"color": colours, "size": 9}}
    shapes = ([{"type": "line", "xref": "x", "yref": "paper", "x0": capacity, "x1": capacity, "y0": 0, "y1": 1,
                "line": {"dash": "dot", "color": "#15803d"}}] if capacity is not None else [])
    figures.append(_figure("Throughput, and the capacity found" if capacity is not None else "Throughput",
                           [throughput], "concurrency", "output tokens/s",
                           xaxis={"type": "log", "tickvals": x} if x else None, shapes=shapes))
    return figures


# --- cancelling ----------------------------------------------------------------------------------


def _cancel_jobs(job_ids: Sequence[str]) -> None:
    for job_id in job_ids:
        if not transition(job_id, JobStatus.CANCELLED, StressJob.status == JobStatus.QUEUED.value,
                          cancel_requested=True, error="cancelled with its capacity search"):
            transition(job_id, JobStatus.CANCELLING, cancel_requested=True)


def cancel_search(search_id: str) -> CapacitySearch:
    """Queued: cancelled at once. Running: its probe job is cancelled now, and the worker ends the
    search as ``cancelled`` when that job has finished (with the probes measured so far)."""
    for _ in range(5):  # another writer (the worker) may have moved it meanwhile: read it again
        search = get_search(search_id)
        db.session.refresh(search)
        if search.is_finished:
            raise ApiError(f"capacity search {search_id} already {search.status}", status=409, code="conflict")
        if search.job_status is JobStatus.QUEUED:
            changed = _save(search, JobStatus.CANCELLED, cancel_requested=True, reason="cancelled before it started")
        else:
            changed = _save(search, JobStatus.CANCELLING, cancel_requested=True)
            if search.job_status is JobStatus.CANCELLING:  # cancelled twice: the first is under way
                changed = True
        if changed:
            _cancel_jobs((search.pending or {}).get("jobs", []))
            db.session.commit()
            db.session.refresh(search)
            return search
        db.session.rollback()
    raise ApiError(f"capacity search {search_id} kept changing; try again", status=409, code="conflict")


# --- advancing (the worker, every tick) ----------------------------------------------------------


def advance_searches() -> None:
    """One step of every active search; a search that fails to advance is logged and left for the next tick."""
    active = [JobStatus.QUEUED.value, *(s.value for s in ACTIVE)]
    ids = db.session.scalars(select(CapacitySearch.id).where(CapacitySearch.status.in_(active))
                             .order_by(CapacitySearch.created_at)).all()
    for search_id in ids:
        try:
            advance(search_id)
        except Exception:  # one broken search must not stop the others, nor the worker's tick
            db.session.rollback()
            log.exception("capacity search %s: could not advance", search_id)


def advance(search_id: str) -> None:
    search = db.session.get(CapacitySearch, search_id, populate_existing=True)
    if search is None or search.is_finished:
        return
    if search.job_status is JobStatus.QUEUED:
        if not _save(search, JobStatus.RUNNING):
            db.session.rollback()
            return
        db.session.commit()
        search = db.session.get(CapacitySearch, search_id, populate_existing=True)
    pending = dict(search.pending) if search.pending else None
    jobs = [db.session.get(StressJob, job_id, populate_existing=True) for job_id in (pending or {}).get("jobs", [])]
    if search.cancel_requested or search.job_status is JobStatus.CANCELLING:
        _cancel_jobs([job.id for job in jobs if job is not None and not job.is_finished])
        if all(job is None or job.is_finished for job in jobs):
            _finish(search, JobStatus.CANCELLED, "cancelled by request" + _so_far(search))
        else:
            db.session.commit()
        return
    if pending is None and search.start_auto and search.estimate is None:
        count = min(search.max_concurrency, ESTIMATE_PROBE)
        job = _queue_probe_job(search, count, 0, requests=count)
        _commit_if(search, pending={"concurrency": count, "jobs": [job.id], "estimate": True})
        return
    if pending is not None:
        if any(job is not None and not job.is_finished for job in jobs):
            return  # the probe job runs: nothing to do until it ends
        if _retry_interrupted(search, pending, jobs):
            return
        failure = _unmeasured(jobs)
        if pending.get("estimate"):
            _record_estimate(search, pending, jobs, failure)
            return
        if failure is not None:
            _finish(search, JobStatus.FAILED, f"probe at concurrency {pending['concurrency']}: {failure}"
                    + _so_far(search))
            return
        if len(jobs) < search.repeats:
            job = _queue_probe_job(search, int(pending["concurrency"]), len(jobs))
            _commit_if(search, pending={**pending, "jobs": [*pending["jobs"], job.id]})
            return
        measured = _measure(search, int(pending["concurrency"]), jobs)  # type: ignore[arg-type]
        if pending.get("replaced"):
            measured["replaced"] = list(pending["replaced"])
        recorded = [*search.probes, measured]
        if not _commit_if(search, probes=recorded, pending=None):
            return
        search = db.session.get(CapacitySearch, search_id, populate_existing=True)
    found = outcome(search.state())
    if found.next_probe is None:
        status = JobStatus.COMPLETED if found.judged else JobStatus.FAILED
        _finish(search, status, found.reason)
        return
    job = _queue_probe_job(search, found.next_probe, 0)
    _commit_if(search, pending={"concurrency": found.next_probe, "jobs": [job.id]})


PROBE_RETRIES = 2  # probe jobs ended ``interrupted`` that are run again, per probe, before the search fails


def _retry_interrupted(search: CapacitySearch, pending: dict[str, Any], jobs: Sequence[StressJob | None]) -> bool:
    """A probe job cut short by a crash (``interrupted``, without its complete level) is no measurement
    of the target: it is replaced by a new job for the same repeat, up to ``PROBE_RETRIES`` a probe.
    A job that failed (the target refused, evalscope erred) is a finding and is not retried."""
    lost = [job.id for job in jobs if job is not None and job.job_status is JobStatus.INTERRUPTED
            and not any(level.position == 0 and level.complete for level in job.levels)]
    retries = int(pending.get("retries", 0))
    if not lost or retries + len(lost) > PROBE_RETRIES:
        return False
    concurrency = int(pending["concurrency"])
    count = concurrency if pending.get("estimate") else None
    replaced = []
    for index, job_id in enumerate(pending["jobs"]):
        replaced.append(_queue_probe_job(search, concurrency, index, requests=count).id if job_id in lost else job_id)
    log.info("capacity search %s: probe job%s %s interrupted; running again", search.id,
             "s" if len(lost) > 1 else "", ", ".join(lost))
    return _commit_if(search, pending={**pending, "jobs": replaced, "retries": retries + len(lost),
                                       "replaced": [*pending.get("replaced", []), *lost]})


def _record_estimate(search: CapacitySearch, pending: dict[str, Any], jobs: Sequence[StressJob | None],
                     failure: str | None) -> None:
    """The estimate's probe has ended: the search's start from Little's law (1 when it gives none)."""
    job = jobs[0] if jobs else None
    if failure is not None or job is None:
        found = Estimate(1, None, f"the estimate's probe gave no measurement ({failure}): starting at 1")
        level: dict[str, Any] = {}
    else:
        results = job_results(job, Slo.from_mapping(search.slo))
        level = next(lv for lv in results["levels"] if lv["position"] == 0)
        found = littles_law(level, Slo.from_mapping(search.slo), search.max_concurrency)
    record = {**found.as_dict(), "concurrency": int(pending["concurrency"]), "jobs": list(pending["jobs"]),
              "replaced": list(pending.get("replaced", [])), "req_per_s": level.get("req_per_s"),
              "latency_s": ((level.get("metrics") or {}).get("latency_s") or {}).get("avg"),
              "output_tokens": level.get("avg_output_tokens")}
    if _commit_if(search, estimate=record, start=found.start, pending=None):
        log.info("capacity search %s: %s", search.id, found.reason)


def _commit_if(search: CapacitySearch, **values: Any) -> bool:
    if _save(search, **values):
        db.session.commit()
        return True
    db.session.rollback()
    return False


def _finish(search: CapacitySearch, status: JobStatus, reason: str) -> None:
    if _save(search, status, reason=reason):
        db.session.commit()
        log.info("capacity search %s %s: %s", search.id, status.value, reason)
    else:
        db.session.rollback()


def _so_far(search: CapacitySearch) -> str:
    found = outcome(search.state())
    if found.last_good is None and found.first_bad is None:
        return ""
    return f" (so far: last good {found.last_good}, first bad {found.first_bad})"


def _unmeasured(jobs: Sequence[StressJob | None]) -> str | None:
    """Why a probe's finished jobs give no measurement, or None when each has its complete level."""
    for job in jobs:
        if job is None:
            return "a probe job was deleted before it was recorded"
        level = next((lv for lv in job.levels if lv.position == 0), None)
        if level is None or not level.complete:
            return f"stress job {job.id} ended {job.status} without a complete level ({job.error or 'no reason'})"
    return None


def requests_for(search: CapacitySearch, concurrency: int) -> int:
    """A probe job's requests: enough for every slot to send ``requests_per_slot`` of them."""
    return max(search.requests, search.requests_per_slot * concurrency)


def _queue_probe_job(search: CapacitySearch, concurrency: int, repeat: int, *, requests: int | None = None
                     ) -> StressJob:
    count = requests if requests is not None else requests_for(search, concurrency)
    params = {**dict(search.params), "concurrency": [concurrency], "requests": [count]}
    labels = params.pop("labels", None)
    job = StressJob(model_key=search.model_key, target=dict(search.target), params=params, labels=labels,
                    estimated_requests=count, token_source="tokenizer" if params.get("tokenizer") else "server",
                    api_key_encrypted=search.api_key_encrypted, search_id=search.id, created_by=search.created_by,
                    progress={"percent": 0.0, "level": 0, "levels": 1, "concurrency": None, "processed": 0,
                              "total": count, "search": {"id": search.id, "repeat": repeat + 1}})
    db.session.add(job)
    db.session.flush()
    return job


def _measure(search: CapacitySearch, concurrency: int, jobs: Sequence[StressJob]) -> dict[str, Any]:
    """A probe's record: per repeat, the SLO's figures (at its percentile, from the per-request rows, as
    ``backend.results.metrics.judge`` computes them) and the level's throughput and cost."""
    slo = Slo.from_mapping(search.slo)
    repeats, levels = [], []
    for job in jobs:
        table = load_requests(job.id)
        results = job_results(job, slo, table)
        level = next(lv for lv in results["levels"] if lv["position"] == 0)
        columns = table.columns(0) if 0 in table.positions() else None
        figures: dict[str, float | None] = {}
        for name in LIMITED:
            if columns is not None and len(columns):
                figures[name] = percentile(columns.ok_values(name), slo.percentile)
            else:  # a level without per-request rows: its own percentile, when the row keeps it
                figures[name] = level["metrics"].get(name, {}).get(f"p{slo.percentile:g}")
        figures["error_rate"] = level["error_rate"]
        repeats.append(figures)
        levels.append({"job": job.id, "requests": level["requests"], "failed": level["failed"],
                       "req_per_s": level["req_per_s"], "output_tokens_per_s": level["output_tokens_per_s"],
                       "goodput": level["goodput"], "cost": level["cost"]})
    return {"concurrency": concurrency, "jobs": [job.id for job in jobs], "repeats": repeats, "levels": levels}
