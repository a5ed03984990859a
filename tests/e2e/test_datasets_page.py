"""The datasets page in a real browser: the bundled datasets listed, a refused upload's message (with its line)
under the file field, a good upload's preview with its answer distribution, file text shown as text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import NO_AWS_CREDENTIALS, screenshot
from tests.support.app_server import AppServer


@pytest.fixture(scope="module")
def datasets_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    folder = tmp_path_factory.mktemp("eval-datasets")
    env = {"PEP_EVALUATIONS__DATASETS_DIR": str(folder), "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9",
           **NO_AWS_CREDENTIALS}
    with AppServer(env=env) as server:
        yield server


def test_list_upload_errors_and_preview(page: Page, datasets_app: AppServer, tmp_path: Path) -> None:
    page.goto(datasets_app.url + "/datasets")
    rows = page.locator("#datasets-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Arithmetic")).to_contain_text("40")
    expect(rows.filter(has_text="Short facts")).to_contain_text("30")
    expect(page.locator("#datasets-table .badge", has_text="bundled")).to_have_count(2)
    expect(page.locator("#builtin-list li[data-benchmark='gsm8k']")).to_contain_text("not available offline")
    expect(page.locator("nav a.active")).to_have_text("Datasets")

    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,A,B,answer\nq1,One?,x,y,A\nq2,Two?,x,y,F\n")
    page.set_input_files("#ds-file", str(bad))
    page.click("#ds-submit")
    expect(page.locator("#error-file")).to_contain_text("line 3, column 'answer'")
    expect(page.locator("#error-file")).to_contain_text("'F' is not one of the row's choices A, B")
    expect(page.locator("#ds-file")).to_have_attribute("aria-invalid", "true")
    expect(rows).to_have_count(2)
    screenshot(page, "datasets-upload-error")

    good = tmp_path / "good.csv"
    good.write_text("id,question,A,B,C,answer\nq1,<b>Bold</b> or not?,yes,no,maybe,C\nq2,Two?,x,y,z,A\n"
                    "q3,Three?,x,y,z,C\n")
    page.fill("#ds-name", "My <i>three</i> items")
    page.set_input_files("#ds-file", str(good))
    page.click("#ds-submit")
    expect(page.locator("h1")).to_have_text("My <i>three</i> items")  # the name as text, not markup
    expect(page.locator("#preview-items")).to_contain_text("3")
    distribution = page.locator("#answer-distribution td")
    assert distribution.evaluate_all("cells => cells.map(c => [c.dataset.letter, c.textContent])") == [
        ["A", "1"], ["B", "0"], ["C", "2"]]
    expect(page.locator("#preview-rows tbody tr").first).to_contain_text("<b>Bold</b> or not?")
    assert page.locator("#preview-rows b").count() == 0
    screenshot(page, "datasets-preview")

    page.goto(datasets_app.url + "/datasets")
    expect(rows).to_have_count(3)
    expect(rows.filter(has_text="My <i>three</i> items")).to_contain_text("A 1 · B 0 · C 2")
