"""Results figures from fixed rows, checked against values worked out by hand in each test."""

from __future__ import annotations

import base64
import json
import pickle
import sqlite3
from pathlib import Path

import pytest

from backend.results.ingest import read_level_file
from backend.results.metrics import Slo, capacity, distribution, goodput, judge, level_from_requests, percentile

# --- percentiles -------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0]  # 1..10 shuffled
    # Nearest rank: the value at rank ceil(p/100 * n) of the sorted list.
    assert percentile(values, 50) == 5.0  # rank 5
    assert percentile(values, 90) == 9.0  # rank 9
    assert percentile(values, 95) == 10.0  # rank ceil(9.5) = 10
    assert percentile(values, 99) == 10.0
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None
    assert percentile([float("nan"), 2.0, float("inf")], 50) == 2.0  # not finite: left out


def test_distribution_of_nothing_says_so() -> None:
    assert distribution([]) == {"avg": None, "p50": None, "p90": None, "p95": None, "p99": None}
    assert distribution([None, 2.0, 4.0])["avg"] == 3.0


# --- SLO, goodput, capacity --------------------------------------------------------------------


def request(ttft: float | None, tpot: float | None = 10.0, latency: float | None = 1.0, success: bool = True) -> dict:
    return {"ttft_ms": ttft, "tpot_ms": tpot, "latency_s": latency, "success": success}


SLO = Slo(ttft_ms=500, tpot_ms=50, error_rate=0.1, percentile=95)


def test_goodput_counts_requests_meeting_every_limit_over_all_requests() -> None:
    rows = [request(100), request(499.9), request(500), request(501), request(100, tpot=51),
            request(None), request(100, success=False), request(100, latency=99.0)]
    # good: 100, 499.9, 500 (the limit itself holds), and the last (latency has no limit) -> 4 of 8
    result = goodput(rows, SLO, duration_s=2.0)
    assert (result.good, result.total) == (4, 8)
    assert result.fraction == 0.5 and result.per_s == 2.0
    assert goodput([], SLO, 2.0).fraction is None
    assert goodput(rows, SLO, None).per_s is None  # no duration: no rate, not 0


def test_a_level_is_judged_at_the_slo_percentile() -> None:
    level = {"concurrency": 4, "position": 0, "complete": True}
    # 20 requests: 19 at 100 ms and one at 900 ms. p95 is rank 19 -> 100 ms: holds; p99 is rank 20: breaks.
    rows = [request(100.0)] * 19 + [request(900.0)]
    assert judge(level, rows, SLO).meets is True
    strict = Slo(ttft_ms=500, percentile=99)
    verdict = judge(level, rows, strict)
    assert verdict.meets is False and verdict.broken == ["ttft_ms"]


def test_error_rate_counts_failed_requests() -> None:
    level = {"concurrency": 2, "position": 0, "complete": True}
    rows = [request(100.0)] * 9 + [request(100.0, success=False)]
    assert judge(level, rows, SLO).meets is True  # 1/10 = 10 % <= 10 %
    rows.append(request(100.0, success=False))
    assert judge(level, rows, SLO).broken == ["error_rate"]  # 2/11 > 10 %


def test_partial_and_all_failed_levels_cannot_be_judged() -> None:
    partial = judge({"concurrency": 8, "position": 1, "complete": False}, [request(1.0)], SLO)
    assert partial.meets is None and "cut short" in partial.reason
    failed = judge({"concurrency": 8, "position": 1, "complete": True}, [request(None, success=False)] * 2,
                   Slo(ttft_ms=500))
    assert failed.meets is None and failed.unknown == ["ttft_ms"]


def levels_and_verdicts(meets: list[bool | None]) -> tuple[list[dict], list]:
    from backend.results.metrics import Verdict

    levels = [{"concurrency": 2 ** i, "position": i} for i in range(len(meets))]
    return levels, [Verdict(meets=m) for m in meets]


@pytest.mark.parametrize(("meets", "expected", "words"), [
    ([True, True, False, False], 2, "concurrency 2 is the highest"),
    ([True, True, True], 4, "may be higher"),
    ([False, False], None, "no tested concurrency"),
    ([None, None], None, "no complete level"),
    ([True, None], 1, "may be higher"),  # the partial top level does not count either way
    ([False, True, False], 2, "concurrency 2"),  # judged level by level
])
def test_capacity(meets: list[bool | None], expected: int | None, words: str) -> None:
    result = capacity(*levels_and_verdicts(meets))
    assert result.concurrency == expected and words in result.reason


# --- a level from its requests -----------------------------------------------------------------


def test_level_from_requests_by_hand() -> None:
    rows = [
        {"success": True, "start_s": 0.0, "end_s": 1.0, "latency_s": 1.0, "ttft_ms": 100.0, "tpot_ms": 20.0,
         "input_tokens": 10, "output_tokens": 46},
        {"success": True, "start_s": 0.5, "end_s": 2.0, "latency_s": 1.5, "ttft_ms": 300.0, "tpot_ms": 30.0,
         "input_tokens": 10, "output_tokens": 41},
        {"success": False, "start_s": 1.0, "end_s": 2.5, "latency_s": None, "ttft_ms": None, "tpot_ms": None,
         "input_tokens": None, "output_tokens": None},
    ]
    level = level_from_requests(rows, gaps_ms=[10.0, 20.0, 30.0, 40.0])
    assert (level["requests"], level["succeeded"], level["failed"]) == (3, 2, 1)
    assert level["duration_s"] == 2.5  # first start 0.0 to last end 2.5
    assert level["req_per_s"] == 2 / 2.5
    assert level["output_tokens_per_s"] == (46 + 41) / 2.5
    assert level["total_tokens_per_s"] == (46 + 41 + 20) / 2.5
    assert level["avg_output_tokens"] == 43.5
    assert level["metrics"]["ttft_ms"] == {"avg": 200.0, "p50": 100.0, "p90": 300.0, "p95": 300.0, "p99": 300.0}
    assert level["metrics"]["itl_ms"]["avg"] == 25.0 and level["metrics"]["itl_ms"]["p50"] == 20.0


def test_a_level_with_no_success_has_no_rates() -> None:
    rows = [{"success": False, "start_s": 0.0, "end_s": 0.1}]
    level = level_from_requests(rows, gaps_ms=[])
    assert level["req_per_s"] is None and level["output_tokens_per_s"] is None
    assert level["metrics"]["latency_s"]["p50"] is None


# --- reading evalscope's per-request file ------------------------------------------------------

# The schema evalscope 1.x writes (evalscope/perf/utils/db_util.py, create_result_table).
RESULT_TABLE = """CREATE TABLE result(request TEXT, start_time REAL, inter_token_latencies TEXT, success INTEGER,
    response_messages TEXT, completed_time REAL, latency REAL, first_chunk_latency REAL, prompt_tokens INTEGER,
    completion_tokens INTEGER, max_gpu_memory_cost REAL, time_per_output_token REAL, request_id TEXT,
    is_stream INTEGER)"""


class Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path("/tmp/pep-pwned"), "x"))


def encode(value: object) -> str:
    return base64.b64encode(pickle.dumps(value)).decode()


def test_read_level_file(tmp_path: Path) -> None:
    path = tmp_path / "benchmark_data.db"
    with sqlite3.connect(path) as connection:
        connection.execute(RESULT_TABLE)
        rows = [  # start, end, success, latency, first chunk, in, out, tpot, gaps, response
            (100.50, 101.50, 1, 1.0, 0.25, 12, 4, 0.25, [0.2, 0.3, 0.25], encode([{"id": "x"}])),
            (100.00, 100.80, 1, 0.8, 0.10, 12, 8, 0.1, [0.1] * 7, encode([])),
            (101.00, 101.10, 0, None, None, None, None, None, [], encode(["HTTP 500: overloaded"])),
            (101.20, 101.30, 0, None, None, None, None, None, [], encode(Exploit())),
        ]
        for start, end, ok, latency, first, tokens_in, tokens_out, tpot, gaps, response in rows:
            connection.execute("INSERT INTO result (request, start_time, completed_time, success, latency, "
                               "first_chunk_latency, prompt_tokens, completion_tokens, time_per_output_token, "
                               "inter_token_latencies, response_messages, is_stream) VALUES "
                               "('{}', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                               (start, end, ok, latency, first, tokens_in, tokens_out, tpot, json.dumps(gaps),
                                response))
    level = read_level_file(path)
    assert level is not None
    first, second, failed, hostile = level.rows
    assert [r["seq"] for r in level.rows] == [0, 1, 2, 3]  # ordered by start time
    assert first["start_s"] == 0.0 and first["end_s"] == pytest.approx(0.8) and first["ttft_ms"] == 100.0
    assert second["start_s"] == 0.5 and second["tpot_ms"] == 250.0 and second["output_tokens"] == 4
    assert second["itl_mean_ms"] == pytest.approx(250.0) and second["itl_max_ms"] == pytest.approx(300.0)
    assert failed["success"] is False and failed["error"] == "HTTP 500: overloaded" and failed["ttft_ms"] is None
    assert hostile["error"] is None and not Path("/tmp/pep-pwned").exists()  # never unpickled as an object
    assert sorted(level.gaps_ms) == pytest.approx(sorted([100.0] * 7 + [200.0, 300.0, 250.0]))
    assert read_level_file(tmp_path / "missing.db") is None


# --- cost ----------------------------------------------------------------------------------------


def test_cost_of_an_instance_by_hand(tmp_path: Path) -> None:
    from backend.results.cost import Pricing, level_cost

    pricing_file = tmp_path / "pricing.yaml"
    pricing_file.write_text("as_of: '2026-12-01'\nregion: us-east-1\ninstances: {g5.2xlarge: 1.212}\n"
                            "bedrock: {claude35: {input_per_m: 3.0, output_per_m: 15.0}}\n")
    pricing = Pricing.load(pricing_file)
    target = {"provider": "openai", "catalog_provider": "emd", "key": "qwen3-8b", "instance_type": "g5.2xlarge",
              "instances": 2}
    # 2 instances x $1.212/h = $2.424/h; at 500 output tokens/s an hour makes 1.8 M tokens: $1.3467 per M.
    cost = level_cost(pricing, target, {"output_tokens_per_s": 500.0})
    assert cost.value == pytest.approx(2.424 / 1.8) and cost.basis == "instance"
    assert "2 x g5.2xlarge" in cost.reason and "2026-12-01" in cost.reason
    assert level_cost(pricing, target, {"output_tokens_per_s": None}).value is None


def test_cost_of_bedrock_tokens_by_hand(tmp_path: Path) -> None:
    from backend.results.cost import Pricing, level_cost

    pricing_file = tmp_path / "pricing.yaml"
    pricing_file.write_text("bedrock: {claude35: {input_per_m: 3.0, output_per_m: 15.0}}\n")
    pricing = Pricing.load(pricing_file)
    # A request with 1,000 input and 250 output tokens costs 3*1000/1e6 + 15*250/1e6 = $0.00675;
    # per million output tokens that is 0.00675 / 250 * 1e6 = $27.
    cost = level_cost(pricing, {"provider": "bedrock", "key": "claude35"},
                      {"avg_input_tokens": 1000.0, "avg_output_tokens": 250.0})
    assert cost.value == pytest.approx(27.0) and cost.basis == "tokens"


@pytest.mark.parametrize(("target", "words"), [
    ({"provider": "bedrock", "key": "nova-ultra"}, "no Bedrock price for nova-ultra"),
    ({"provider": "openai", "catalog_provider": "emd", "key": "x", "instance_type": "z9.huge"}, "no price for z9.huge"),
    ({"provider": "openai", "kind": "manual", "key": "manual:m"}, "instance type unknown"),
    ({"provider": "openai", "catalog_provider": "simulator", "key": "sim-fast"}, "simulator"),
])
def test_unknown_prices_say_so(target: dict, words: str) -> None:
    from backend.results.cost import Pricing, level_cost

    pricing = Pricing.load("config/pricing.yaml")
    cost = level_cost(pricing, target, {"output_tokens_per_s": 100.0, "avg_output_tokens": 10.0})
    assert cost.value is None and words in cost.reason


def test_the_shipped_pricing_covers_every_bedrock_model_of_the_catalogue() -> None:
    import yaml

    from backend.config import PROJECT_ROOT
    from backend.results.cost import Pricing

    catalogue = yaml.safe_load((PROJECT_ROOT / "config" / "models.yaml").read_text())["models"]
    bedrock = {key for key, spec in catalogue.items() if spec.get("provider") == "bedrock"}
    pricing = Pricing.load("config/pricing.yaml")
    assert bedrock and bedrock <= set(pricing.bedrock)
    assert pricing.as_of and pricing.region


# --- figures -------------------------------------------------------------------------------------


def test_level_figures_carry_the_levels_values_and_gaps_for_unknowns() -> None:
    from backend.results.figures import level_figures

    def lv(concurrency: int, rps: float | None, p95: float | None, complete: bool = True) -> dict:
        empty = {"avg": None, "p50": None, "p90": None, "p95": None, "p99": None}
        return {"concurrency": concurrency, "position": concurrency, "complete": complete, "req_per_s": rps,
                "output_tokens_per_s": rps * 10 if rps is not None else None, "total_tokens_per_s": None,
                "error_rate": 0.0, "goodput": {"per_s": None, "fraction": None},
                "metrics": {"latency_s": {**empty, "p95": p95}, "ttft_ms": dict(empty), "tpot_ms": dict(empty),
                            "itl_ms": dict(empty)}}

    figures = level_figures([lv(1, 2.0, 0.5), lv(4, 7.123456789, 0.9), lv(16, None, None, complete=False)])
    throughput = figures[0]["data"][0]
    assert throughput["x"] == [1, 4, 16] and throughput["y"] == [2.0, 7.1235, None]  # 5 significant digits
    assert throughput["text"] == ["", "", "partial level"]
    assert figures[0]["layout"]["xaxis"]["type"] == "log"
    knee = figures[-1]["data"][0]
    assert knee["x"] == [20.0, 71.235] and knee["y"] == [0.5, 0.9]  # the level with no throughput is left out
    assert level_figures([]) == []


def test_pareto_front() -> None:
    from backend.results.figures import pareto

    # (latency, throughput): (2, 100) is beaten by (1, 150); (3, 400) and (1, 150) are on the front.
    assert pareto([(2.0, 100.0), (1.0, 150.0), (3.0, 400.0), (3.5, 390.0)]) == [(1.0, 150.0), (3.0, 400.0)]
    assert pareto([]) == []
