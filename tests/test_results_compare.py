"""Comparing finished jobs from fixed rows: deltas, workload differences, repeats with t intervals."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pytest
from flask import Flask

from tests.support.results import add_job, level, ok


def two_levels(app: Flask, job_id: str, out_tps: tuple[float, float], *, model: str = "qwen3-8b",
               output_tokens: int = 64, ttft: float = 100.0, name: str = "Qwen3 8B") -> None:
    add_job(app, job_id, [level(1, [ok(ttft)] * 4, out_tps=out_tps[0]), level(8, [ok(ttft)] * 4, out_tps=out_tps[1])],
            model=model, target={"kind": "catalog", "key": model, "provider": "openai", "catalog_provider": "emd",
                                 "name": name, "chat_url": "http://h/v1/chat/completions"})
    if output_tokens != 64:
        from backend.db import db
        from backend.stress.models import StressJob

        with app.app_context():
            job = db.session.get(StressJob, job_id)
            job.params = {**job.params, "output_tokens": output_tokens}
            db.session.commit()


def test_deltas_against_the_baseline(app: Flask, client: Any) -> None:
    two_levels(app, "base1", (400.0, 1600.0))
    two_levels(app, "fast1", (500.0, 1200.0), model="qwen3-8b-awq", name="Qwen3 8B AWQ")
    result = client.get("/api/v1/results/compare?ids=base1,fast1").json
    assert result["baseline"] == "base1"
    rows = {(r["concurrency"], r["figure"]): r for r in result["table"]}
    one = rows[(1, "output_tokens_per_s")]["cells"]
    assert one["base1"]["delta"] is None and one["fast1"]["value"] == 500.0
    assert one["fast1"]["delta"] == {"abs": 100.0, "pct": 25.0}  # (500 - 400) / 400
    assert rows[(8, "output_tokens_per_s")]["cells"]["fast1"]["delta"] == {"abs": -400.0, "pct": -25.0}
    other = client.get("/api/v1/results/compare?ids=base1,fast1&baseline=fast1").json
    assert {(r["concurrency"], r["figure"]): r for r in other["table"]}[(1, "output_tokens_per_s")]["cells"][
        "base1"]["delta"]["pct"] == pytest.approx(-20.0)  # (400 - 500) / 500
    assert result["differences"] == []  # the same workload, only the deployment differs


def test_different_workloads_are_named(app: Flask, client: Any) -> None:
    two_levels(app, "short1", (400.0, 1600.0), output_tokens=64)
    two_levels(app, "long1", (400.0, 1600.0), output_tokens=512)
    result = client.get("/api/v1/results/compare?ids=short1,long1").json
    assert result["differences"] == ["output tokens asked for differs (short1: 64, long1: 512)"]
    page = client.get("/results/compare?ids=short1,long1")
    assert page.status_code == 200 and "did not run the same workload" in page.text
    assert "output tokens asked for differs" in page.text


def test_repeats_get_a_t_interval(app: Flask, client: Any) -> None:
    for job_id, tps in (("rep1", 10.0), ("rep2", 12.0), ("rep3", 14.0)):
        two_levels(app, job_id, (tps, tps * 2))
    two_levels(app, "other1", (99.0, 99.0), model="nova-pro", name="Nova")
    result = client.get("/api/v1/results/compare?ids=rep1,rep2,rep3,other1").json
    [group] = result["repeats"]
    assert group["jobs"] == ["rep1", "rep2", "rep3"]
    first = group["levels"][0]
    assert first["concurrency"] == 1
    ci = first["output_tokens_per_s"]
    # mean 12, sample sd 2, t(0.975, 2) = 4.302653: half-width 4.302653 * 2 / sqrt(3) = 4.9683
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(12.0)
    assert ci["low"] == pytest.approx(12.0 - 4.302653 * 2 / math.sqrt(3), abs=1e-4)
    assert ci["high"] == pytest.approx(12.0 + 4.302653 * 2 / math.sqrt(3), abs=1e-4)
    assert result["differences"] == []  # another model, the same workload: compared, not warned about


@pytest.mark.parametrize(("query", "field", "status"), [
    ("ids=a1", "ids", 400), ("ids=a1,a1", "ids", 400), ("ids=" + ",".join(f"j{i}" for i in range(11)), "ids", 400),
    ("ids=a1,nope", None, 404), ("ids=a1,b1&baseline=c1", "baseline", 400), ("ids=a1,b1&ttft_ms=x", "ttft_ms", 400),
])
def test_bad_comparisons_are_refused(app: Flask, client: Any, query: str, field: str | None, status: int) -> None:
    two_levels(app, "a1", (1.0, 2.0))
    two_levels(app, "b1", (1.0, 2.0))
    response = client.get(f"/api/v1/results/compare?{query}")
    assert response.status_code == status, response.json
    if field:
        assert response.json["error"]["details"]["field"] == field


def test_comparison_exports(app: Flask, client: Any) -> None:
    two_levels(app, "x1", (400.0, 1600.0), name="<b>bold</b>")
    two_levels(app, "y1", (500.0, 1200.0))
    table = list(csv.DictReader(io.StringIO(client.get("/api/v1/results/compare/export?ids=x1,y1&format=csv").text)))
    row = next(r for r in table if r["concurrency"] == "1" and r["figure"] == "output_tokens_per_s")
    assert (row["x1"], row["y1"], row["y1_delta_pct"]) == ("400.0", "500.0", "25.0")
    as_json = json.loads(client.get("/api/v1/results/compare/export?ids=x1,y1&format=json").text)
    assert as_json["table"] == client.get("/api/v1/results/compare?ids=x1,y1").json["table"]
    report = client.get("/api/v1/results/compare/export?ids=x1,y1&format=html")
    assert report.status_code == 200 and "attachment" in report.headers["Content-Disposition"]
    assert "<b>bold</b>" not in report.text and "&lt;b&gt;bold&lt;/b&gt;" in report.text
    assert len(report.data) < 5_000_000
    page = client.get("/results/compare?id=x1&id=y1")
    assert page.status_code == 200 and "compare-table" in page.text and "<b>bold</b>" not in page.text
