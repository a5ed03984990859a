"""History and the run page in a real browser, over runs created through the SSE API."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.support.app_server import AppServer
from tests.support.sse import by_name, post_events

XSS = '<script>window.__xss=1</script> and <img src=x onerror="window.__xss=2">'


def _run(app: AppServer, models: list[str], prompt: str, **extra) -> str:  # type: ignore[no-untyped-def]
    events = post_events(app.url + "/api/v1/multi-inference", {"models": models, "prompt": prompt, **extra})
    return by_name(events, "done")[0]["run_id"]


def test_history_lists_filters_and_pages(page: Page, e2e_app: AppServer) -> None:
    marker = uuid.uuid4().hex[:8]
    apple = _run(e2e_app, ["sim-fast", "sim-error"], f"apple {marker}: name three fruits", max_tokens=16)
    banana = _run(e2e_app, ["sim-echo"], f"banana {marker}: echo me")

    page.goto(e2e_app.url + "/history")
    rows = page.locator("#runs tbody tr")
    expect(page.locator(f"#runs tr[data-run-id='{banana}']")).to_be_visible()
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.runId)")
    assert ids.index(banana) < ids.index(apple), "newest first"
    apple_row = page.locator(f"#runs tr[data-run-id='{apple}']")
    expect(apple_row.locator(".badge.ok")).to_have_text("sim-fast")
    expect(apple_row.locator(".badge.bad")).to_have_text("sim-error")
    expect(apple_row.locator(".outcome")).to_contain_text("1 ok · 1 failed")
    screenshot(page, "history")
    page.evaluate("window.__sameDocument = true")

    page.select_option("#filter-model", "sim-error")
    expect(page).to_have_url(re.compile(r"model=sim-error"))
    expect(page.locator(f"#runs tr[data-run-id='{banana}']")).to_have_count(0)
    expect(apple_row).to_be_visible()

    page.select_option("#filter-model", "")
    page.locator("#filter-text").fill(f"banana {marker}")
    expect(page).to_have_url(re.compile(r"q=banana"))
    expect(rows).to_have_count(1)
    expect(page.locator(f"#runs tr[data-run-id='{banana}']")).to_be_visible()
    page.locator("#filter-text").fill(f"cherry {marker}")
    expect(page.locator("#runs")).to_contain_text("No run matches")
    assert page.evaluate("window.__sameDocument") is True, "filtering reloaded the page"

    # Paging: one run a page, the second page holds the older run.
    page.goto(e2e_app.url + f"/history?limit=1&q={marker}")
    expect(page.locator(f"#runs tr[data-run-id='{banana}']")).to_be_visible()
    page.get_by_role("link", name="older →").click()
    expect(page).to_have_url(re.compile(r"offset=1"))
    expect(page.locator(f"#runs tr[data-run-id='{apple}']")).to_be_visible()
    expect(page.get_by_role("link", name="← newer")).to_be_visible()


def test_run_page_shows_outputs_side_by_side(page: Page, e2e_app: AppServer) -> None:
    marker = uuid.uuid4().hex[:8]
    run_id = _run(e2e_app, ["sim-fast", "sim-reasoning", "sim-error"], f"side by side {marker}",
                  system="Answer briefly.", max_tokens=40, temperature=0.3)
    page.goto(e2e_app.url + f"/history?q={marker}")
    page.locator(f"#runs tr[data-run-id='{run_id}'] .prompt-link").click()
    expect(page).to_have_url(e2e_app.url + f"/history/{run_id}")

    expect(page.locator("#run-prompt")).to_have_text(f"side by side {marker}")
    expect(page.locator(".run-request")).to_contain_text("Answer briefly.")
    expect(page.locator(".params")).to_contain_text("0.3")
    columns = page.locator(".output-column")
    expect(columns).to_have_count(3)
    boxes = [columns.nth(i).bounding_box() for i in range(3)]
    assert all(boxes)
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"]  # type: ignore[index]
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]  # type: ignore[index]

    fast = page.locator(".output-column[data-model='sim-fast']")
    expect(fast.locator(".status")).to_have_text("completed")
    expect(fast.locator(".metrics")).to_contain_text("TTFT")
    expect(fast.locator(".metrics")).to_contain_text(re.compile(r"\d+ ms"))
    expect(fast.locator(".answer")).not_to_be_empty()
    reasoning = page.locator(".output-column[data-model='sim-reasoning'] details.reasoning")
    expect(reasoning).to_be_visible()
    expect(reasoning.locator(".reasoning-text")).to_be_hidden()
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-text")).to_be_visible()
    failed = page.locator(".output-column[data-model='sim-error']")
    expect(failed.locator(".status")).to_have_text("failed")
    expect(failed.locator(".output-error")).to_contain_text("HTTP")

    again = page.get_by_role("link", name="Run again")
    expect(again).to_have_attribute("href", f"/playground?run={run_id}")
    screenshot(page, "run")
    page.set_viewport_size({"width": 1024, "height": 768})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "run-1024")


def test_model_markup_renders_as_text(page: Page, e2e_app: AppServer) -> None:
    prompt = f"**bold** and `code`\n\n{XSS}\n\n[js](javascript:window.__xss=3)"
    run_id = _run(e2e_app, ["sim-echo"], prompt)
    page.goto(e2e_app.url + f"/history/{run_id}")
    answer = page.locator(".output-column[data-model='sim-echo'] .answer")
    expect(answer).to_have_attribute("data-markdown", "rendered")
    expect(answer).to_contain_text("<script>window.__xss=1</script>")
    expect(answer).to_contain_text('<img src=x onerror="window.__xss=2">')
    expect(answer.locator("strong")).to_have_text("bold")  # Markdown still renders
    expect(answer.locator("code")).to_have_text("code")
    expect(answer.locator("script, img")).to_have_count(0)
    assert answer.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))") in ([], [None])
    page.wait_for_timeout(300)  # time for an injected image to fail and fire onerror, were there one
    assert page.evaluate("typeof window.__xss") == "undefined"
    screenshot(page, "run-markup")


def test_unknown_run_is_a_404_page(page: Page, e2e_app: AppServer) -> None:
    response = page.goto(e2e_app.url + "/history/does-not-exist")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="404 · Not Found")).to_be_visible()
    expect(page.get_by_role("navigation")).to_be_visible()
