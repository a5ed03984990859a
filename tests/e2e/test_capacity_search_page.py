"""The capacity search's page in Chromium: probes appear as they land (static/js/capacity.js polls the
JSON route) and the page settles when the search ends. The app is in-process, served through
Playwright's routing; the search is moved on by the worker's own step, its probe jobs "run" by writing
the rows the worker would have ingested (tests/test_capacity_search_jobs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.support.browser_app import serve_in_process
from tests.support.stress import offline_app
from tests.test_capacity_search_jobs import create, run_job, step, unfinished_jobs

BASE = "http://capacity.test"


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
    search_id = create(app, slo={"tpot_ms": 31}, repeats=1)["id"]
    serve_in_process(page, app, BASE)
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


def test_the_stress_form_starts_a_capacity_search(app: Flask, page: Page) -> None:
    serve_in_process(page, app, BASE)
    page.goto("http://capacity.test/results/capacity")
    expect(page.locator("section.panel .empty")).to_contain_text("No capacity searches yet")
    page.locator("a.button", has_text="New capacity search").click()

    # The capacity mode is chosen: the sweep's fields are hidden (and not sent), the search's are shown.
    expect(page.locator("input[name=mode][value=capacity]")).to_be_checked()
    expect(page.locator("#sf-concurrency")).to_be_hidden()
    expect(page.locator("#sf-concurrency")).to_be_disabled()
    expect(page.locator("#sf-estimate")).to_be_hidden()
    expect(page.locator("#sf-slo-tpot")).to_be_visible()
    expect(page.locator("#sf-submit")).to_have_text("Start capacity search")
    configured = app.config["PEP"]["results"]["slo"]
    expect(page.locator("#sf-slo-tpot")).to_have_value(f"{configured['tpot_ms']:g}")
    page.locator("input[name=mode][value=sweep]").check()  # and back: the sweep's fields return
    expect(page.locator("#sf-concurrency")).to_be_visible()
    expect(page.locator("#sf-submit")).to_have_text("Start stress test")
    page.locator("input[name=mode][value=capacity]").check()

    page.select_option("#sf-target", "sim-fast")
    page.fill("#sf-slo-ttft", "")  # no TTFT limit
    page.fill("#sf-slo-tpot", "31")
    page.fill("#sf-max-concurrency", "0")
    page.locator("#sf-submit").click()
    expect(page.locator("#error-max_concurrency")).to_contain_text("Highest concurrency: must be at least 1")
    page.fill("#sf-max-concurrency", "16")
    page.fill("#sf-precision", "ten")  # refused by the server, named by the form's label
    page.locator("#sf-submit").click()
    expect(page.locator("#error-precision")).to_contain_text("Precision:")
    page.fill("#sf-precision", "1")
    page.select_option("#sf-start", "auto")
    screenshot(page, "stress-form-capacity-mode")
    page.locator("#sf-submit").click()

    page.wait_for_url("http://capacity.test/results/capacity/*")
    search_id = page.url.rsplit("/", 1)[1]
    search = app.test_client().get(f"/api/v1/capacity-searches/{search_id}").json
    assert search["model"] == "sim-fast" and search["start_auto"] is True and search["max_concurrency"] == 16
    assert search["slo"]["tpot_ms"] == 31 and search["slo"]["ttft_ms"] is None
    assert search["slo"]["error_rate"] == pytest.approx(configured["error_rate"])
    assert "concurrency" not in search["params"] and search["requests"] == 10
    expect(page.locator("#search-estimate")).to_have_text("Start from Little's law: measuring.")
    screenshot(page, "capacity-search-started")

    page.goto("http://capacity.test/results/capacity")
    row = page.locator(f"#search-list tr[data-search='{search_id}']")
    expect(row).to_contain_text("sim-fast")
    expect(row).to_contain_text("p95 TPOT ≤ 31 ms")
    expect(row).to_contain_text("queued")
    screenshot(page, "capacity-search-list")
