"""/api/docs in Chromium under the platform's Content-Security-Policy: Swagger UI renders every operation
of the document from the vendored files, with no policy violation and no request leaving the machine.
The session's one browser (tests/e2e/conftest.py): a second sync Playwright in the same process fails."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
import requests
from playwright.sync_api import Browser

from tests.support.app_server import AppServer

pytestmark = pytest.mark.e2e

LISTENER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
                          (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


def test_docs_page_renders_every_operation_under_the_policy(browser: Browser, live_app: AppServer) -> None:
    paths = requests.get(live_app.url + "/api/v1/openapi.json", timeout=10).json()["paths"]
    expected = sum(len(item) for item in paths.values())
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    hosts: set[str] = set()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: hosts.add(urlparse(req.url).netloc))
    page.add_init_script(LISTENER)
    try:
        page.goto(live_app.url + "/api/docs")
        page.wait_for_selector(".opblock-summary", timeout=30_000)
        shown = page.locator(".opblock").count()
        violations = page.evaluate("window.__csp")
        title = page.locator(".info .title").inner_text()
    finally:
        context.close()
    assert errors == [] and violations == []
    assert shown == expected  # one block per documented operation, counted from the document itself
    assert "Performance Evaluation Platform API" in title
    assert hosts == {urlparse(live_app.url).netloc}  # no CDN, no remote validator
