"""What the results say, computed from per-request rows and level rows: pure functions, no database.

Definitions (the README uses the same words):

- **TTFT**: time from sending a request to its first content or reasoning token, in ms.
- **Latency**: time from sending a request to its last token, in s.
- **TPOT**: time per output token after the first, ``(latency - TTFT) / (output tokens - 1)``, in ms.
- **ITL**: inter-token latency, the gap between two consecutive tokens of one stream, in ms.
- **Percentiles** are nearest-rank (the smallest value with at least p % of the values at or below
  it), as evalscope computes them, so our figures and evalscope's files agree.
- **Throughput**: successful requests (or their output tokens) per second of the level's wall time.
- **Goodput**: requests per second that succeeded *and* met every per-request limit of the SLO
  (TTFT, TPOT, latency); the good fraction is over all requests, failed ones included (AIPerf, vLLM).
- **Capacity**: the highest tested concurrency whose percentile limits and error-rate limit hold;
  a level cut short (partial) is not a measurement of its concurrency and does not count.

A figure that cannot be computed (no successful request, no streamed tokens) is None, never 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# One hover away on every page (and in the README): what each figure means.
DEFINITIONS = {
    "ttft": "Time to first token: from sending a request to its first content or reasoning token.",
    "latency": "Latency: from sending a request to its last token.",
    "tpot": "Time per output token: (latency - TTFT) / (output tokens - 1), per request.",
    "itl": "Inter-token latency: the gap between two consecutive tokens of one stream.",
    "percentile": "Nearest-rank percentile: the smallest value with at least p % of the values at or below it.",
    "req_per_s": "Requests that succeeded, per second of the level's wall time.",
    "output_tokens_per_s": "Output tokens of successful requests, per second of the level's wall time.",
    "total_tokens_per_s": "Input and output tokens of successful requests, per second of the level's wall time.",
    "goodput": "Goodput: requests per second that succeeded and met every per-request SLO limit "
               "(TTFT, TPOT, latency); the good fraction counts all requests, failed ones included.",
    "error_rate": "Failed requests over all requests of the level.",
    "capacity": "The highest tested concurrency whose percentile limits and error-rate limit hold; "
                "a level cut short does not count.",
    "cost": "Cost per million output tokens: hourly price x instances / (3600 x output tokens/s) x 10^6 for "
            "instances; for Bedrock, the input and output tokens of a request at their prices, per output token.",
    "partial": "A level cut short by a cancel or a crash: its figures come from the requests it finished.",
    "saturated": "Load generator saturated: an evalscope process used at least 90 % of a core over the level, "
                 "so its latencies are the client's, not the server's (split the level over more shards).",
}

PERCENTILES = (50, 90, 95, 99)
LIMITED = ("ttft_ms", "tpot_ms", "latency_s")  # per-request metrics an SLO may bound


def _finite(values: Iterable[float | None] | np.ndarray) -> np.ndarray:
    """The finite values as an array (None, NaN and infinities left out)."""
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    return array[np.isfinite(array)]


def percentile(values: Sequence[float | None] | np.ndarray, p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when there are none)."""
    clean = _finite(values)
    return float(np.percentile(clean, p, method="inverted_cdf")) if len(clean) else None


def mean(values: Iterable[float | None] | np.ndarray) -> float | None:
    clean = _finite(values)
    return float(clean.mean()) if len(clean) else None


def distribution(values: Sequence[float | None] | np.ndarray) -> dict[str, float | None]:
    """avg and the percentiles of ``values`` (None entries are left out)."""
    clean = _finite(values)
    if not len(clean):
        return {"avg": None, **{f"p{p}": None for p in PERCENTILES}}
    quantiles = np.percentile(clean, PERCENTILES, method="inverted_cdf")
    return {"avg": float(clean.mean()), **{f"p{p}": float(q) for p, q in zip(PERCENTILES, quantiles, strict=True)}}


# --- service level objectives --------------------------------------------------------------------


@dataclass(frozen=True)
class Slo:
    """Limits an operator holds a deployment to: per-request limits judged at ``percentile`` for
    capacity (and per request for goodput), and a bound on the error rate. None: no limit."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    latency_s: float | None = None
    error_rate: float | None = None
    percentile: float = 95.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Slo:
        known = {name: data[name] for name in ("ttft_ms", "tpot_ms", "latency_s", "error_rate", "percentile")
                 if data.get(name) is not None}
        return cls(**known)

    def limits(self) -> dict[str, float]:
        return {name: value for name in LIMITED if (value := getattr(self, name)) is not None}

    def as_dict(self) -> dict[str, Any]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "latency_s": self.latency_s,
                "error_rate": self.error_rate, "percentile": self.percentile}

    def describe(self) -> str:
        """"p95 TTFT ≤ 500 ms, p95 TPOT ≤ 50 ms, error rate ≤ 1 %" (or "no limits")."""
        p = f"p{self.percentile:g}"
        parts = [f"{p} TTFT ≤ {self.ttft_ms:g} ms" if self.ttft_ms is not None else "",
                 f"{p} TPOT ≤ {self.tpot_ms:g} ms" if self.tpot_ms is not None else "",
                 f"{p} latency ≤ {self.latency_s:g} s" if self.latency_s is not None else "",
                 f"error rate ≤ {self.error_rate * 100:g} %" if self.error_rate is not None else ""]
        return ", ".join(part for part in parts if part) or "no limits"


@dataclass
class Columns:
    """A level's requests as columns (NaN where a figure is missing), so that a level of 10,000
    requests is judged in a few array operations rather than a Python loop per request."""

    success: np.ndarray
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    latency_s: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Columns:
        def column(name: str) -> np.ndarray:
            return np.array([r.get(name) if r.get(name) is not None else np.nan for r in rows], dtype=float)

        return cls(success=np.array([bool(r.get("success")) for r in rows], dtype=bool),
                   ttft_ms=column("ttft_ms"), tpot_ms=column("tpot_ms"), latency_s=column("latency_s"))

    def __len__(self) -> int:
        return len(self.success)

    def good(self, slo: Slo) -> np.ndarray:
        """Requests that succeeded and met every per-request limit (a missing figure meets none)."""
        mask = self.success.copy()
        for name, limit in slo.limits().items():
            values = getattr(self, name)
            with np.errstate(invalid="ignore"):
                mask &= np.isfinite(values) & (values <= limit)
        return mask

    def ok_values(self, name: str) -> np.ndarray:
        values = getattr(self, name)[self.success]
        return values[np.isfinite(values)]


def _columns(requests: Columns | Sequence[Mapping[str, Any]]) -> Columns:
    return requests if isinstance(requests, Columns) else Columns.from_rows(requests)


def _percentile_of(values: np.ndarray, p: float) -> float | None:
    return float(np.percentile(values, p, method="inverted_cdf")) if len(values) else None


@dataclass
class Goodput:
    good: int
    total: int
    duration_s: float | None

    @property
    def fraction(self) -> float | None:
        return self.good / self.total if self.total else None

    @property
    def per_s(self) -> float | None:
        return self.good / self.duration_s if self.duration_s else None

    def as_dict(self) -> dict[str, Any]:
        return {"good": self.good, "total": self.total, "fraction": self.fraction, "per_s": self.per_s}


def goodput(requests: Columns | Sequence[Mapping[str, Any]], slo: Slo, duration_s: float | None) -> Goodput:
    columns = _columns(requests)
    return Goodput(good=int(columns.good(slo).sum()), total=len(columns), duration_s=duration_s)


@dataclass
class Verdict:
    """Whether one level meets the SLO, and which limits it breaks (or cannot be judged on)."""

    meets: bool | None  # None: cannot be judged (a partial level, or no successful request)
    broken: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"meets": self.meets, "broken": self.broken, "unknown": self.unknown, "reason": self.reason}


def judge(level: Mapping[str, Any], requests: Columns | Sequence[Mapping[str, Any]], slo: Slo) -> Verdict:
    """The SLO verdict for a level from its per-request rows (percentiles at ``slo.percentile``).

    A level stored before per-request rows existed has none: its own percentiles are used when the
    SLO's percentile is one the level row keeps (50, 90, 95, 99)."""
    if not level.get("complete", True):
        return Verdict(meets=None, reason="cut short: not a measurement of this concurrency")
    columns = _columns(requests)
    if len(columns):
        total, failed = len(columns), int((~columns.success).sum())
    else:
        total, failed = int(level.get("requests") or 0), int(level.get("failed") or 0)
    broken, unknown = [], []
    if slo.error_rate is not None:
        if not total:
            unknown.append("error_rate")
        elif failed / total > slo.error_rate:
            broken.append("error_rate")
    for name, limit in slo.limits().items():
        if len(columns):
            value = _percentile_of(columns.ok_values(name), slo.percentile)
        else:
            value = ((level.get("metrics") or {}).get(name) or {}).get(f"p{slo.percentile:g}")
        if value is None:
            unknown.append(name)
        elif value > limit:
            broken.append(name)
    if broken:
        return Verdict(meets=False, broken=broken, unknown=unknown)
    if unknown:
        return Verdict(meets=None, unknown=unknown, reason=f"no value for {', '.join(unknown)}")
    return Verdict(meets=True)


@dataclass
class Capacity:
    concurrency: int | None  # the highest tested concurrency that meets the SLO; None when none does
    position: int | None
    tested: int  # complete levels judged
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "position": self.position, "tested": self.tested,
                "reason": self.reason}


def capacity(levels: Sequence[Mapping[str, Any]], verdicts: Sequence[Verdict]) -> Capacity:
    """The highest concurrency whose level meets the SLO. Levels are judged on their own: a lower
    level that fails does not hide a higher one that holds (the table shows both)."""
    judged = [(level, verdict) for level, verdict in zip(levels, verdicts, strict=True) if verdict.meets is not None]
    good = [(int(level["concurrency"]), int(level["position"])) for level, verdict in judged if verdict.meets]
    if not judged:
        return Capacity(None, None, 0, "no complete level could be judged")
    if not good:
        return Capacity(None, None, len(judged), "no tested concurrency meets the SLO")
    best, position = max(good)
    highest = max(int(level["concurrency"]) for level, _ in judged)
    reason = ("every tested concurrency meets the SLO: the capacity may be higher" if best == highest
              else f"concurrency {best} is the highest that meets the SLO")
    unjudged = [str(level["concurrency"]) for level, verdict in zip(levels, verdicts, strict=True)
                if verdict.meets is None and int(level["concurrency"]) > best]
    if unjudged:
        reason += f"; concurrency {', '.join(unjudged)} could not be judged"
    return Capacity(best, position, len(judged), reason)


# --- levels from per-request rows (a level cut short has no evalscope summary) ------------------


def level_from_requests(requests: Sequence[Mapping[str, Any]], gaps_ms: Sequence[float] | np.ndarray
                        ) -> dict[str, Any]:
    """The figures of a level computed from its per-request rows, in the shape of
    ``backend.stress.outputs.level_result``; ``gaps_ms`` are every inter-token gap of its requests."""
    ok = [r for r in requests if r.get("success")]
    starts = [r["start_s"] for r in requests if r.get("start_s") is not None]
    ends = [r["end_s"] for r in requests if r.get("end_s") is not None]
    duration = (max(ends) - min(starts)) if starts and ends and max(ends) > min(starts) else None
    output = sum(int(r.get("output_tokens") or 0) for r in ok)
    total_tokens = output + sum(int(r.get("input_tokens") or 0) for r in ok)

    def rate(amount: float) -> float | None:
        return amount / duration if duration and ok else None

    def dist(values: Sequence[float | None]) -> dict[str, float | None]:
        figures = distribution(values)
        return {key: figures[key] for key in ("avg", "p50", "p90", "p95", "p99")}

    return {
        "requests": len(requests),
        "succeeded": len(ok),
        "failed": len(requests) - len(ok),
        "duration_s": duration,
        "req_per_s": rate(len(ok)),
        "output_tokens_per_s": rate(output),
        "total_tokens_per_s": rate(total_tokens),
        "avg_input_tokens": mean(r.get("input_tokens") for r in ok),
        "avg_output_tokens": mean(r.get("output_tokens") for r in ok),
        "metrics": {
            "latency_s": dist([r.get("latency_s") for r in ok]),
            "ttft_ms": dist([r.get("ttft_ms") for r in ok]),
            "tpot_ms": dist([r.get("tpot_ms") for r in ok]),
            "itl_ms": dist(gaps_ms),
        },
    }


def over_window(result: dict[str, Any], requests: Sequence[Mapping[str, Any]],
                window: tuple[float, float]) -> dict[str, Any]:
    """``result`` (``level_from_requests`` of a sharded level's merged rows) with its duration and throughputs
    taken over ``window``, the time in which every shard ran: each successful request counts, with its
    tokens, for the fraction of its own duration that lies inside the window.

    Counting only the requests that *completed* inside would be the other reading, but closed-loop shards
    finish their requests in waves (every slot of a shard at once, with identical outputs): a window that
    ends just before one shard's last wave drops that whole wave, a quarter of a small level's requests.
    Weighting by overlap counts the work done in the window, whichever side of its edges a request ends."""
    start, end = window
    counted = tokens_out = tokens_all = 0.0
    for row in requests:
        if not row.get("success") or row.get("start_s") is None or row.get("end_s") is None:
            continue
        begun, ended = float(row["start_s"]), float(row["end_s"])
        if ended <= begun:
            weight = 1.0 if start <= ended <= end else 0.0
        else:
            weight = max(0.0, min(ended, end) - max(begun, start)) / (ended - begun)
        output = int(row.get("output_tokens") or 0)
        counted += weight
        tokens_out += weight * output
        tokens_all += weight * (output + int(row.get("input_tokens") or 0))
    duration = end - start
    figures = dict(result)
    figures.update(duration_s=duration, req_per_s=counted / duration if result["succeeded"] else None,
                   output_tokens_per_s=tokens_out / duration if result["succeeded"] else None,
                   total_tokens_per_s=tokens_all / duration if result["succeeded"] else None)
    return figures


SATURATED_AT = 0.9  # client CPU over wall time: evalscope is one event loop, so at most one core


def client_load(records: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Each load generator's CPU over a level (``client_cpu.json``: cpu_s and wall_s) and whether any of
    them was saturated, in which case the level's latencies are the client's rather than the server's."""
    shards = []
    for record in records:
        cpu = (record or {}).get("cpu_s")
        wall = (record or {}).get("wall_s")
        ok = isinstance(cpu, int | float) and isinstance(wall, int | float) and wall > 0
        shards.append({"cpu_s": cpu if ok else None, "wall_s": wall if ok else None,
                       "utilisation": round(cpu / wall, 4) if ok else None})
    saturated = any(s["utilisation"] is not None and s["utilisation"] >= SATURATED_AT for s in shards)
    return {"shards": shards, "saturated": saturated}
