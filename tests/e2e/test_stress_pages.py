"""The stress-test pages in a real browser, with the real worker and evalscope against the simulator:
the form (prefill, validation, submit), a job page that follows the run live to its per-level table,
the jobs list's live progress, and Cancel from the job page."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.support.app_server import AppServer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("e2e_stress_worker")]

JOB_URL = re.compile(r"/stress-tests/([0-9a-f]{12})$")
FINISHED = ("completed", "failed", "cancelled", "interrupted")


def open_form(page: Page, app: AppServer, query: str = "") -> None:
    page.goto(f"{app.url}/stress-tests/new{query}")
    expect(page.get_by_role("heading", name="New stress test")).to_be_visible()


def job_status(app: AppServer, job_id: str) -> dict[str, Any]:
    return requests.get(f"{app.url}/api/v1/stress-tests/{job_id}", timeout=5).json()


def watch_progress(page: Page) -> None:
    """Record every value #job-progress takes, in the page, so that no intermediate value is missed."""
    page.evaluate("""() => {
        const el = document.getElementById('job-progress');
        window.__progress = [[el.dataset.processed, el.dataset.status]];
        new MutationObserver(() => window.__progress.push([el.dataset.processed, el.dataset.status]))
            .observe(el, {attributes: true, attributeFilter: ['data-processed', 'data-status']});
    }""")


def test_prefill_from_query_and_from_the_playground(page: Page, e2e_app: AppServer) -> None:
    open_form(page, e2e_app, "?model=sim-fast&prompt=" + requests.utils.quote("Count to five <b>slowly</b>."))
    expect(page.locator("#sf-target")).to_have_value("sim-fast")
    expect(page.locator("#sf-dataset")).to_have_value("prompt")
    expect(page.locator("#sf-prompt")).to_have_value("Count to five <b>slowly</b>.")
    expect(page.locator(".flash-info").first).to_contain_text("From the link: the model (sim-fast) and the prompt.")
    expect(page.locator("#sf-estimate-requests")).to_have_text("10")  # the quick check: 10 requests

    # From a playground answer column.
    page.goto(f"{e2e_app.url}/playground")
    for box in page.locator('input[name="models"]').all():
        box.set_checked(box.get_attribute("value") == "sim-fast")
    page.get_by_label("Prompt", exact=True).fill("Name three rivers.")
    page.locator("#pg-run").click()
    link = page.locator('.pg-column[data-model="sim-fast"] .pg-stress')
    expect(link).to_be_visible(timeout=15_000)
    expect(page.locator('.pg-column[data-model="sim-fast"]')).to_have_attribute("data-status", "done", timeout=20_000)
    link.click()
    expect(page).to_have_url(re.compile(r"/stress-tests/new\?"))
    expect(page.locator("#sf-target")).to_have_value("sim-fast")
    expect(page.locator("#sf-prompt")).to_have_value("Name three rivers.")


def test_validation_errors_are_shown_next_to_their_fields(page: Page, e2e_app: AppServer) -> None:
    open_form(page, e2e_app, "?model=sim-fast")
    page.locator("#sf-concurrency").fill("1, 0")
    page.locator("#sf-prompt").fill("")
    expect(page.locator("#sf-estimate-levels")).to_contain_text("Concurrency levels: level 2 must be at least 1")
    page.locator("#sf-submit").click()
    expect(page.locator("#error-concurrency")).to_have_text("Concurrency levels: level 2 must be at least 1")
    expect(page.locator("#sf-concurrency")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-errors")).to_contain_text("see the fields marked below")
    assert page.url.endswith("/stress-tests/new?model=sim-fast")  # no navigation, nothing typed is lost
    expect(page.locator("#sf-concurrency")).to_have_value("1, 0")

    page.locator("#sf-concurrency").fill("1, 2")
    page.locator("#sf-submit").click()
    expect(page.locator("#error-prompt")).to_have_text("Prompt: required with the “Fixed prompt” dataset")
    expect(page.locator("#error-concurrency")).to_be_empty()
    expect(page.locator("#sf-concurrency")).not_to_have_attribute("aria-invalid", "true")

    # The manual endpoint's fields appear with it, and its errors land next to them.
    page.locator("#sf-target").select_option("__manual__")
    expect(page.locator("#sf-manual-url")).to_be_visible()
    page.locator("#sf-manual-url").fill("ftp://example")
    page.locator("#sf-manual-model").fill("m")
    page.locator("#sf-prompt").fill("hello")
    page.locator("#sf-submit").click()
    expect(page.locator("#error-manual_url")).to_have_text(
        "Base URL or chat completions URL: must be an http:// or https:// URL")
    screenshot(page, "stress-form-validation")


def test_form_to_live_job_page_to_results_and_live_list(page: Page, e2e_app: AppServer) -> None:
    open_form(page, e2e_app)
    page.locator("#sf-target").select_option("sim-fast")
    page.locator("#sf-dataset").select_option("prompt")
    page.locator("#sf-concurrency").fill("1, 2")
    page.locator("#sf-requests").fill("3, 4")
    page.locator("#sf-output-tokens").fill("60")
    page.locator("#sf-prompt").fill("Describe a lighthouse at night.")
    expect(page.locator("#sf-estimate-requests")).to_have_text("7")
    screenshot(page, "stress-form")
    page.set_viewport_size({"width": 1024, "height": 900})
    screenshot(page, "stress-form-1024")
    page.set_viewport_size({"width": 1400, "height": 900})

    page.locator("#sf-submit").click()
    page.wait_for_url(JOB_URL, timeout=10_000)
    job_id = JOB_URL.search(page.url).group(1)
    watch_progress(page)

    # The jobs list, in a second tab, follows the same job live.
    listing = page.context.new_page()
    listing.goto(f"{e2e_app.url}/stress-tests")
    row = listing.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".job-status")).to_have_text("running", timeout=20_000)
    bar = row.locator(".progress")
    expect(bar).not_to_have_attribute("data-processed", "0", timeout=30_000)
    screenshot(listing, "stress-list-running")

    # The job page: progress rises through intermediate values, charts fill, then the table appears.
    expect(page.locator("#chart-ttft .scatterlayer .trace").first).to_be_attached(timeout=30_000)
    screenshot(page, "stress-job-running")
    expect(page.locator("#job-summary .job-status")).to_have_text("completed", timeout=60_000)
    expect(page.locator("#levels-table tbody tr")).to_have_count(2, timeout=10_000)
    seen = page.evaluate("window.__progress")
    running_values = {int(processed) for processed, status in seen if status not in FINISHED}
    assert len(running_values - {0}) >= 2, f"progress did not rise through intermediate values: {seen}"
    expect(page.locator("#job-progress")).to_have_attribute("data-processed", "7")
    expect(page.locator("#job-token-source")).to_have_text("server usage")
    expect(page.locator("#chart-level-throughput .trace").first).to_be_visible()
    expect(page.locator("#job-log pre")).to_contain_text("Processing", timeout=10_000)
    rows = page.locator("#levels-table tbody tr")
    expect(rows.nth(0)).to_have_attribute("data-concurrency", "1")
    expect(rows.nth(1).locator("td").nth(2)).to_contain_text("4 / 0")
    expect(page.locator("#job-cancel")).to_have_count(0)
    expect(page.locator("#job-delete")).to_be_visible()
    screenshot(page, "stress-job-finished")
    page.set_viewport_size({"width": 1024, "height": 900})
    page.wait_for_timeout(400)  # plotly re-lays its charts out after a (debounced) resize
    screenshot(page, "stress-job-finished-1024")

    # The list row ended by itself, without a reload.
    expect(row.locator(".job-status")).to_have_text("completed", timeout=10_000)
    expect(bar).to_have_attribute("data-processed", "7")
    screenshot(listing, "stress-list")
    listing.set_viewport_size({"width": 1024, "height": 900})
    screenshot(listing, "stress-list-1024")
    listing.close()

    # The home page lists it among the latest finished.
    page.goto(e2e_app.url + "/")
    expect(page.locator("#home-stress")).to_contain_text("Simulator (fast)")
    screenshot(page, "home-stress")


def test_cancel_from_the_job_page(page: Page, e2e_app: AppServer) -> None:
    body = {"model": "sim-slow", "concurrency": [1, 2], "requests": [2, 2], "prompt": "Take your time.",
            "output_tokens": 30}
    created = requests.post(f"{e2e_app.url}/api/v1/stress-tests", json=body, timeout=10)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    page.goto(f"{e2e_app.url}/stress-tests/{job_id}")
    expect(page.locator("#job-summary .job-status")).to_have_text("running", timeout=20_000)
    # evalscope takes 3-5 s (more on a busy machine) to start its first level
    expect(page.locator("#job-level-steps .level-step.running")).to_have_count(1, timeout=20_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#job-cancel").click()
    expect(page.locator("#job-summary .job-status")).to_have_text(re.compile("cancelling|cancelled"))
    expect(page.locator("#job-summary .job-status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#job-error")).to_contain_text("cancel")
    expect(page.locator("#job-progress")).to_have_attribute("data-status", "cancelled")
    assert job_status(e2e_app, job_id)["status"] == "cancelled"
    expect(page.locator("#job-delete")).to_be_visible()
    screenshot(page, "stress-job-cancelled")

    # Delete (finished jobs only) goes back to the list.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#job-delete").click()
    page.wait_for_url(re.compile(r"/stress-tests$"))
    deadline = time.monotonic() + 5
    while requests.get(f"{e2e_app.url}/api/v1/stress-tests/{job_id}", timeout=5).status_code != 404:
        assert time.monotonic() < deadline, "the job was not deleted"
        time.sleep(0.1)
