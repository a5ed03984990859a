"""Driving the playground page in Playwright: what several browser test modules share."""

from __future__ import annotations

import io
import time
from typing import Any

import requests
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from tests.support.app_server import AppServer


def open_playground(page: Page, app: AppServer, query: str = "") -> None:
    page.goto(f"{app.url}/playground{query}")
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()


def choose(page: Page, *keys: str) -> None:
    """Tick exactly ``keys`` in the model picker."""
    for box in page.locator('input[name="models"]').all():
        box.set_checked(box.get_attribute("value") in keys)


def checked_models(page: Page) -> list[str]:
    return page.eval_on_selector_all('input[name="models"]:checked', "(boxes) => boxes.map((b) => b.value)")


def column(page: Page, key: str) -> Locator:
    return page.locator(f'.pg-column[data-model="{key}"]')


def statuses(page: Page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('.pg-column'),
               (c) => [c.dataset.model, c.dataset.status]))""")


def wait_until_finished(page: Page, timeout_s: float = 20) -> dict[str, str]:
    page.wait_for_function(
        """() => { const columns = document.querySelectorAll('.pg-column');
                   return columns.length > 0 && !document.getElementById('pg-form').classList.contains('running'); }""",
        timeout=timeout_s * 1000)
    return statuses(page)


def run_id_of_last_run(page: Page) -> str:
    """The id of the run the page just made, from its "open in History" link."""
    href = page.locator("#pg-run-status a").get_attribute("href")
    assert href and href.startswith("/history/"), href
    return href.rsplit("/", 1)[1]


def stored_run(app: AppServer, run_id: str, timeout_s: float = 10) -> dict[str, Any]:
    """The run as the API stores it, once its results are written (a stopped run's after the server noticed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = requests.get(f"{app.url}/api/v1/inference/runs/{run_id}", timeout=5).json()
        if run.get("results") or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def png_bytes(colour: tuple[int, int, int] = (37, 99, 235)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()
