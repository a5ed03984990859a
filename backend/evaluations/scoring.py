"""Scores with their sample size and a 95 % interval (pure functions; no Flask, no database).

- ``wilson(successes, n)``: a proportion (accuracy over ``n`` items scored right or wrong) with its Wilson
  score interval (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``, no continuity correction):
  ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``.
- ``bootstrap_mean(values)``: the mean of per-sample scores in any range (ROUGE, a judge's 0-1 rating, a
  per-sample mean over repeats) with a percentile bootstrap interval: ``scipy.stats.bootstrap`` with 2,000
  resamples from ``numpy.random.default_rng(seed)`` (seed 0 unless given), so the same scores always give
  the same interval.
- ``aggregate(scores_by_sample)``: repeats (evalscope's epochs) folded per sample first (the mean of a
  sample's repeats), then one estimate over the samples, so ``n`` is the number of samples, never samples
  times repeats, and the number of repeats is stated. All samples scored 0/1 once: ``wilson``; otherwise
  ``bootstrap_mean`` of the per-sample means.

A score that cannot be computed (no samples) is an ``Estimate`` whose ``value`` is None and whose
``reason`` says why: never 0. One sample has a value but no interval (``reason`` says so).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None
    n: int  # samples the value is over
    method: str  # "wilson" | "bootstrap" | "none"
    confidence: float = CONFIDENCE
    successes: int | None = None  # wilson only
    repeats: int | None = None  # repeats per sample (aggregate only; the fewest, when they differ)
    repeats_max: int | None = None
    unscored: int = 0  # samples (or repeats) that had no score and were left out
    reason: str | None = None  # why there is no value, or no interval

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """The proportion ``successes / n`` with its Wilson score interval."""
    _check_confidence(confidence)
    if isinstance(successes, bool) or isinstance(n, bool) or not isinstance(successes, int) \
            or not isinstance(n, int):
        raise TypeError("successes and n must be whole numbers")
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Estimate(None, None, None, 0, "wilson", confidence, successes=0,
                        reason="no samples were scored (n = 0)")
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, float(interval.low), float(interval.high), n, "wilson", confidence,
                    successes=successes)


def bootstrap_mean(values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                   seed: int = 0) -> Estimate:
    """The mean of ``values`` with a seeded percentile bootstrap interval."""
    _check_confidence(confidence)
    data = [float(value) for value in values]
    if any(not math.isfinite(value) for value in data):
        raise ValueError("scores must be finite numbers")
    n = len(data)
    if n == 0:
        return Estimate(None, None, None, 0, "bootstrap", confidence, reason="no samples were scored (n = 0)")
    mean = math.fsum(data) / n
    if n == 1:
        return Estimate(mean, None, None, 1, "bootstrap", confidence,
                        reason="one sample: an interval needs at least two")
    if all(value == data[0] for value in data):
        # Every resample has this mean; scipy would warn about a degenerate distribution.
        return Estimate(mean, mean, mean, n, "bootstrap", confidence)
    import numpy as np
    from scipy.stats import bootstrap

    result = bootstrap((np.asarray(data),), np.mean, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return Estimate(mean, float(interval.low), float(interval.high), n, "bootstrap", confidence)


def per_sample_means(scores_by_sample: Mapping[Any, Iterable[float | None]]) -> tuple[dict[Any, float], Counter[int],
                                                                                      int]:
    """Each sample's mean over its scored repeats, how many repeats the samples had, and how many repeats
    had no score (None); a sample with no scored repeat is left out."""
    means: dict[Any, float] = {}
    repeat_counts: Counter[int] = Counter()
    unscored = 0
    for sample, scores in scores_by_sample.items():
        scored = []
        for score in scores:
            if score is None:
                unscored += 1
                continue
            if not math.isfinite(float(score)):
                raise ValueError(f"sample {sample!r}: scores must be finite numbers")
            scored.append(float(score))
        if scored:
            means[sample] = math.fsum(scored) / len(scored)
            repeat_counts[len(scored)] += 1
    return means, repeat_counts, unscored


def aggregate(scores_by_sample: Mapping[Any, Iterable[float | None]], confidence: float = CONFIDENCE,
              seed: int = 0) -> Estimate:
    """One score over samples from ``{sample id: [score of each repeat]}``: per-sample means first."""
    raw = {sample: list(scores) for sample, scores in scores_by_sample.items()}
    means, repeat_counts, unscored = per_sample_means(raw)
    repeats = min(repeat_counts) if repeat_counts else None
    repeats_max = max(repeat_counts) if repeat_counts else None
    if not means:
        return Estimate(None, None, None, 0, "none", confidence, repeats=repeats, repeats_max=repeats_max,
                        unscored=unscored, reason="no samples were scored (n = 0)")
    values = list(means.values())
    binary_once = repeats_max == 1 and all(value in (0.0, 1.0) for value in values)
    if binary_once:
        estimate = wilson(int(sum(values)), len(values), confidence)
    else:
        estimate = bootstrap_mean(values, confidence, seed=seed)
    return Estimate(estimate.value, estimate.low, estimate.high, estimate.n, estimate.method, confidence,
                    successes=estimate.successes, repeats=repeats, repeats_max=repeats_max, unscored=unscored,
                    reason=estimate.reason)
