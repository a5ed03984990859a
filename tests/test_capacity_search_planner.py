"""The capacity search's planner, pure: doubling, bisection, the precision, the maximum, judging a probe on
the mean of its repeats, and stopping on what cannot be judged. Targets here are functions of the
concurrency whose true limit is computed by hand in each test."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from backend.results.capacity_search import (
    Precision,
    Probe,
    SearchState,
    judge_probe,
    littles_law,
    next_probe,
    outcome,
    probe_dict,
    spread,
)
from backend.results.metrics import Slo

TPOT_SLO = Slo(tpot_ms=30.0, percentile=95)


def figures(tpot_ms: float | None, error_rate: float | None = 0.0, ttft_ms: float | None = 100.0,
            latency_s: float | None = 1.0) -> dict[str, float | None]:
    return {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "latency_s": latency_s, "error_rate": error_rate}


def run(state: SearchState, measure: Callable[[int, int], dict[str, float | None]],
        limit: int = 50) -> tuple[SearchState, list[int]]:
    """Drive the planner to the end against ``measure(concurrency, repeat)``; the probes in order."""
    order = []
    for _ in range(limit):
        concurrency = next_probe(state)
        if concurrency is None:
            return state, order
        assert concurrency not in order, f"probed {concurrency} twice"
        assert 1 <= concurrency <= state.max_concurrency
        order.append(concurrency)
        probe = Probe(concurrency, tuple(measure(concurrency, r) for r in range(state.repeats)))
        state = SearchState(**{**state.__dict__, "probes": (*state.probes, probe)})
    raise AssertionError(f"no end after {limit} probes: {order}")


def linear(base: float, per_seq: float) -> Callable[[int, int], dict[str, float | None]]:
    return lambda c, _r: figures(base + per_seq * c)


def test_doubling_then_bisection_in_the_order_worked_out_by_hand() -> None:
    # TPOT = 10 + 2c; p95 TPOT <= 30 holds up to c = 10 exactly: 1 2 4 8 good, 16 bad, then 12 bad, 10 good, 11 bad.
    state, order = run(SearchState(slo=TPOT_SLO), linear(10, 2))
    assert order == [1, 2, 4, 8, 16, 12, 10, 11]
    result = outcome(state)
    assert result.finished and (result.last_good, result.first_bad, result.capacity) == (10, 11, 10)
    assert "capacity 10" in result.reason and "p95 TPOT" in result.reason and result.judged


@pytest.mark.parametrize(("base", "per_seq", "limit_ms", "start", "maximum"), [
    (10, 2, 31, 1, 512), (8, 0.25, 50, 1, 512), (10, 3, 100, 5, 512), (5, 1, 300, 1, 1000),
    (20, 7, 90, 3, 64), (1, 0.1, 13.05, 1, 512), (10, 2, 21, 7, 512),
])
def test_lands_on_the_computed_limit(base: float, per_seq: float, limit_ms: float, start: int,
                                     maximum: int) -> None:
    expected = min(math.floor((limit_ms - base) / per_seq), maximum)
    state, order = run(SearchState(slo=Slo(tpot_ms=limit_ms), start=start, max_concurrency=maximum),
                       linear(base, per_seq))
    assert outcome(state).capacity == expected
    # doubling to the first bad level, then one halving of the bracket per probe
    assert len(order) <= 2 * math.ceil(math.log2(max(expected, 2))) + 3


def test_relative_precision_leaves_a_bracket_within_its_fraction() -> None:
    # TPOT = 10 + 0.1c <= 30 up to c = 200; 10 % of the last good: the bracket may be up to 20 wide
    precision = Precision.parse("10%")
    state, order = run(SearchState(slo=TPOT_SLO, precision=precision), linear(10, 0.1))
    result = outcome(state)
    assert result.last_good is not None and result.first_bad is not None
    assert result.last_good <= 200 < result.first_bad
    assert result.first_bad - result.last_good <= math.ceil(0.1 * result.last_good)
    exact, exact_order = run(SearchState(slo=TPOT_SLO), linear(10, 0.1))
    assert outcome(exact).capacity == 200 and len(order) < len(exact_order)


def test_stops_at_the_maximum_and_says_the_capacity_may_be_higher() -> None:
    state, order = run(SearchState(slo=TPOT_SLO, max_concurrency=100), linear(10, 0.01))
    assert order == [1, 2, 4, 8, 16, 32, 64, 100]
    result = outcome(state)
    assert result.at_max and result.capacity == 100 and result.first_bad is None
    assert "maximum" in result.reason and "may be higher" in result.reason


def test_a_first_probe_that_breaks_leaves_no_capacity() -> None:
    state, order = run(SearchState(slo=TPOT_SLO), linear(40, 1))
    assert order == [1]
    result = outcome(state)
    assert result.finished and result.capacity is None and result.first_bad == 1
    assert "no tested concurrency meets it" in result.reason


def test_a_high_start_that_breaks_bisects_down_from_it() -> None:
    # TPOT = 10 + 6c <= 30 up to c = 3: start 8 bad, 4 bad, 2 good, 3 good
    state, order = run(SearchState(slo=TPOT_SLO, start=8), linear(10, 6))
    assert order == [8, 4, 2, 3]
    assert (outcome(state).last_good, outcome(state).first_bad) == (3, 4)


def test_a_probe_is_judged_on_the_mean_of_its_repeats() -> None:
    one_above = Probe(4, (figures(28.0), figures(31.0)))  # mean 29.5: meets, though one repeat is over
    mean_above = Probe(4, (figures(28.0), figures(33.0)))  # mean 30.5: breaks, though one repeat is under
    assert judge_probe(one_above, TPOT_SLO).meets is True
    verdict = judge_probe(mean_above, TPOT_SLO)
    assert verdict.meets is False and verdict.broken == ("tpot_ms",)
    shown = probe_dict(mean_above, TPOT_SLO)
    assert shown["mean"]["tpot_ms"] == pytest.approx(30.5)
    assert shown["spread"]["tpot_ms"] == {"mean": pytest.approx(30.5), "min": 28.0, "max": 33.0, "ci95": None}


def test_three_repeats_get_a_t_based_interval() -> None:
    values = [20.0, 22.0, 27.0]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    t_975_2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (tables)
    found = spread(values)
    assert (found.low, found.high) == (20.0, 27.0)
    assert found.ci95 == pytest.approx(t_975_2 * sd / math.sqrt(3))


def test_an_unknown_figure_stops_the_search_with_the_reason() -> None:
    # every request failed at 4: no TPOT, and no error-rate limit to break
    def measure(c: int, _r: int) -> dict[str, float | None]:
        return figures(None, error_rate=1.0) if c >= 4 else figures(10 + c)

    state, order = run(SearchState(slo=TPOT_SLO), measure)
    assert order == [1, 2, 4]
    result = outcome(state)
    assert result.finished and not result.judged and result.last_good == 2 and result.first_bad is None
    assert "concurrency 4 could not be judged" in result.reason and "p95 TPOT" in result.reason


def test_one_repeat_without_a_figure_makes_the_probe_unjudged_not_good() -> None:
    probe = Probe(2, (figures(10.0), figures(None)))
    assert judge_probe(probe, TPOT_SLO).meets is None
    assert judge_probe(probe, TPOT_SLO).unknown == ("tpot_ms",)


def test_a_broken_error_rate_is_a_verdict_even_without_latency_figures() -> None:
    slo = Slo(tpot_ms=30.0, error_rate=0.01)

    def measure(c: int, _r: int) -> dict[str, float | None]:
        return figures(None, error_rate=1.0) if c > 6 else figures(10.0, error_rate=0.0)

    state, _ = run(SearchState(slo=slo), measure)
    result = outcome(state)
    assert (result.last_good, result.first_bad) == (6, 7) and result.judged
    assert "error rate over the limit" in result.reason


def test_a_good_level_above_the_first_bad_one_is_named() -> None:
    slo = TPOT_SLO

    def measure(c: int, _r: int) -> dict[str, float | None]:
        return figures(50.0 if c == 4 else 10.0)  # 4 is a bad moment; 8 meets again

    state = SearchState(slo=slo, probes=(Probe(1, (figures(10),)), Probe(2, (figures(10),)),
                                         Probe(4, (figures(50),)), Probe(8, (figures(10),))))
    state, order = run(state, measure)
    result = outcome(state)
    assert order == [3] and (result.last_good, result.first_bad) == (3, 4)
    assert "concurrency 8 met the SLO above the first bad level" in result.reason


@pytest.mark.parametrize("raw", [0, -1, True, "0%", "100%", "abc%", 1.5])
def test_bad_precisions_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        Precision.parse(raw)  # type: ignore[arg-type]


def test_precision_steps() -> None:
    assert Precision.parse(4).step(100) == 4
    assert Precision.parse("10%").step(95) == 10 and Precision.parse("10%").step(3) == 1
    assert Precision.parse("10%").as_json() == "10%" and Precision.parse(2).as_json() == 2


# --- the start from Little's law -----------------------------------------------------------------


def saturated(req_per_s: float | None = 16.0, output: float | None = 20.0, latency_s: float = 2.0,
              ttft_ms: float = 400.0, succeeded: int = 32) -> dict:
    """A level as ``backend.results.service.job_results`` gives it."""
    return {"req_per_s": req_per_s, "succeeded": succeeded, "avg_output_tokens": output,
            "metrics": {"latency_s": {"avg": latency_s}, "ttft_ms": {"avg": ttft_ms}}}


def test_littles_law_from_a_latency_limit() -> None:
    found = littles_law(saturated(), Slo(latency_s=0.75, tpot_ms=31), 512)
    assert found.value == pytest.approx(16.0 * 0.75) and found.start == 12  # the latency limit wins
    assert found.allowed_s == pytest.approx(0.75) and "starting at 12" in found.reason


def test_littles_law_from_ttft_and_tpot_limits() -> None:
    # W = TTFT limit + TPOT limit for each output token after the first: 0.2 + 0.031 x 19 = 0.789 s
    found = littles_law(saturated(), Slo(ttft_ms=200, tpot_ms=31), 512)
    assert found.allowed_s == pytest.approx(0.2 + 0.031 * 19)
    assert found.start == math.floor(16.0 * (0.2 + 0.031 * 19))
    # without a TTFT limit the first token counts as one more TPOT
    assert littles_law(saturated(), Slo(tpot_ms=31), 512).allowed_s == pytest.approx(0.031 * 20)


def test_littles_law_from_a_ttft_limit_alone_adds_the_probes_decode_time() -> None:
    found = littles_law(saturated(latency_s=2.0, ttft_ms=400.0), Slo(ttft_ms=300), 512)
    assert found.allowed_s == pytest.approx(0.3 + (2.0 - 0.4))


def test_littles_law_is_bounded_by_one_and_the_maximum() -> None:
    assert littles_law(saturated(req_per_s=0.5), Slo(latency_s=1.0), 512).start == 1  # 0.5 rounds down to 0
    assert littles_law(saturated(req_per_s=1000.0), Slo(latency_s=1.0), 64).start == 64


@pytest.mark.parametrize(("level", "slo", "words"), [
    (saturated(succeeded=0, req_per_s=None), Slo(latency_s=1.0), "no successful request"),
    (saturated(), Slo(error_rate=0.01), "bounds no time"),
    (saturated(output=None), Slo(tpot_ms=30), "bounds no time"),
])
def test_no_estimate_starts_at_one_and_says_why(level: dict, slo: Slo, words: str) -> None:
    found = littles_law(level, slo, 512)
    assert found.start == 1 and found.value is None
    assert words in found.reason and found.reason.endswith("starting at 1")
