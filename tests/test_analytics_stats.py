"""The analytics statistics (backend/analytics/stats.py) against values computed here by hand: McNemar's
exact p from the binomial with math.comb, a published case, the paired bootstrap against the normal-theory
interval and scoring's own bootstrap, Spearman from the rank-difference formula, ties, ranks, MOVER and
the Pareto frontier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.analytics import stats
from backend.evaluations import scoring
from tests.support.evaluations import wilson


def binomial_two_sided(b: int, c: int) -> float:
    """Exact McNemar by hand: twice the lower tail of Binomial(b + c, 1/2) at min(b, c), at most 1."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize(("b", "c"), [(3, 12), (12, 3), (10, 10), (0, 5), (40, 22), (1, 0)])
def test_exact_mcnemar_is_the_binomial_on_the_discordant_pairs(b: int, c: int) -> None:
    assert stats.mcnemar_exact(b, c) == pytest.approx(binomial_two_sided(b, c), rel=1e-12)


def test_exact_mcnemar_published_case() -> None:
    # Fagerland, Lydersen & Laake (2013), BMC Medical Research Methodology 13:91, Table 1: airway
    # hyper-responsiveness before and after stem cell transplantation, discordant pairs 1 and 7;
    # the exact conditional McNemar p is 0.070 (= 2 x (1 + 8) / 2^8).
    assert stats.mcnemar_exact(1, 7) == pytest.approx(0.0703, abs=5e-5)
    assert stats.mcnemar_exact(0, 0) is None  # no discordant pair: nothing to test, never p = 1 or 0


def test_paired_test_on_right_wrong_scores_counts_the_pairs_and_uses_mcnemar() -> None:
    # 60 samples: both right on 30, only A on 4, only B on 14, both wrong on 12.
    a = [1] * 30 + [1] * 4 + [0] * 14 + [0] * 12
    b = [1] * 30 + [0] * 4 + [1] * 14 + [0] * 12
    result = stats.paired_test(a, b, binary=True).as_dict()
    assert result["counts"] == {"both_right": 30, "only_a": 4, "only_b": 14, "both_wrong": 12}
    assert result["test"] == "mcnemar" and result["n"] == 60
    assert result["diff"] == pytest.approx((14 - 4) / 60)
    assert result["p"] == pytest.approx(binomial_two_sided(4, 14))
    assert result["ci_low"] < result["diff"] < result["ci_high"]
    sentence = stats.sentence("A", "B", result)
    assert sentence.startswith("B is better than A by 16.7 points, 95 % CI ")
    assert f"p = {binomial_two_sided(4, 14):.3f}" in sentence and sentence.endswith("n = 60")


def test_paired_bootstrap_matches_scorings_bootstrap_and_the_normal_interval() -> None:
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 1, 400)
    b = np.clip(a + rng.normal(0.05, 0.2, 400), 0, 1)
    diffs = b - a
    low, high, p = stats.paired_bootstrap(diffs)
    # The same resampling as the evaluation scores' bootstrap, applied to the per-sample differences.
    same = scoring.bootstrap_mean(diffs.tolist(), seed=stats.SEED)
    assert (low, high) == pytest.approx((same.low, same.high), abs=1e-12)
    # And close to the normal-theory interval mean +- 1.96 sd / sqrt(n) computed here.
    mean, sd = diffs.mean(), diffs.std(ddof=1)
    half = 1.959964 * sd / math.sqrt(len(diffs))
    assert low == pytest.approx(mean - half, abs=0.25 * half)
    assert high == pytest.approx(mean + half, abs=0.25 * half)
    # Seeded: the same data give the same figures; a clear shift is significant.
    assert stats.paired_bootstrap(diffs) == (low, high, p)
    assert p < 0.01


def test_paired_bootstrap_of_a_symmetric_difference_is_not_significant() -> None:
    diffs = np.array([0.2, -0.2] * 50)
    low, high, p = stats.paired_bootstrap(diffs)
    assert low < 0 < high and p > 0.5
    result = stats.paired_test([0.5] * 100, (0.5 + diffs).tolist(), binary=False).as_dict()
    assert result["test"] == "bootstrap" and result["counts"] is None
    assert stats.sentence("A", "B", result).startswith("No significant difference between A and B")
    same = stats.paired_test([0.3] * 10, [0.3] * 10, binary=False).as_dict()
    assert same["p"] is None and same["reason"] == "every pair has the same score"


def test_spearman_by_hand_for_four_models() -> None:
    x = [0.91, 0.72, 0.80, 0.55]  # ranks 4 2 3 1
    y = [0.40, 0.65, 0.30, 0.20]  # ranks 3 4 2 1
    d2 = (4 - 3) ** 2 + (2 - 4) ** 2 + (3 - 2) ** 2 + (1 - 1) ** 2
    rho = 1 - 6 * d2 / (4 * (4**2 - 1))
    result = stats.spearman(x, y)
    assert result["rho"] == pytest.approx(rho) and result["n"] == 4 and result["reason"] is None
    short = stats.spearman([0.1, 0.2], [0.3, 0.4])
    assert short["rho"] is None and short["n"] == 2 and "at least 3" in short["reason"]
    flat = stats.spearman([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    assert flat["rho"] is None and "same value" in flat["reason"]


def _entry(k: int, n: int) -> dict[str, float]:
    low, high = wilson(k, n)
    return {"score": k / n, "n": n, "ci_low": low, "ci_high": high}


def test_ties_are_intervals_that_overlap_the_best() -> None:
    entries = {"a": _entry(80, 100), "b": _entry(72, 100), "c": _entry(60, 100), "d": _entry(79, 100)}
    best, tied = stats.overlaps_best(entries)
    best_low = wilson(80, 100)[0]
    expected = {k for k, e in entries.items() if e["ci_high"] >= best_low}
    assert best == "a" and tied == expected
    assert "c" not in tied and {"b", "d"} <= tied  # 0.60's upper end is below 0.80's lower end


def test_ranks_share_places_on_equal_scores() -> None:
    assert stats.ranks({"a": 0.9, "b": 0.7, "c": 0.7, "d": 0.1}) == {"a": 1, "b": 2.5, "c": 2.5, "d": 4}


def test_mover_difference_of_two_runs() -> None:
    first, second = _entry(85, 100), _entry(60, 100)
    p1, (l1, u1), p2, (l2, u2) = 0.85, wilson(85, 100), 0.60, wilson(60, 100)
    result = stats.mover_difference(first, second)
    assert result["diff"] == pytest.approx(p2 - p1)
    assert result["ci_low"] == pytest.approx(p2 - p1 - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2))
    assert result["ci_high"] == pytest.approx(p2 - p1 + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2))
    assert result["ci_high"] < 0
    assert stats.mover_difference(first, {"score": None})["diff"] is None


def test_pareto_frontier_by_hand() -> None:
    # (score, tokens/s): b beats d on both; c is fastest; a is most accurate.
    points = [("a", 0.9, 100.0), ("b", 0.8, 300.0), ("c", 0.5, 900.0), ("d", 0.7, 250.0)]
    assert stats.pareto_max(points, y_higher=True) == {"a", "b", "c"}
    # (score, cost): lower cost is better: d (0.7 at $1) beats b (0.6 at $2).
    costs = [("a", 0.9, 10.0), ("b", 0.6, 2.0), ("d", 0.7, 1.0)]
    assert stats.pareto_max(costs, y_higher=False) == {"a", "d"}
