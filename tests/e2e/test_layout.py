from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.support.app_server import AppServer


def test_navigation_reaches_every_page(page: Page, e2e_app: AppServer) -> None:
    page.goto(e2e_app.url + "/")
    for label, path in [("Models", "/models"), ("Playground", "/playground"), ("Stress tests", "/stress-tests"),
                        ("Results", "/results"), ("History", "/history")]:
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
