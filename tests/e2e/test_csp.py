"""The Content-Security-Policy in Chromium: the main pages work under it with no violation reported.

Violations are caught twice: a ``securitypolicyviolation`` listener installed before any page script, and
Chromium's console messages; a control injects an inline script to prove the detector sees one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask
from playwright.sync_api import Page, Route, expect

from backend.app import create_app
from tests.conftest import TEST_MODELS
from tests.support import results as stress_rows
from tests.support.analytics import add_run, pattern
from tests.support.app_server import AppServer
from tests.support.playground import choose, open_playground
from tests.support.simulator import SimulatorProcess

pytestmark = pytest.mark.e2e

LISTENER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' ' + e.sourceFile + ':' + e.lineNumber);
});
"""
BASE = "http://csp.test"


def watch(page: Page) -> list[str]:
    console: list[str] = []
    page.add_init_script(LISTENER)
    page.on("console", lambda msg: console.append(msg.text) if "Content Security Policy" in msg.text else None)
    return console


def violations(page: Page, console: list[str]) -> list[str]:
    return [*page.evaluate("window.__csp || []"), *console]


def test_playground_streaming_and_a_stress_job_page_under_the_policy(page: Page, e2e_app: AppServer) -> None:
    console = watch(page)
    open_playground(page, e2e_app)
    choose(page, "sim-fast")
    page.get_by_label("Prompt", exact=True).fill("Say hello.")
    page.get_by_role("button", name="Run").click()
    expect(page.locator('.pg-column[data-model="sim-fast"]')).to_have_attribute("data-status", "done", timeout=20_000)
    assert page.locator('.pg-column[data-model="sim-fast"] .pg-answer').text_content()
    assert violations(page, console) == []

    job = requests.post(f"{e2e_app.url}/api/v1/stress-tests", timeout=10, json={
        "model": "sim-fast", "prompt": "x", "concurrency": [1], "requests": [1]}).json()
    response = page.goto(f"{e2e_app.url}/stress-tests/{job['id']}")
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#job-page")).to_be_visible()
    page.goto(f"{e2e_app.url}/stress-tests/new")
    expect(page.locator("#stress-form")).to_be_visible()
    assert violations(page, console) == []

    # The control: an inline script is blocked and reported, so an empty list above means something.
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
                  " document.body.appendChild(s); }")
    deadline = time.monotonic() + 5
    while not violations(page, console) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert page.evaluate("window.ran === undefined")
    assert any("script-src" in v for v in violations(page, console)), violations(page, console)


@pytest.fixture
def rows_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": TEST_MODELS}, "simulator": {"port": 9},
                      "evaluations": {"datasets_dir": str(tmp_path / "datasets"),
                                      "outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "el")}})
    add_run(app, "evalrun", [{"model": m, "name": f"Model {m}", "dataset": "arith", "dataset_name": "Arithmetic",
                              "right": pattern(50, k, i)} for i, (m, k) in enumerate({"m-a": 40, "m-b": 30}.items())])
    stress_rows.add_job(app, "cspjob", [
        stress_rows.level(1, [stress_rows.ok(100.0 + i, start=i * 0.5) for i in range(6)], out_tps=400.0),
        stress_rows.level(4, [stress_rows.ok(200.0 + i, start=i * 0.2) for i in range(6)], out_tps=900.0)])
    return app


def test_results_charts_an_evaluation_and_the_leaderboard_under_the_policy(page: Page, rows_app: Flask) -> None:
    client = rows_app.test_client()

    def handle(route: Route) -> None:
        path = "/" + route.request.url.split("://", 1)[1].split("/", 1)[1]
        response = client.open(path, method=route.request.method, data=route.request.post_data_buffer, base_url=BASE)
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.data)

    page.route(f"{BASE}/**", handle)
    console = watch(page)
    page.goto(f"{BASE}/results/cspjob")
    expect(page.locator("#figures .figure .main-svg").first).to_be_visible()
    page.goto(f"{BASE}/evaluations/evalrun")
    expect(page.locator("#eval-run")).to_be_visible()
    page.goto(f"{BASE}/leaderboard")
    expect(page.locator("main")).to_contain_text("Model m-a")
    assert violations(page, console) == []


@pytest.fixture(scope="module")
def secured_server(e2e_simulator: SimulatorProcess) -> Iterator[AppServer]:
    env = {"SIMULATOR_PORT": str(e2e_simulator.port), "PEP_CATALOG__MODELS_FILE": TEST_MODELS,
           "PEP_AUTH__ENABLED": "true", "API_TOKENS": "viewer:e2e-viewer-token", "AUTH_PASSWORD": "e2e password"}
    with AppServer(env=env) as server:
        yield server


def test_sign_in_and_out_in_the_browser(page: Page, secured_server: AppServer) -> None:
    console = watch(page)
    page.goto(f"{secured_server.url}/stress-tests?status=queued")
    assert page.url.startswith(f"{secured_server.url}/login?next=")
    page.get_by_label("Password or token").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.get_by_label("Password or token").fill("e2e password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".topbar .signed-in")).to_contain_text("operator (operator)")
    assert page.url == f"{secured_server.url}/stress-tests?status=queued"
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    # The page's own API calls ride the session: the list refreshes through /api/v1 without a token.
    assert page.evaluate("fetch('/api/v1/stress-tests').then((r) => r.status)") == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("fetch('/api/v1/stress-tests').then((r) => r.status)") == 401
    assert violations(page, console) == []
