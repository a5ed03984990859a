"""The results API and pages from fixed rows: every figure checked against one worked out in the test."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from tests.support.results import add_job, failed, level, ok


@pytest.fixture
def sweep(app: Flask) -> str:
    """Concurrency 1: 10 fast requests. 4: 9 fast and one failure. 16: p95 TTFT of 900 ms."""
    add_job(app, "sweep1", [
        level(1, [ok(100.0 + i) for i in range(10)], out_tps=400.0, latency_p50=0.8),
        level(4, [ok(200.0) for _ in range(9)] + [failed()], out_tps=1200.0, latency_p50=1.1),
        level(16, [ok(300.0) for _ in range(15)] + [ok(900.0) for _ in range(5)], out_tps=2000.0, latency_p50=2.5),
    ])
    return "sweep1"


def test_job_results_by_hand(client: Any, sweep: str) -> None:
    results = client.get(f"/api/v1/results/{sweep}").json  # default SLO: p95 TTFT 500, TPOT 50, errors 1 %
    first, second, third = results["levels"]
    # Goodput: requests that succeeded within TTFT 500 ms and TPOT 50 ms, per second of the level.
    assert first["goodput"] == {"good": 10, "total": 10, "fraction": 1.0, "per_s": 10 / 10.0}
    assert second["goodput"] == {"good": 9, "total": 10, "fraction": 0.9, "per_s": 9 / 10.0}
    assert third["goodput"] == {"good": 15, "total": 20, "fraction": 0.75, "per_s": 15 / 10.0}
    # Verdicts: level 4 breaks the 1 % error limit (1 of 10); level 16's p95 TTFT (rank 19 of 20) is 900 ms.
    assert first["slo"]["meets"] is True
    assert second["slo"]["meets"] is False and second["slo"]["broken"] == ["error_rate"]
    assert third["slo"]["meets"] is False and third["slo"]["broken"] == ["ttft_ms"]
    summary = results["summary"]
    assert summary["capacity"]["concurrency"] == 1
    assert summary["peak_output_tokens_per_s"] == {"value": 2000.0, "concurrency": 16, "partial": False}
    assert summary["lowest_p50_latency_s"]["value"] == 0.8 and summary["lowest_p50_latency_s"]["concurrency"] == 1
    assert summary["error_rate"] == {"value": 1 / 40, "failed": 1, "requests": 40}
    # Cost at capacity: 1 x g5.2xlarge at $1.212/h making 400 output tokens/s.
    assert summary["cost_at_capacity"]["usd_per_m_output_tokens"] == pytest.approx(1.212 / (3600 * 400) * 1e6)


def test_packed_arrays_and_rows_give_the_same_results(app: Flask, client: Any) -> None:
    """Levels stored before packed arrays existed are read from their rows: the same figures either way."""
    def sweep(job_id: str, packed: bool) -> None:
        add_job(app, job_id, [level(1, [ok(100.0 + i, start=i * 0.5) for i in range(10)]),
                              level(4, [ok(200.0 + 3 * i) for i in range(9)] + [failed()])], packed=packed)

    sweep("packed1", True)
    sweep("rows1", False)
    packed, rows = (client.get(f"/api/v1/results/{job_id}").json for job_id in ("packed1", "rows1"))
    assert packed["levels"] == rows["levels"] and packed["summary"] == rows["summary"]


    def figures(job_id: str) -> list:
        page = client.get(f"/results/{job_id}").text
        return json.loads(page.split('id="figures-data">', 1)[1].split("</script>", 1)[0])

    drawn = figures("packed1")
    assert len(drawn) == 10 and drawn == figures("rows1")


def test_an_slo_given_in_the_query(client: Any, sweep: str) -> None:
    loose = client.get(f"/api/v1/results/{sweep}?ttft_ms=1000&error_rate=0.2").json
    assert [lv["slo"]["meets"] for lv in loose["levels"]] == [True, True, True]
    assert loose["summary"]["capacity"]["concurrency"] == 16
    assert "may be higher" in loose["summary"]["capacity"]["reason"]
    assert loose["slo"]["description"] == "p95 TTFT ≤ 1000 ms, p95 TPOT ≤ 50 ms, error rate ≤ 20 %"
    none_meets = client.get(f"/api/v1/results/{sweep}?ttft_ms=50").json
    assert none_meets["summary"]["capacity"]["concurrency"] is None
    assert none_meets["summary"]["cost_at_capacity"]["usd_per_m_output_tokens"] is None
    no_limit = client.get(f"/api/v1/results/{sweep}?ttft_ms=&tpot_ms=&error_rate=").json
    assert no_limit["slo"]["description"] == "no limits"
    for query, field in (("ttft_ms=abc", "ttft_ms"), ("error_rate=2", "error_rate"), ("percentile=0", "percentile"),
                         ("ttft_ms=nan", "ttft_ms")):
        response = client.get(f"/api/v1/results/{sweep}?{query}")
        assert response.status_code == 400 and response.json["error"]["details"]["field"] == field, query


def test_a_partial_level_is_never_capacity(app: Flask, client: Any) -> None:
    add_job(app, "part1", [level(1, [ok(100.0)] * 4), level(8, [ok(100.0)] * 3, complete=False)])
    results = client.get("/api/v1/results/part1").json
    assert results["partial"] is True
    assert results["levels"][1]["slo"]["meets"] is None and "cut short" in results["levels"][1]["slo"]["reason"]
    assert results["summary"]["capacity"]["concurrency"] == 1


def test_unknown_figures_are_not_zero(app: Flask, client: Any) -> None:
    add_job(app, "bed1", [level(2, [failed(), failed()], out_tps=0.0, latency_p50=None)],
            target={"kind": "catalog", "key": "nova-ultra", "provider": "bedrock"}, model="nova-ultra")
    results = client.get("/api/v1/results/bed1").json
    [only] = results["levels"]
    assert only["goodput"]["per_s"] == 0.0 and only["goodput"]["fraction"] == 0.0  # measured: none was good
    assert only["cost"]["usd_per_m_output_tokens"] is None and "no Bedrock price" in only["cost"]["reason"]
    assert results["summary"]["lowest_p50_latency_s"] is None
    page = client.get("/results/bed1")
    assert page.status_code == 200 and "unknown" in page.text


def test_exports_round_trip(client: Any, sweep: str) -> None:
    table = client.get(f"/api/v1/results/{sweep}/export?format=csv")
    assert table.headers["Content-Disposition"] == f'attachment; filename="stress-{sweep}-levels.csv"'
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [row["concurrency"] for row in rows] == ["1", "4", "16"]
    assert float(rows[2]["goodput_per_s"]) == 1.5 and rows[1]["meets_slo"] == "false"
    assert rows[0]["ttft_ms_p95"] == ""  # unknown stays empty, never 0
    as_json = json.loads(client.get(f"/api/v1/results/{sweep}/export?format=json").text)
    assert as_json == client.get(f"/api/v1/results/{sweep}").json
    requests = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/results/{sweep}/export?format=requests.csv").text)))
    assert len(requests) == 40 and requests[0]["concurrency"] == "1" and requests[0]["ttft_ms"] == "100.0"
    assert sum(row["success"] == "false" for row in requests) == 1
    assert client.get(f"/api/v1/results/{sweep}/export?format=pdf").status_code == 400
    assert client.get("/api/v1/results/nope/export?format=csv").status_code == 404


def test_results_list_filters_and_pages(app: Flask, client: Any) -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(5):
        add_job(app, f"job{i}", [level(1, [ok(100.0)])], created=day + timedelta(days=i),
                status="completed" if i % 2 == 0 else "cancelled", model="sim-fast" if i < 3 else "qwen3-8b")
    add_job(app, "running", [level(1, [ok(100.0)])], status="running")
    listed = client.get("/api/v1/results").json
    assert [item["id"] for item in listed["results"]] == ["job4", "job3", "job2", "job1", "job0"]  # newest first
    assert client.get("/api/v1/results?model=sim-fast&status=completed").json["total"] == 2
    assert [i["id"] for i in client.get("/api/v1/results?since=2026-11-02&until=2026-11-04").json["results"]] \
        == ["job2", "job1"]
    assert [i["id"] for i in client.get("/api/v1/results?q=JOB3").json["results"]] == ["job3"]
    assert [i["id"] for i in client.get("/api/v1/results?limit=2&offset=2").json["results"]] == ["job2", "job1"]
    assert client.get("/api/v1/results?since=yesterday").status_code == 400
    assert client.get("/api/v1/results?status=running").status_code == 400
    page = client.get("/results?model=sim-fast")
    assert page.status_code == 200 and "job2" in page.text and "job3" not in page.text


def test_results_page_escapes_and_links(app: Flask, client: Any) -> None:
    add_job(app, "xss1", [level(1, [ok(100.0)])],
            target={"kind": "manual", "key": "manual:m", "provider": "openai", "name": "<script>alert(1)</script>"})
    page = client.get("/results/xss1")
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "/api/v1/results/xss1/export?format=html" in page.text
    assert client.get("/results/nope").status_code == 404
    report = client.get("/api/v1/results/xss1/export?format=html").text
    assert "<script>alert(1)" not in report


def test_the_report_embeds_the_same_plotly_version_as_the_pages() -> None:
    import re

    from backend.results.export import REPORT_PLOTLY
    from backend.web import plotly_js_path

    def version(path: Any) -> str:
        head = path.read_text(encoding="utf-8")[:400]
        found = re.search(r"plotly\.js.*?v(\d+\.\d+\.\d+)", head, re.S)
        assert found, head
        return found.group(1)

    assert version(REPORT_PLOTLY) == version(plotly_js_path())


def test_the_job_page_links_to_its_results_once_a_level_is_stored(app: Flask, client: Any) -> None:
    add_job(app, "link1", [level(1, [ok(100.0)])])
    add_job(app, "nolevel1", [], status="failed")
    page = client.get("/stress-tests/link1")
    assert page.status_code == 200 and 'href="/results/link1"' in page.text
    assert 'id="job-results"' not in client.get("/stress-tests/nolevel1").text


def test_the_home_page_shows_the_latest_results_with_their_headlines(app: Flask, client: Any) -> None:
    assert "No stress test has results yet" in client.get("/").text
    add_job(app, "home1", [level(1, [ok(100.0)] * 4, out_tps=400.0), level(4, [ok(900.0)] * 4, out_tps=1500.0)])
    panel = client.get("/").text.split('id="home-results"', 1)[1].split("</table>", 1)[0]
    row = panel.split('data-job="home1"', 1)[1]
    # peak output tokens/s is level 4's 1,500.0; level 4's p95 TTFT of 900 ms breaks the default 500 ms SLO
    cells = re.findall(r'<td class="num"[^>]*>(.*?)</td>', row, re.S)
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells] == ["1,500.0", "1"]
    assert 'href="/results/home1"' in row
