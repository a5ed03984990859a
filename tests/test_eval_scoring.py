"""Scores with n and a 95 % interval (issue 11, item 4): expected values worked out here by hand."""

from __future__ import annotations

import math
import statistics

import pytest

from backend.evaluations.scoring import aggregate, bootstrap_mean, wilson

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(30, 40), (24, 40), (1, 3), (0, 10), (10, 10), (500, 1000)])
def test_wilson_matches_the_closed_formula(k: int, n: int) -> None:
    estimate = wilson(k, n)
    low, high = wilson_by_hand(k, n)
    assert estimate.value == pytest.approx(k / n)
    assert estimate.low == pytest.approx(low, abs=1e-9)
    assert estimate.high == pytest.approx(high, abs=1e-9)
    assert estimate.n == n and estimate.successes == k and estimate.method == "wilson"


def test_wilson_30_of_40_in_figures() -> None:
    estimate = wilson(30, 40)
    assert (round(estimate.low, 4), round(estimate.high, 4)) == (0.5981, 0.8581)


def test_wilson_at_the_edges_stays_inside_0_1_and_is_not_degenerate() -> None:
    none_right, all_right = wilson(0, 10), wilson(10, 10)
    assert none_right.low == pytest.approx(0.0, abs=1e-12) and 0.2 < none_right.high < 0.35
    assert all_right.high == pytest.approx(1.0, abs=1e-12) and 0.65 < all_right.low < 0.8


def test_a_score_with_no_samples_is_none_with_a_reason_never_zero() -> None:
    for estimate in (wilson(0, 0), bootstrap_mean([]), aggregate({}), aggregate({"a": [None], "b": []})):
        assert estimate.value is None and estimate.low is None and estimate.high is None
        assert estimate.n == 0
        assert "n = 0" in estimate.reason


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3), (1, -1)])
def test_wilson_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson(k, n)


def test_wilson_refuses_a_fraction_for_a_count() -> None:
    with pytest.raises(TypeError):
        wilson(2.0, 3)  # type: ignore[arg-type]


VALUES = [0.12, 0.9, 0.55, 0.31, 0.77, 0.4, 0.68, 0.05, 0.93, 0.5, 0.61, 0.27, 0.84, 0.36, 0.7, 0.19, 0.58, 0.44,
          0.99, 0.23, 0.65, 0.8, 0.33, 0.47, 0.72, 0.15, 0.88, 0.52, 0.39, 0.6]


def test_bootstrap_mean_is_the_mean_with_an_interval_close_to_the_normal_one() -> None:
    estimate = bootstrap_mean(VALUES)
    mean = sum(VALUES) / len(VALUES)
    assert estimate.value == pytest.approx(mean)
    assert estimate.n == 30 and estimate.method == "bootstrap"
    # The percentile bootstrap of a mean approaches mean ± z * s / sqrt(n) (s with ddof 0) for n = 30.
    half = Z95 * statistics.pstdev(VALUES) / math.sqrt(len(VALUES))
    assert estimate.low < mean < estimate.high
    assert estimate.low == pytest.approx(mean - half, abs=0.15 * half)
    assert estimate.high == pytest.approx(mean + half, abs=0.15 * half)


def test_bootstrap_is_deterministic_for_a_seed_and_moves_with_it() -> None:
    first, again, other = bootstrap_mean(VALUES), bootstrap_mean(VALUES), bootstrap_mean(VALUES, seed=1)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)


def test_bootstrap_of_identical_scores_and_of_one_score() -> None:
    same = bootstrap_mean([0.5] * 8)
    assert (same.value, same.low, same.high, same.n) == (0.5, 0.5, 0.5, 8)
    one = bootstrap_mean([0.25])
    assert one.value == 0.25 and one.low is None and one.high is None and one.n == 1
    assert "at least two" in one.reason


def test_bootstrap_refuses_non_finite_scores() -> None:
    with pytest.raises(ValueError):
        bootstrap_mean([0.5, float("nan")])


def test_repeats_are_averaged_per_sample_and_n_counts_samples() -> None:
    scores = {"a": [1, 1, 1], "b": [0, 1, 1], "c": [0, 0, 0], "d": [1, 0, 0]}
    estimate = aggregate(scores)
    means = [1.0, 2 / 3, 0.0, 1 / 3]
    assert estimate.value == pytest.approx(sum(means) / 4)  # 0.5
    assert estimate.n == 4 and estimate.repeats == 3 and estimate.repeats_max == 3
    assert estimate.method == "bootstrap"
    direct = bootstrap_mean(means)
    assert (estimate.low, estimate.high) == pytest.approx((direct.low, direct.high))


def test_binary_scores_once_per_sample_get_the_wilson_interval() -> None:
    scores = {f"item-{i}": [1.0 if i < 30 else 0.0] for i in range(40)}
    estimate = aggregate(scores)
    low, high = wilson_by_hand(30, 40)
    assert estimate.method == "wilson" and estimate.value == 0.75 and estimate.successes == 30
    assert (estimate.low, estimate.high) == pytest.approx((low, high), abs=1e-9)
    assert estimate.n == 40 and estimate.repeats == 1


def test_unscored_repeats_are_left_out_and_counted() -> None:
    estimate = aggregate({"a": [1, None], "b": [0, 0], "c": [None, None]})
    # a: one scored repeat (1.0), b: two (0.0), c: none (left out)
    assert estimate.n == 2 and estimate.value == pytest.approx(0.5)
    assert estimate.unscored == 3
    assert (estimate.repeats, estimate.repeats_max) == (1, 2)
