"""``--assert`` bounds: ``p95_ttft_ms<=500``, ``error_rate<=0.01``, ``accuracy>=0.80``.

A bound is ``NAME[@WHERE] OP NUMBER`` with OP one of ``<= < >= > ==``. A stress test's bound holds when
every level meets it (``@8``: only the level at concurrency 8); an evaluation's when every cell (a model on
a dataset) does (``@model``: only that model's cells). A value the platform could not compute fails the
bound: it is never taken as met, nor as 0.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                                   "<": operator.lt, ">": operator.gt}
_BOUND = re.compile(r"^\s*(?P<name>[a-z][a-z0-9_]*)(?:@(?P<where>[^<>=\s]+))?\s*"
                    r"(?P<op><=|>=|==|<|>)\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")

_STATS = ("avg", "p50", "p90", "p95", "p99")
_FAMILIES = ("ttft_ms", "tpot_ms", "itl_ms", "latency_s")
# a stress level's number: name -> how to read it from the level row of GET /results/{id}
STRESS_METRICS: dict[str, Callable[[dict[str, Any]], Any]] = {
    **{f"{stat}_{family}": (lambda level, f=family, s=stat: (level.get(f) or {}).get(s))
       for family in _FAMILIES for stat in _STATS},
    "error_rate": lambda level: level.get("error_rate"),
    "req_per_s": lambda level: level.get("req_per_s"),
    "output_tokens_per_s": lambda level: level.get("output_tokens_per_s"),
    "total_tokens_per_s": lambda level: level.get("total_tokens_per_s"),
    "goodput": lambda level: (level.get("goodput") or {}).get("fraction"),
    "goodput_per_s": lambda level: (level.get("goodput") or {}).get("per_s"),
}
# an evaluation cell's metric: "accuracy" is its primary metric (acc, exact_match, ...); the others by name
EVAL_METRICS = ("accuracy", "acc", "exact_match", "rouge_l", "judge")


class BadBound(ValueError):
    """A bound that cannot be read: a usage error, found before anything starts."""


@dataclass(frozen=True)
class Bound:
    text: str
    name: str
    where: str | None
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)


@dataclass(frozen=True)
class Verdict:
    bound: Bound
    passed: bool
    line: str


def parse(texts: Iterable[str], kind: str) -> list[Bound]:
    known = STRESS_METRICS if kind == "stress" else EVAL_METRICS
    bounds = []
    for text in texts:
        match = _BOUND.match(text)
        if match is None:
            raise BadBound(f"--assert {text!r}: write NAME OP NUMBER, for example 'p95_ttft_ms<=500'")
        name = match["name"]
        if name not in known:
            raise BadBound(f"--assert {text!r}: unknown metric {name!r}; one of {', '.join(known)}")
        where = match["where"]
        if kind == "stress" and where is not None and not where.isdigit():
            raise BadBound(f"--assert {text!r}: @ takes a concurrency (a whole number), not {where!r}")
        bounds.append(Bound(text.strip(), name, where, match["op"], float(match["value"])))
    return bounds


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"


def check_stress(bounds: list[Bound], results: dict[str, Any]) -> list[Verdict]:
    """Each bound over the levels of ``GET /results/{id}``."""
    levels = results.get("levels") or []
    verdicts = []
    for bound in bounds:
        chosen = [level for level in levels if bound.where is None or str(level.get("concurrency")) == bound.where]
        if not chosen:
            where = f"at concurrency {bound.where}" if bound.where else "in this run"
            verdicts.append(Verdict(bound, False, f"FAIL {bound.text}: no level {where}"))
            continue
        read = STRESS_METRICS[bound.name]
        failures = []
        worst: tuple[float, dict[str, Any]] | None = None
        for level in chosen:
            value = _number(read(level))
            at = f"concurrency {level.get('concurrency')} (n={level.get('requests')} requests)"
            if value is None:
                failures.append(f"not computed at {at}")
                continue
            if not bound.holds(value):
                failures.append(f"{_fmt(value)} at {at}")
            if worst is None or _farther(bound, value, worst[0]):
                worst = (value, level)
        if failures:
            verdicts.append(Verdict(bound, False, f"FAIL {bound.text}: " + "; ".join(failures)))
        else:
            assert worst is not None
            value, level = worst
            verdicts.append(Verdict(bound, True, f"PASS {bound.text}: worst {_fmt(value)} at concurrency "
                                                 f"{level.get('concurrency')} (n={level.get('requests')} requests)"))
    return verdicts


def _farther(bound: Bound, value: float, than: float) -> bool:
    """Whether ``value`` is nearer to breaking the bound than ``than``."""
    return value > than if bound.op in ("<=", "<") else value < than if bound.op in (">=", ">") else (
        abs(value - bound.limit) > abs(than - bound.limit))


def check_evaluation(bounds: list[Bound], job: dict[str, Any]) -> list[Verdict]:
    """Each bound over the cells of ``GET /evaluations/{id}``."""
    cells = job.get("cells") or []
    verdicts = []
    for bound in bounds:
        chosen = [cell for cell in cells if bound.where is None or cell.get("model") == bound.where]
        if not chosen:
            where = f"for model {bound.where}" if bound.where else "in this run"
            verdicts.append(Verdict(bound, False, f"FAIL {bound.text}: no cell {where}"))
            continue
        failures, passes = [], []
        for cell in chosen:
            name = cell.get("primary_metric") if bound.name == "accuracy" else bound.name
            metric = (cell.get("metrics") or {}).get(name) if name else None
            label = f"{cell.get('model')} on {cell.get('dataset_name') or cell.get('dataset_id')}"
            if not isinstance(metric, dict):
                failures.append(f"{bound.name} not measured for {label}")
                continue
            value = _number(metric.get("score"))
            if value is None:
                failures.append(f"{bound.name} not computed for {label} ({cell.get('status')})")
                continue
            interval = ""
            low, high = _number(metric.get("ci_low")), _number(metric.get("ci_high"))
            if low is not None and high is not None:
                interval = f", 95% CI {_fmt(low)}-{_fmt(high)}"
            text = f"{_fmt(value)} {name} for {label} (n={metric.get('n')}{interval})"
            (passes if bound.holds(value) else failures).append(text)
        if failures:
            verdicts.append(Verdict(bound, False, f"FAIL {bound.text}: " + "; ".join(failures)))
        else:
            verdicts.append(Verdict(bound, True, f"PASS {bound.text}: " + "; ".join(passes)))
    return verdicts
