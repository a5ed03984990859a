"""Trends, quality against speed and cost, correlations and the overview, on rows the test writes (evaluation
cells with known patterns; finished stress jobs with level and per-request rows). Expected regressions come
from the MOVER formula with Wilson's intervals, capacities and costs from the SLO and the prices by hand."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from backend.results.cost import Pricing
from tests.support import results as stress_rows
from tests.support.analytics import T0, add_run, pattern
from tests.support.evaluations import wilson


def mover_high(k1: int, k2: int, n: int) -> float:
    p1, p2 = k1 / n, k2 / n
    (l1, _u1), (_l2, u2) = wilson(k1, n), wilson(k2, n)
    return p2 - p1 + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def test_a_regression_is_flagged_and_a_dip_within_the_interval_is_not(app: Flask, client: Any) -> None:
    n = 200
    history = [("t1", 170), ("t2", 164), ("t3", 120)]  # a dip of 3 points, then a drop of 22
    for day, (job, right) in enumerate(history):
        add_run(app, job, [{"model": "m-a", "dataset": "arith", "right": pattern(n, right, day)}],
                finished=T0 + timedelta(days=day))
    assert mover_high(170, 164, n) > 0 > mover_high(164, 120, n)  # by hand: only the second is a regression
    body = client.get("/api/v1/analytics/trends").json
    (series,) = body["series"]
    assert [p["job_id"] for p in series["points"]] == ["t1", "t2", "t3"]
    dip, drop = series["steps"]
    assert dip["regression"] is False and dip["dip"] is True
    assert dip["ci_high"] == pytest.approx(mover_high(170, 164, n))
    assert drop["regression"] is True and drop["ci_high"] == pytest.approx(mover_high(164, 120, n))
    (flagged,) = body["regressions"]
    assert (flagged["from"]["job_id"], flagged["to"]["job_id"]) == ("t2", "t3")
    page = client.get("/analytics/trends").data.decode()
    assert page.count('class="regression"') == 2  # the regressions table and the run's row
    assert 'href="/evaluations/t2"' in page and 'href="/evaluations/t3"' in page and 'id="figures-data"' in page


def test_a_new_dataset_version_starts_a_new_series(app: Flask, client: Any) -> None:
    add_run(app, "old", [{"model": "m-a", "dataset": "arith", "hash": "1" * 64, "right": pattern(100, 95)}])
    add_run(app, "new", [{"model": "m-a", "dataset": "arith", "hash": "2" * 64, "right": pattern(100, 40)}],
            finished=T0 + timedelta(days=1))
    body = client.get("/api/v1/analytics/trends").json
    assert sorted(s["version"] for s in body["series"]) == ["11111111", "22222222"]
    assert body["regressions"] == []  # 95 -> 40 on another version is not a step of one series


# Scores on arith (of 200) and on facts (of 100); m-d has no stress test.
SCORES = {"m-a": (170, 60), "m-b": (160, 70), "m-c": (120, 50), "m-e": (110, 40), "m-d": (100, 30)}
# Stress levels: (concurrency, TTFT of every request in ms, output tokens/s); instance type.
STRESS = {"m-a": ("g5.2xlarge", [(1, 100, 200.0), (4, 300, 600.0), (8, 900, 900.0)]),
          "m-b": ("g5.xlarge", [(1, 100, 300.0), (4, 200, 1000.0)]),
          "m-c": ("g5.12xlarge", [(2, 100, 1200.0)]),
          "m-e": ("g5.xlarge", [(1, 100, 500.0), (2, 800, 700.0)])}
SLO = {"ttft_ms": "500", "tpot_ms": "", "error_rate": "0.05"}


@pytest.fixture
def quality_rows(app: Flask) -> None:
    add_run(app, "evals", [{"model": m, "dataset": "arith", "right": pattern(200, a, i)}
                           for i, (m, (a, _f)) in enumerate(SCORES.items())]
            + [{"model": m, "dataset": "facts", "right": pattern(100, f, i)}
               for i, (m, (_a, f)) in enumerate(SCORES.items())])
    for model, (instance, levels) in STRESS.items():
        stress_rows.add_job(app, f"st-{model}", [
            stress_rows.level(c, [stress_rows.ok(ttft) for _ in range(20)], out_tps=tps) for c, ttft, tps in levels],
            model=model, target={"kind": "catalog", "key": model, "provider": "openai", "catalog_provider": "emd",
                                 "name": model, "instance_type": instance, "instances": 1})


def _expected_speed(app: Flask) -> dict[str, tuple[float, float]]:
    """Output tokens/s and USD per M output tokens at the highest concurrency whose TTFT is within 500 ms."""
    prices = Pricing.load(app.config["PEP"]["results"]["pricing_file"])
    out = {}
    for model, (instance, levels) in STRESS.items():
        _c, _ttft, tps = max((lv for lv in levels if lv[1] <= 500), key=lambda lv: lv[0])
        out[model] = (tps, prices.instances[instance] / (3600 * tps) * 1e6)
    return out


def test_quality_against_speed_and_cost_with_the_pareto_frontiers(app: Flask, client: Any, quality_rows: None) -> None:
    body = client.get("/api/v1/analytics/quality-cost", query_string={**SLO, "dataset": "arith"}).json
    speed = _expected_speed(app)
    rows = {r["model"]: r for r in body["rows"]}
    assert set(rows) == set(SCORES)
    for model, row in rows.items():
        assert row["score"] == pytest.approx(SCORES[model][0] / 200) and row["n"] == 200
        if model in speed:
            assert row["output_tokens_per_s"] == pytest.approx(speed[model][0])
            assert row["usd_per_m_output_tokens"] == pytest.approx(speed[model][1])
            assert row["deployment"]["source"] == "stress" and row["deployment"]["id"] == f"st-{model}"
    assert rows["m-d"]["output_tokens_per_s"] is None and rows["m-d"]["usd_per_m_output_tokens"] is None
    assert rows["m-d"]["deployment"]["reason"] == "no finished stress test or capacity search"
    # By hand: on speed a (best score), b and c (fastest) are not beaten on both, e is (by b);
    # on cost b beats c and e, a keeps the best score.
    assert {m for m, r in rows.items() if r["pareto_speed"]} == {"m-a", "m-b", "m-c"}
    assert {m for m, r in rows.items() if r["pareto_cost"]} == {"m-a", "m-b"}
    per_dollar = {m: 100 * SCORES[m][0] / 200 / speed[m][1] for m in speed}
    assert body["best_value"] == max(per_dollar, key=per_dollar.get) == "m-b"
    page = client.get("/analytics/quality-cost", query_string={**SLO, "dataset": "arith"}).data.decode()
    assert 'id="figures-data"' in page and "Pareto frontier" in page and 'id="qc-best-value">m-b<' in page
    assert "unknown: no finished stress test or capacity search" in page


def test_a_tighter_slo_lowers_the_capacity_and_no_capacity_says_why(client: Any, quality_rows: None) -> None:
    rows = {r["model"]: r for r in client.get("/api/v1/analytics/quality-cost", query_string={
        "ttft_ms": "50", "tpot_ms": "", "error_rate": "0.05"}).json["rows"]}
    assert rows["m-a"]["output_tokens_per_s"] is None
    assert rows["m-a"]["deployment"]["reason"].startswith("no capacity within the SLO")
    bad = client.get("/api/v1/analytics/quality-cost?ttft_ms=abc")
    assert bad.status_code == 400 and bad.json["error"]["details"]["field"] == "ttft_ms"
    assert client.get("/api/v1/analytics/quality-cost?column=nope").json["error"]["details"]["field"] == "column"


def ranks(values: list[float]) -> list[int]:
    return [sorted(values).index(v) + 1 for v in values]


def test_correlations_between_datasets_and_with_speed(client: Any, quality_rows: None) -> None:
    body = client.get("/api/v1/analytics/correlations", query_string=SLO).json
    (pair,) = body["pairs"]
    models = sorted(SCORES)
    x = [SCORES[m][0] for m in models]
    y = [SCORES[m][1] for m in models]
    d2 = sum((a - b) ** 2 for a, b in zip(ranks(x), ranks(y), strict=True))
    assert pair["n"] == 5 and pair["rho"] == pytest.approx(1 - 6 * d2 / (5 * (25 - 1)))
    speeds = {"m-a": 600.0, "m-b": 1000.0, "m-c": 1200.0, "m-e": 500.0}
    arith = next(s for s in body["speed"] if s["column"].startswith("arith"))
    xs = [SCORES[m][0] for m in sorted(speeds)]
    ys = [speeds[m] for m in sorted(speeds)]
    d2 = sum((a - b) ** 2 for a, b in zip(ranks(xs), ranks(ys), strict=True))
    assert arith["n"] == 4 and arith["rho"] == pytest.approx(1 - 6 * d2 / (4 * (16 - 1)))
    assert arith["models"] == sorted(speeds)  # m-d has no speed: left out, and n says so


def test_overview_counts_and_leaders(client: Any, quality_rows: None) -> None:
    body = client.get("/api/v1/stats/overview").json
    assert body["models"]["evaluated"] == 5 and body["models"]["stress_tested"] == 4
    assert body["datasets"]["evaluated"] == 2 and body["evaluation_cells_completed"] == 10
    assert body["jobs"]["by_kind"]["stress"]["completed"] == 4
    assert body["jobs"]["by_kind"]["evaluation"]["completed"] == 1
    assert body["success_rate"]["overall"] == {"value": 1.0, "completed": 5, "finished": 5, "reason": None}
    assert body["success_rate"]["capacity_search"]["value"] is None
    leaders = {leader["column"].split("@")[0]: leader for leader in body["leaders"]}
    assert leaders["arith"]["best"] == "m-a" and leaders["facts"]["best"] == "m-b"
    assert leaders["arith"]["score"]["n"] == 200
    assert {r["id"] for r in body["recent"]} >= {"evals", "st-m-a"}


def test_a_capacity_search_gives_the_speed_and_cost_when_it_is_the_latest(app: Flask, client: Any,
                                                                          quality_rows: None) -> None:
    from datetime import UTC, datetime

    from backend.db import db
    from backend.results.capacity_search import CapacitySearch

    good = {"ttft_ms": 100.0, "tpot_ms": 10.0, "latency_s": 1.0, "error_rate": 0.0}
    bad = {**good, "ttft_ms": 900.0}
    with app.app_context():
        db.session.add(CapacitySearch(
            id="cs-m-d", status="completed", model_key="m-d", target={"key": "m-d"}, params={},
            slo={"percentile": 95, "ttft_ms": 500, "tpot_ms": None, "latency_s": None, "error_rate": 0.05},
            start=1, precision="1", repeats=1, max_concurrency=16, requests=10,
            created_at=datetime(2026, 12, 1, tzinfo=UTC), finished_at=datetime(2026, 12, 1, 1, tzinfo=UTC),
            probes=[{"concurrency": 4, "jobs": ["p4"], "repeats": [good],
                     "levels": [{"req_per_s": 5.0, "output_tokens_per_s": 800.0,
                                 "cost": {"usd_per_m_output_tokens": 0.35, "reason": "1 x g5.xlarge"}}]},
                    {"concurrency": 5, "jobs": ["p5"], "repeats": [bad],
                     "levels": [{"req_per_s": 5.5, "output_tokens_per_s": 850.0,
                                 "cost": {"usd_per_m_output_tokens": 0.33, "reason": "1 x g5.xlarge"}}]}]))
        db.session.commit()
    rows = {r["model"]: r for r in client.get("/api/v1/analytics/quality-cost",
                                              query_string={**SLO, "dataset": "arith"}).json["rows"]}
    found = rows["m-d"]["deployment"]
    assert (found["source"], found["id"], found["capacity"]) == ("capacity_search", "cs-m-d", 4)
    assert rows["m-d"]["output_tokens_per_s"] == 800.0 and rows["m-d"]["usd_per_m_output_tokens"] == 0.35
    assert rows["m-a"]["deployment"]["source"] == "stress"  # its stress job is its only measurement
    page = client.get("/analytics/quality-cost", query_string={**SLO, "dataset": "arith"}).data.decode()
    assert 'href="/results/capacity/cs-m-d"' in page and 'href="/results/st-m-a"' in page


def test_without_any_speed_measured_there_is_no_empty_chart_and_the_cost_says_why(app: Flask, client: Any) -> None:
    add_run(app, "only-scores", [{"model": "m-a", "dataset": "arith", "right": pattern(40, 30, 0)}])
    body = client.get("/api/v1/analytics/quality-cost").json
    (row,) = body["rows"]
    assert row["output_tokens_per_s"] is None and row["usd_per_m_output_tokens"] is None
    assert row["deployment"]["cost_reason"] == "no finished stress test or capacity search"
    page = client.get("/analytics/quality-cost").data.decode()
    assert 'id="figures-data"' not in page  # no axes with nothing on them
    assert page.count("unknown: no finished stress test or capacity search") == 2  # speed and cost columns
