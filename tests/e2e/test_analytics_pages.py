"""The analytics pages in Chromium, on rows the test writes (an in-process app served through Playwright's
routing, as the evaluation pages' test does): the leaderboard with its best and tied cells and a filter,
a paired comparison opened from it with its sentence and the link to the side by side, and the quality
against speed and cost charts drawn with the Pareto frontier."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from backend.app import create_app
from tests.conftest import TEST_MODELS
from tests.e2e.conftest import screenshot
from tests.support import results as stress_rows
from tests.support.analytics import add_run, pattern
from tests.support.browser_app import serve_in_process
from tests.support.evaluations import wilson

BASE = "http://analytics.test"
N = 200
ARITH = {"m-a": 170, "m-b": 164, "m-c": 120}  # m-b tied with m-a (overlapping intervals), m-c not
FACTS = {"m-a": 40, "m-b": 80, "m-c": 70}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": TEST_MODELS}, "simulator": {"port": 9},
                      "evaluations": {"datasets_dir": str(tmp_path / "datasets"),
                                      "outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "el")}})
    add_run(app, "evalrun", [{"model": m, "name": f"Model {m[-1].upper()}", "dataset": "arith",
                              "dataset_name": "Arithmetic", "right": pattern(N, k, i)}
                             for i, (m, k) in enumerate(ARITH.items())]
            + [{"model": m, "name": f"Model {m[-1].upper()}", "dataset": "facts", "dataset_name": "Facts",
                "kind": "qa", "right": pattern(100, k, i)} for i, (m, k) in enumerate(FACTS.items())])
    for model, instance, tps in (("m-a", "g5.2xlarge", 600.0), ("m-b", "g5.xlarge", 1000.0),
                                 ("m-c", "g5.12xlarge", 1200.0)):
        stress_rows.add_job(app, f"st-{model}", [stress_rows.level(4, [stress_rows.ok(100) for _ in range(20)],
                                                                   out_tps=tps)],
                            model=model, target={"kind": "catalog", "key": model, "provider": "openai",
                                                 "catalog_provider": "emd", "name": model, "instance_type": instance,
                                                 "instances": 1})
    return app


def serve(page: Page, app: Flask) -> None:
    serve_in_process(page, app, BASE)


def test_leaderboard_then_a_paired_comparison_then_the_side_by_side(app: Flask, page: Page) -> None:
    serve(page, app)
    page.goto(f"{BASE}/")
    page.locator("nav[aria-label=Main] a", has_text="Leaderboard").click()
    expect(page).to_have_url(f"{BASE}/leaderboard")
    table = page.locator("#leaderboard-table")
    arith = table.locator("th[data-column^='arith']").get_attribute("data-column")
    cell = table.locator(f"tr[data-model=m-a] td[data-column='{arith}']")
    expect(cell).to_have_attribute("data-best", "true")
    expect(cell).to_contain_text(f"{170 / N:.3f}")
    low, high = wilson(170, N)
    expect(cell).to_contain_text(f"[{low:.3f}, {high:.3f}]")
    expect(cell).to_contain_text(f"n={N}")
    expect(table.locator(f"tr[data-model=m-b] td[data-column='{arith}'] .badge")).to_have_text("tied")
    expect(table.locator(f"tr[data-model=m-c] td[data-column='{arith}']")).to_have_attribute("data-tied", "false")
    # Mean rank: m-b is 2nd on arith and 1st on facts (1.5), m-a 1st and 3rd (2.0), m-c 3rd and 2nd (2.5).
    expect(table.locator("tbody tr")).to_have_count(3)
    order = table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)")
    assert order == ["m-b", "m-a", "m-c"]
    # A filter: the question-answering group only.
    page.locator("#analytics-filters select[name=group]").select_option("qa")
    page.locator("#analytics-apply").click()
    expect(page).to_have_url(f"{BASE}/leaderboard?datasets=&group=qa&models=&provider=&since=&until=&pick=latest&runs=")
    expect(page.locator("#leaderboard-table thead th[data-column]")).to_have_count(1)
    screenshot(page, "analytics-leaderboard")

    # The comparison form below the table: Model A against Model C on Facts.
    page.locator("#leaderboard-compare input[name=models]").fill("m-a,m-c")
    page.locator("#leaderboard-compare button").click()
    expect(page).to_have_url(f"{BASE}/analytics/compare?dataset=facts&models=m-a%2Cm-c")
    pair = page.locator(".cmp-pair")
    expect(pair.locator(".cmp-sentence")).to_contain_text("Model C is better than Model A by 30.0 points, 95 % CI")
    expect(pair.locator(".cmp-n")).to_have_text("100")
    expect(page.locator("#figures")).to_have_attribute("data-drawn", "1")
    screenshot(page, "analytics-compare")
    facts = {r["model"]: next(iter(r["cells"].values()))["cell_id"]
             for r in app.test_client().get("/api/v1/leaderboard?datasets=facts").json["rows"]}
    pair.locator("a.sbs-link").click()
    expect(page).to_have_url(f"{BASE}/evaluations/side-by-side?a={facts['m-a']}&b={facts['m-c']}")
    expect(page.locator("#sbs-counts")).to_be_visible()


def test_quality_against_speed_and_cost_is_drawn_with_its_frontier(app: Flask, page: Page) -> None:
    serve(page, app)
    page.goto(f"{BASE}/analytics/quality-cost?dataset=arith")
    expect(page.locator("#figures")).to_have_attribute("data-drawn", "2")
    expect(page.locator("#figures .figure .main-svg").first).to_be_visible()
    expect(page.locator("#figures .legendtext", has_text="Pareto frontier")).to_have_count(2)
    # One marker per model on each chart: three points in the first trace of each figure.
    points = page.locator("#figures .figure").first.locator(".scatterlayer .trace").first.locator("path.point")
    expect(points).to_have_count(3)
    expect(page.locator("#qc-table tr[data-model=m-b]")).to_contain_text("1,000.0")
    expect(page.locator("#qc-best-value")).to_have_text("m-b")
    screenshot(page, "analytics-quality-cost")
