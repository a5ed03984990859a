"""An in-process app served to Playwright: every request the page makes to ``base`` goes to the Flask test
client (any method, its headers and body), with ``base`` as the host the browser addressed (the cross-site
check compares the Origin with it)."""

from __future__ import annotations

from flask import Flask
from playwright.sync_api import Page, Route


def serve_in_process(page: Page, app: Flask, base: str) -> None:
    client = app.test_client()

    def handle(route: Route) -> None:
        request = route.request
        rest = request.url.split("://", 1)[1]
        path = "/" + (rest.split("/", 1)[1] if "/" in rest else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        response = client.open(path, method=request.method, headers=headers, data=request.post_data_buffer,
                               base_url=base)
        route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.data)

    page.route(f"{base}/**", handle)
