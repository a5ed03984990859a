"""The models page in a real browser: HTMX filters that keep the URL, availability reasons, checks."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.support.app_server import AppServer


def _rows(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("#models-table tbody tr")


def _run_count(app: AppServer) -> int:
    return requests.get(app.url + "/api/v1/inference/runs?limit=1", timeout=10).json()["total"]


def test_filters_by_provider_and_capability_without_reload(page: Page, e2e_app: AppServer) -> None:
    page.goto(e2e_app.url + "/models")
    expect(page.locator("#models-table tr[data-key='claude35']")).to_be_visible()
    screenshot(page, "models")
    page.evaluate("window.__sameDocument = true")

    page.select_option("#filter-provider", "simulator")
    expect(page).to_have_url(re.compile(r"/models\?(.*&)?provider=simulator"))
    expect(page.locator("#models-table tr[data-key='claude35']")).to_have_count(0)
    expect(page.locator("#models-table tr[data-key='sim-fast']")).to_be_visible()
    providers = _rows(page).evaluate_all("rows => rows.map(r => r.dataset.provider)")
    assert providers and set(providers) == {"simulator"}

    page.select_option("#filter-capability", "reasoning")
    expect(page).to_have_url(re.compile(r"capability=reasoning"))
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page).first).to_have_attribute("data-key", "sim-reasoning")
    assert page.evaluate("window.__sameDocument") is True, "the filter reloaded the page"

    # The URL keeps the filter: loading it again gives the same table, with the selects set.
    page.reload()
    expect(_rows(page)).to_have_count(1)
    expect(page.locator("#filter-provider")).to_have_value("simulator")
    expect(page.locator("#filter-capability")).to_have_value("reasoning")


def test_capability_filter_and_unavailable_reason(page: Page, e2e_app: AppServer) -> None:
    page.goto(e2e_app.url + "/models")
    page.select_option("#filter-capability", "images")
    expect(page.locator("#models-table tr[data-key='sim-fast']")).to_have_count(0)
    keys = _rows(page).evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert {"claude35", "sim-vision", "sim-echo"} <= set(keys)
    claude = page.locator("#models-table tr[data-key='claude35']")
    expect(claude.locator(".availability")).to_contain_text("unavailable")
    expect(claude.locator(".availability")).to_contain_text("no AWS credentials")
    expect(page.locator("#models-table tr[data-key='sim-vision'] .availability")).to_contain_text("available")


def test_bad_filter_in_the_url_is_a_friendly_message(page: Page, e2e_app: AppServer) -> None:
    response = page.goto(e2e_app.url + "/models?provider=azure")
    assert response is not None and response.status == 400
    expect(page.get_by_role("alert")).to_contain_text("There is no provider “azure”")
    expect(page.locator("#models-table tr[data-key='sim-fast']")).to_be_visible()
    assert "Traceback" not in page.content()


def test_check_shows_latency_or_the_error(page: Page, e2e_app: AppServer) -> None:
    runs_before = _run_count(e2e_app)
    page.goto(e2e_app.url + "/models?provider=simulator")
    page.evaluate("window.__sameDocument = true")

    fast = page.locator("#models-table tr[data-key='sim-fast']")
    fast.get_by_role("button", name="Check sim-fast").click()
    expect(fast.locator(".check-result .badge.ok")).to_have_text(re.compile(r"^\d+ ms$"), timeout=15_000)

    failing = page.locator("#models-table tr[data-key='sim-error']")
    failing.get_by_role("button", name="Check sim-error").click()
    expect(failing.locator(".check-result .badge.bad")).to_be_visible(timeout=15_000)
    expect(failing.locator(".check-result .check-error")).to_contain_text("HTTP")
    assert page.evaluate("window.__sameDocument") is True
    screenshot(page, "models-checked")

    bedrock = page.goto(e2e_app.url + "/models?provider=bedrock")
    assert bedrock is not None and bedrock.ok
    claude = page.locator("#models-table tr[data-key='claude35']")
    claude.get_by_role("button", name="Check claude35").click()
    expect(claude.locator(".check-result .badge.bad")).to_have_text("auth", timeout=15_000)

    assert _run_count(e2e_app) == runs_before, "a check must not create a history run"


def test_models_page_fits_a_laptop_screen(page: Page, e2e_app: AppServer) -> None:
    page.set_viewport_size({"width": 1024, "height": 768})
    page.goto(e2e_app.url + "/models")
    expect(page.locator("#models-table tr[data-key='sim-fast']")).to_be_visible()
    # The page itself never scrolls sideways; a wide table scrolls inside its own box.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "models-1024")
