"""The shared layout in a real browser: navigation, error pages, the icon, and every page at 400 px and desktop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.conftest import TEST_MODELS
from tests.e2e.conftest import E2E_STRESS_SETTINGS, NO_AWS_CREDENTIALS, screenshot
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess

NAV = [("Models", "/models"), ("Playground", "/playground"), ("Stress tests", "/stress-tests"),
       ("Results", "/results"), ("History", "/history")]
PHONE, DESKTOP = 400, 1400


def test_navigation_reaches_every_page(page: Page, e2e_app: AppServer) -> None:
    page.goto(e2e_app.url + "/")
    for label, path in NAV:
        page.get_by_role("navigation").get_by_role("link", name=label).click()
        expect(page).to_have_url(e2e_app.url + path)
        expect(page.get_by_role("navigation").get_by_role("link", name=label)).to_have_class("active")
    page.goto(e2e_app.url + "/")
    screenshot(page, "home")


def test_not_found_is_a_page_in_the_layout(page: Page, e2e_app: AppServer) -> None:
    response = page.goto(e2e_app.url + "/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="404 · Not Found")).to_be_visible()
    expect(page.get_by_role("navigation")).to_be_visible()
    assert "Traceback" not in page.content()
    screenshot(page, "not-found")


# --- every page at a phone's width and at a desktop's (issue 9, items 19-21) --------------------------
# A platform of its own, so that runs and jobs can be made freely without touching what other browser
# tests count; no stress worker, so its jobs stay queued (or cancelled) and cost nothing.


@pytest.fixture(scope="module")
def layout_app(e2e_simulator: SimulatorProcess) -> Iterator[AppServer]:
    env = {"SIMULATOR_PORT": str(e2e_simulator.port), "PEP_CATALOG__MODELS_FILE": TEST_MODELS,
           "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9", **E2E_STRESS_SETTINGS, **NO_AWS_CREDENTIALS,
           # The home page's live stream of queued jobs notices a closed page at its next heartbeat: soon,
           # so that gunicorn does not wait out its graceful timeout for it at the end.
           "PEP_STRESS__HEARTBEAT_S": "1"}
    with AppServer(env=env) as server:
        yield server


def _stress_job(app: AppServer, levels: list[int]) -> str:
    response = requests.post(app.url + "/api/v1/stress-tests", timeout=10, json={
        "model": "sim-fast", "concurrency": levels, "requests": [4] * len(levels), "dataset": "prompt",
        "prompt": "Tell me about lighthouses", "output_tokens": 16})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def layout_data(layout_app: AppServer) -> dict[str, str]:
    """A stored playground run, a queued stress job and a cancelled one, made through the API."""
    run = requests.post(layout_app.url + "/api/v1/inference", timeout=30,
                        json={"model": "sim-echo", "prompt": "hello from the layout test", "max_tokens": 16})
    assert run.status_code == 200, run.text
    finished = _stress_job(layout_app, [2, 8])
    cancelled = requests.post(f"{layout_app.url}/api/v1/stress-tests/{finished}/cancel", timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    queued = _stress_job(layout_app, [1, 4])
    layout_app.seeded = True  # type: ignore[attr-defined]
    return {"run": str(run.json()["run_id"]), "queued": queued, "finished": finished}


def _pages(data: dict[str, str]) -> list[str]:
    return ["/", "/models", "/playground", "/stress-tests", "/stress-tests/new", f"/stress-tests/{data['queued']}",
            "/results", f"/results/{data['finished']}", "/history", f"/history/{data['run']}", "/no/such/page"]


def test_home_page_first_run_then_with_runs_and_jobs(page: Page, layout_app: AppServer,
                                                     request: pytest.FixtureRequest) -> None:
    if getattr(layout_app, "seeded", False):
        pytest.skip("the module's platform already has runs and jobs (test order changed)")
    page.set_viewport_size({"width": PHONE, "height": 900})
    page.goto(layout_app.url + "/")
    hint = page.locator("#first-run")
    expect(hint).to_be_visible()
    expect(hint).to_contain_text("sim-fast")
    for panel, heading in (("#home-compare", "Compare models"), ("#home-stress", "Stress tests"),
                           ("#home-results", "Results")):
        expect(page.locator(panel).get_by_role("heading", name=heading)).to_be_visible()
        expect(page.locator(f"{panel} .home-purpose")).to_be_visible()
    screenshot(page, "home-first-run-400")
    page.set_viewport_size({"width": DESKTOP, "height": 900})
    screenshot(page, "home-first-run-1400")

    # The hint's links land on forms filled in for the simulator.
    page.locator("#first-run-playground").click()
    expect(page).to_have_url(layout_app.url + "/playground?model=sim-fast,sim-reasoning,sim-vision")
    for key in ("sim-fast", "sim-reasoning", "sim-vision"):
        expect(page.locator(f'input[name="models"][value="{key}"]')).to_be_checked()
    expect(page.locator('input[name="models"][value="sim-echo"]')).not_to_be_checked()
    page.go_back()
    page.locator("#first-run-stress").click()
    expect(page.locator("#sf-target")).to_have_value("sim-fast")

    data: dict[str, str] = request.getfixturevalue("layout_data")
    page.goto(layout_app.url + "/")
    expect(page.locator("#first-run")).to_have_count(0)
    stress = page.locator("#home-stress")
    expect(stress.locator(f'[data-job="{data["queued"]}"] .job-levels')).to_have_text("concurrency 1, 4")
    expect(stress.locator(".home-finished .job-levels")).to_have_text("concurrency 2, 8")
    expect(page.locator(f'tr[data-run-id="{data["run"]}"]')).to_be_visible()
    screenshot(page, "home-with-runs-1400")
    page.set_viewport_size({"width": PHONE, "height": 900})
    screenshot(page, "home-with-runs-400")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE, "the home page is wider than a phone"


# The box of an element, and whether it is cut: outside the window's width, outside an ancestor that
# clips (overflow other than visible), or covered at its centre by something else.
BOX_JS = """
(element) => {
  const box = element.getBoundingClientRect();
  const clippedBy = [];
  for (let up = element.parentElement; up && up !== document.documentElement; up = up.parentElement) {
    const style = getComputedStyle(up);
    if (style.overflowX === "visible" && style.overflowY === "visible") continue;
    const outer = up.getBoundingClientRect();
    if (box.left < outer.left - 0.5 || box.right > outer.right + 0.5 || box.top < outer.top - 0.5
        || box.bottom > outer.bottom + 0.5) clippedBy.push(up.tagName.toLowerCase() + "." + up.className);
  }
  const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
  return {left: box.left, right: box.right, width: box.width, height: box.height, clippedBy,
          covered: !(hit && (hit === element || element.contains(hit)))};
}
"""

# Every element of the shared layout (header, flash area, footer, the worker banner) that sticks out
# of the window sideways, and the parts whose own content is wider than they are.
OVERFLOW_JS = """
(width) => {
  const problems = [];
  const parts = document.querySelectorAll("header.topbar, #flash, footer.footer, #worker-banner");
  for (const part of parts) {
    if (part.scrollWidth > part.clientWidth + 1) {
      problems.push(`${part.tagName} content ${part.scrollWidth} px wide in ${part.clientWidth} px`);
    }
    for (const element of [part, ...part.querySelectorAll("*")]) {
      const box = element.getBoundingClientRect();
      if (!box.width || !box.height) continue;
      if (box.left < -0.5 || box.right > width + 0.5) {
        const text = (element.textContent || "").trim().slice(0, 40);
        const span = `${Math.round(box.left)}-${Math.round(box.right)} px`;
        problems.push(`${element.tagName.toLowerCase()} "${text}" spans ${span}`);
      }
    }
  }
  return problems;
}
"""


def _nav_problems(page: Page, width: int) -> list[str]:
    problems = []
    nav = page.get_by_role("navigation")
    for label, _path in NAV:
        link = nav.get_by_role("link", name=label, exact=True)
        if not link.is_visible():
            problems.append(f"{label}: not visible")
            continue
        box: dict[str, Any] = link.evaluate(BOX_JS)
        if box["left"] < 0 or box["right"] > width or box["width"] < 20 or box["height"] < 16:
            problems.append(f"{label}: at {box['left']:.0f}-{box['right']:.0f} px in a {width} px window")
        if box["clippedBy"]:
            problems.append(f"{label}: clipped by {box['clippedBy']}")
        if box["covered"]:
            problems.append(f"{label}: covered by another element")
    return problems


@pytest.mark.parametrize("width", [PHONE, 700, DESKTOP])
def test_every_nav_link_is_whole_on_every_page(page: Page, layout_app: AppServer, layout_data: dict[str, str],
                                               width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    problems = {}
    for path in _pages(layout_data):
        response = page.goto(layout_app.url + path)
        assert response is not None and response.status == (404 if path == "/no/such/page" else 200), path
        found = _nav_problems(page, width)
        if found:
            problems[path] = found
    assert not problems, problems
    page.goto(layout_app.url + "/stress-tests")
    screenshot(page, f"nav-{width}")


def test_shared_layout_fits_a_phone_on_every_page(page: Page, layout_app: AppServer,
                                                  layout_data: dict[str, str]) -> None:
    page.set_viewport_size({"width": PHONE, "height": 900})
    problems = {}
    for path in _pages(layout_data):
        page.goto(layout_app.url + path)
        found = page.evaluate(OVERFLOW_JS, PHONE)
        if found:
            problems[path] = found
    assert not problems, problems


def test_a_long_error_in_the_flash_area_wraps_on_a_phone(page: Page, layout_app: AppServer) -> None:
    page.set_viewport_size({"width": PHONE, "height": 900})
    page.goto(layout_app.url + "/history")
    page.wait_for_function("() => window.htmx !== undefined")
    missing = "f" * 120  # one unbreakable word, as a run id, a URL or a file name can be
    # An HTMX request that fails: the server's error fragment is retargeted into the flash area.
    page.evaluate("(path) => htmx.ajax('GET', path, {target: '#runs', swap: 'outerHTML'})", f"/history/{missing}")
    flash = page.locator("#flash .flash-error")
    expect(flash).to_contain_text(f"There is no run {missing}")
    box = flash.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE, box
    assert flash.evaluate("(e) => e.scrollWidth <= e.clientWidth"), "the message sticks out of its box"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE
    screenshot(page, "flash-400")


def test_icon_is_linked_and_favicon_ico_answers(page: Page, layout_app: AppServer) -> None:
    failed: list[str] = []
    page.on("response", lambda response: response.status >= 400 and failed.append(f"{response.status} {response.url}"))
    page.goto(layout_app.url + "/")
    icon = page.locator('link[rel="icon"]')
    expect(icon).to_have_count(1)
    href = icon.get_attribute("href")
    assert href is not None
    size = page.evaluate("""(href) => new Promise((resolve) => {
        const image = new Image();
        image.onload = () => resolve([image.naturalWidth, image.naturalHeight]);
        image.onerror = () => resolve(null);
        image.src = href;
    })""", href)
    assert size is not None and size[0] > 0 and size[1] > 0, "the linked icon is not an image the browser can draw"

    response = page.goto(layout_app.url + "/favicon.ico")
    assert response is not None and response.ok, response and response.status
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert page.url == layout_app.url + href
    assert not failed, failed
