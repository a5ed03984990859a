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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from backend.results.metrics import Slo

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
