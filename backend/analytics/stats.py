"""The statistics the analytics feature reports: pure functions, no database.

- **Intervals of a score** come from ``backend.evaluations.scoring`` (Wilson for right/wrong, a seeded
  percentile bootstrap of the mean otherwise): the one implementation the evaluation cells were scored with.
- **Ties**: in a leaderboard column, every model whose 95 % interval overlaps the best score's interval
  (its upper end at or above the best's lower end) is tied with the best, not ranked below it.
- **Ranks**: within a column, by score, equal scores sharing the mean of their places (1 is best); a
  model's mean rank is over the columns it has a score in, with that count.
- **Exact McNemar** for two models' right/wrong answers on the same samples: only the discordant pairs
  carry information; under "no difference" the ``b`` samples only A got right are Binomial(b + c, 1/2), so
  the two-sided p is ``min(1, 2 * P(X <= min(b, c)))`` (``scipy.stats.binomtest``).
- **Paired bootstrap** (continuous scores, and the interval of every paired difference): the per-sample
  differences B - A resampled (so each pair stays together) exactly as ``scoring.bootstrap_mean`` resamples
  a score (``scipy.stats.bootstrap``, percentile method, 2,000 resamples, ``numpy.random.default_rng(seed)``):
  the 95 % interval of the mean difference is that interval, and the two-sided p is twice the share of
  resampled means on the far side of zero (at most 1).
- **Difference of two independent runs** (trends): MOVER (Zou & Donner 2008; Newcombe's method 10 for
  proportions), built from each run's own 95 % interval:
  ``low = d - sqrt((p2 - l2)^2 + (u1 - p1)^2)``, ``high = d + sqrt((u2 - p2)^2 + (p1 - l1)^2)`` for
  ``d = p2 - p1``. A drop is a regression when the whole interval is below zero.
- **Spearman** (``scipy.stats.spearmanr``) with the number of models behind it; fewer than 3, or a
  constant column, cannot be computed and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
SEED = 0  # as backend.evaluations.scoring
MIN_SPEARMAN = 3


def score_interval(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """``{score, n, ci_low, ci_high, method, reason}`` of per-sample values, as the evaluation cells are
    scored (``scoring.aggregate``: Wilson when every value is 0 or 1, a bootstrap of the mean otherwise)."""
    from backend.evaluations import scoring

    estimate = scoring.aggregate({i: [float(v)] for i, v in enumerate(values)}, seed=seed)
    return {"score": estimate.value, "n": estimate.n, "ci_low": estimate.low, "ci_high": estimate.high,
            "method": estimate.method, "reason": estimate.reason}


# --- ties and ranks -------------------------------------------------------------------------------


def overlaps_best(entries: dict[str, dict[str, Any]]) -> tuple[str | None, set[str]]:
    """The key of the best score and the keys tied with it (the best included): interval overlap."""
    scored = {k: e for k, e in entries.items() if e.get("score") is not None}
    if not scored:
        return None, set()
    best = min(scored, key=lambda k: (-scored[k]["score"], -(scored[k].get("n") or 0), k))  # then larger n, name
    low = scored[best].get("ci_low")
    if low is None:
        return best, {best}
    tied = {k for k, e in scored.items() if e.get("ci_high") is not None and e["ci_high"] >= low}
    return best, tied | {best}


def ranks(scores: dict[str, float]) -> dict[str, float]:
    """1 for the highest score; equal scores share the mean of their places."""
    order = sorted(scores, key=lambda k: -scores[k])
    out: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + 1 + j + 1) / 2
        i = j + 1
    return out


# --- paired tests ---------------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float | None:
    """Two-sided exact McNemar p from the ``b`` and ``c`` discordant pairs; None when there are none."""
    from scipy.stats import binomtest

    if b + c == 0:
        return None
    return float(min(1.0, binomtest(b, b + c, 0.5).pvalue))


def paired_bootstrap(diffs: np.ndarray, seed: int = SEED, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """(ci_low, ci_high, p) of the mean of per-sample differences, resampling samples with their pairs."""
    from scipy.stats import bootstrap

    if not np.any(diffs != diffs[0]):  # every resample has this mean (scipy would warn)
        mean = float(diffs[0])
        return mean, mean, 1.0 if mean == 0 else 0.0
    result = bootstrap((diffs,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                       rng=np.random.default_rng(seed))
    means = result.bootstrap_distribution
    p = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), p


@dataclass
class PairedResult:
    test: str  # "mcnemar" | "bootstrap"
    n: int
    score_a: float
    score_b: float
    diff: float  # b - a
    ci_low: float
    ci_high: float
    p: float | None
    counts: dict[str, int] | None  # both_right, only_a, only_b, both_wrong (right/wrong scores)
    reason: str | None = None  # why p could not be computed

    def as_dict(self) -> dict[str, Any]:
        return {"test": self.test, "n": self.n, "score_a": self.score_a, "score_b": self.score_b,
                "diff": self.diff, "ci_low": self.ci_low, "ci_high": self.ci_high, "p": self.p,
                "counts": self.counts, "reason": self.reason,
                "interval_method": "paired bootstrap of the mean difference, 2.5th-97.5th percentile, "
                                   f"{RESAMPLES} resamples, seed {SEED}"}


def paired_test(a: Sequence[float], b: Sequence[float], binary: bool, seed: int = SEED) -> PairedResult:
    """Model B against model A on the same samples (``a[i]`` and ``b[i]`` are one sample's scores)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diffs = xb - xa
    n = len(diffs)
    low, high, p_boot = paired_bootstrap(diffs, seed=seed)
    common = {"n": n, "score_a": float(xa.mean()), "score_b": float(xb.mean()), "diff": float(diffs.mean()),
              "ci_low": low, "ci_high": high}
    if not binary:
        reason = "every pair has the same score" if not np.any(diffs) else None
        return PairedResult(test="bootstrap", p=None if reason else p_boot, counts=None, reason=reason, **common)
    ra, rb = xa == 1.0, xb == 1.0
    counts = {"both_right": int(np.sum(ra & rb)), "only_a": int(np.sum(ra & ~rb)), "only_b": int(np.sum(~ra & rb)),
              "both_wrong": int(np.sum(~ra & ~rb))}
    p = mcnemar_exact(counts["only_a"], counts["only_b"])
    return PairedResult(test="mcnemar", p=p, counts=counts,
                        reason=None if p is not None else "no sample where they disagree", **common)


def sentence(name_a: str, name_b: str, result: dict[str, Any], alpha: float = 0.05) -> str:
    """The comparison in one plain sentence, in points (percentage points of the score x 100)."""
    d, low, high = 100 * result["diff"], 100 * result["ci_low"], 100 * result["ci_high"]
    p, n = result["p"], result["n"]
    p_text = format_p(p) if p is not None else f"p cannot be computed: {result['reason']}"
    if p is not None and p < alpha and d != 0:
        better, worse = (name_b, name_a) if d > 0 else (name_a, name_b)
        return (f"{better} is better than {worse} by {abs(d):.1f} points, 95 % CI {min(abs(low), abs(high)):.1f} "
                f"to {max(abs(low), abs(high)):.1f}, {p_text}, n = {n}")
    return (f"No significant difference between {name_a} and {name_b}: {name_b} minus {name_a} is {d:+.1f} points, "
            f"95 % CI {low:.1f} to {high:.1f}, {p_text}, n = {n}")


def format_p(p: float) -> str:
    """"p = 0.003", or "p < 0.001" below that."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


# --- trends ---------------------------------------------------------------------------------------


def mover_difference(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """``second - first`` with its MOVER 95 % interval from the two runs' own intervals."""
    needed = ("score", "ci_low", "ci_high")
    if any(first.get(k) is None for k in needed) or any(second.get(k) is None for k in needed):
        return {"diff": None, "ci_low": None, "ci_high": None, "reason": "a run has no score or no interval"}
    p1, l1, u1 = first["score"], first["ci_low"], first["ci_high"]
    p2, l2, u2 = second["score"], second["ci_low"], second["ci_high"]
    d = p2 - p1
    return {"diff": d, "ci_low": d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2),
            "ci_high": d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2), "reason": None,
            "method": "MOVER from each run's 95 % interval"}


# --- correlations ---------------------------------------------------------------------------------


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's rho and its p with the number of models behind it, or why it cannot be computed."""
    from scipy.stats import spearmanr

    n = len(x)
    if n < MIN_SPEARMAN:
        return {"rho": None, "p": None, "n": n, "reason": f"{n} model(s) with both: at least {MIN_SPEARMAN} needed"}
    if len(set(x)) == 1 or len(set(y)) == 1:
        return {"rho": None, "p": None, "n": n, "reason": "every model has the same value on one side"}
    result = spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    return {"rho": rho, "p": p if math.isfinite(p) else None, "n": n, "reason": None}


def pareto_max(points: list[tuple[str, float, float]], y_higher: bool = True) -> set[str]:
    """Keys of the points no other point beats on both higher x and (higher or, with ``y_higher=False``,
    lower) y: the frontier of the most accuracy (x) for the speed or the money (y)."""
    sign = 1 if y_higher else -1
    front = set()
    for key, x, y in points:
        dominated = any(ox >= x and sign * oy >= sign * y and (ox > x or sign * oy > sign * y)
                        for okey, ox, oy in points if okey != key)
        if not dominated:
            front.add(key)
    return front
