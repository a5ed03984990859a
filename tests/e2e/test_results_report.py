"""The results page and the self-contained HTML report in Chromium; the report with every request that
is not for the file itself blocked, so that it proves it needs no network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from playwright.sync_api import Page, Route, expect

from tests.e2e.conftest import screenshot
from tests.support.results import add_job, failed, level, ok


def _sweep(app: Flask) -> None:
    add_job(app, "report1", [
        level(1, [ok(100.0 + i, start=i * 0.5) for i in range(10)], out_tps=400.0, latency_p50=0.8),
        level(4, [ok(200.0 + i, start=i * 0.2) for i in range(9)] + [failed()], out_tps=1200.0, latency_p50=1.1),
        level(16, [ok(300.0 + 30 * i, start=i * 0.1) for i in range(20)], out_tps=2000.0, latency_p50=2.5,
              complete=False),
    ])


def test_the_report_draws_its_charts_offline(app: Flask, client: Any, page: Page, tmp_path: Path) -> None:
    _sweep(app)
    report = client.get("/api/v1/results/report1/export?format=html")
    assert report.status_code == 200
    path = tmp_path / "report.html"
    path.write_bytes(report.data)
    assert path.stat().st_size < 5_000_000

    requested: list[str] = []

    def only_the_file(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_the_file)
    page.goto(path.as_uri())
    # Ten figures: six against concurrency, latency against throughput, two distributions, one over time.
    expect(page.locator("#figures .figure")).to_have_count(10, timeout=30_000)  # plotly.js (3.5 MB) on a busy machine
    expect(page.locator("#figures .figure .main-svg").first).to_be_visible()
    points = page.locator("#figures .scatterlayer .point").count()
    assert points > 30, points
    assert requested and all(url.startswith("file://") for url in requested), requested
    expect(page.locator("#results-levels tbody tr")).to_have_count(3)
    expect(page.locator("#results-levels tr[data-concurrency='16'] .badge.warn")).to_have_text("partial")
    screenshot(page, "results-report-offline")


def test_the_results_page_in_the_browser(app: Flask, client: Any, page: Page) -> None:
    """The page served by the in-process app through Playwright's routing (no server needed)."""
    _sweep(app)

    def serve(route: Route) -> None:
        url = route.request.url
        path = url.split("://", 1)[1].split("/", 1)[1] if "/" in url.split("://", 1)[1] else ""
        response = client.get("/" + path)
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.data)

    page.route("http://results.test/**", serve)
    page.goto("http://results.test/results")
    expect(page.locator("#results-list tr[data-job='report1']")).to_be_visible()
    page.click("#results-list tr[data-job='report1'] a")
    expect(page.locator("#results-summary")).to_contain_text("concurrency 1")
    expect(page.locator("#figures .figure")).to_have_count(10, timeout=30_000)  # plotly.js (3.5 MB) on a busy machine
    page.fill("#slo-form input[name=ttft_ms]", "1000")
    page.fill("#slo-form input[name=error_rate]", "0.2")
    page.click("#slo-form button[type=submit]")
    expect(page.locator("#results-summary")).to_contain_text("concurrency 4")  # 16 is partial: never capacity
    assert "ttft_ms=1000" in page.url
    expect(page.locator("#figures .figure .main-svg").first).to_be_visible()
    csv_link = page.locator("a.button", has_text="CSV").first
    assert "ttft_ms=1000" in (csv_link.get_attribute("href") or "")
    screenshot(page, "results-page")


def test_compare_three_jobs_and_export(app: Flask, client: Any, page: Page, tmp_path: Path) -> None:
    for job_id, tps in (("cmp1", 400.0), ("cmp2", 500.0), ("cmp3", 300.0)):
        add_job(app, job_id, [level(1, [ok(100.0)] * 4, out_tps=tps), level(4, [ok(150.0)] * 4, out_tps=tps * 3)])

    def serve(route: Route) -> None:
        rest = route.request.url.split("://", 1)[1]
        response = client.get("/" + (rest.split("/", 1)[1] if "/" in rest else ""))
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.data)

    page.route("http://results.test/**", serve)
    page.goto("http://results.test/results")
    for job_id in ("cmp1", "cmp2", "cmp3"):
        page.check(f"#results-list input[value='{job_id}']")
    page.click("#compare-button")
    expect(page.locator("#compare-table")).to_be_visible()
    expect(page.locator("#workload-same")).to_be_visible()
    expect(page.locator("#figures .figure")).to_have_count(7)
    expect(page.locator("#figures .figure .main-svg").first).to_be_visible()
    row = page.locator("#compare-table tr[data-concurrency='1'][data-figure='output_tokens_per_s']")
    cell = row.locator("td[data-job='cmp1']")
    baseline = page.locator("#baseline").input_value()
    assert baseline in ("cmp1", "cmp2", "cmp3")
    page.select_option("#baseline", "cmp2")
    page.click("form:has(#baseline) button[type=submit]")
    expect(cell).to_contain_text("-20.0 %")  # 400 against 500
    screenshot(page, "results-compare")
    href = page.locator("a.button:has-text('HTML report')").get_attribute("href") or ""
    assert "baseline=cmp2" in href and "ids=cmp1,cmp2,cmp3" in href
    saved = tmp_path / "compare.html"
    saved.write_bytes(client.get(href).data)  # what the link downloads (downloads do not pass Playwright's routing)
    assert saved.stat().st_size < 5_000_000
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://") else route.abort())
    page.goto(saved.as_uri())
    expect(page.locator("#compare-table")).to_be_visible()
    expect(page.locator("#figures .figure:has(.main-svg)")).to_have_count(7)
