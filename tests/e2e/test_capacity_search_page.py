"""The capacity search's page in Chromium: probes appear as they land (static/js/capacity.js polls the
JSON route) and the page settles when the search ends. The app is in-process, served through
Playwright's routing; the search is moved on by the worker's own step, its probe jobs "run" by writing
the rows the worker would have ingested (tests/test_capacity_search_jobs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, Route, expect

from tests.e2e.conftest import screenshot
from tests.support.stress import offline_app
from tests.test_capacity_search_jobs import create, run_job, step, unfinished_jobs


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    return offline_app(tmp_path, monkeypatch)


def _run_next(app: Flask, search_id: str) -> int:
    """Step the search, run the probe job it queued; the concurrency it ran."""
    step(app, search_id)
    [job] = unfinished_jobs(app, search_id)
    concurrency = job.params["concurrency"][0]
    run_job(app, job, 10 + 2 * concurrency)  # TPOT = 10 + 2c against p95 TPOT <= 31: the limit is 10
    return concurrency


def test_probes_appear_as_they_land(app: Flask, page: Page) -> None:
    client = app.test_client()
    search_id = create(app, slo={"tpot_ms": 31}, repeats=1)["id"]

    def serve(route: Route) -> None:
        rest = route.request.url.split("://", 1)[1]
        response = client.get("/" + (rest.split("/", 1)[1] if "/" in rest else ""))
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.data)

    page.route("http://capacity.test/**", serve)
    page.goto(f"http://capacity.test/results/capacity/{search_id}")
    rows = page.locator("#probes-body tr")
    expect(rows).to_have_count(0)
    expect(page.locator("#search-capacity")).to_have_text("searching")

    assert _run_next(app, search_id) == 1
    step(app, search_id)  # records probe 1, queues 2
    expect(rows).to_have_count(1, timeout=6000)
    expect(rows.nth(0)).to_contain_text("meets")
    expect(page.locator("#search-pending")).to_contain_text("Probing concurrency 2")
    expect(page.locator("#figures .figure")).to_have_count(2)

    ran = [1]
    while True:
        step(app, search_id)
        if not unfinished_jobs(app, search_id):
            break
        ran.append(_run_next(app, search_id))
    assert ran == [1, 2, 4, 8, 16, 12, 10, 11]
    expect(page.locator("#capacity-search")).to_have_attribute("data-finished", "true", timeout=6000)
    expect(rows).to_have_count(8)
    expect(page.locator("#search-capacity")).to_have_text("concurrency 10")
    expect(page.locator("#search-bracket")).to_have_text("10 \u2013 11")
    expect(page.locator("#search-status .job-status")).to_have_text("completed")
    expect(page.locator("#search-status .job-status")).to_have_class("badge job-status ok")
    expect(page.locator("#probes-body .badge.bad")).to_have_count(3)
    screenshot(page, "capacity-search")
