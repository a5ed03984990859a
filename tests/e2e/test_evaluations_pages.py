"""The evaluation pages in Chromium.

- On rows the test writes (an in-process app served through Playwright's routing, as the capacity page's
  test does): the list, a run's scores and chart, the live cells that poll themselves and reload the page
  when the run ends, the review (wrong answers only, search, the keyset pager) and the side by side.
- End to end (gunicorn, the worker, the real ``evalscope eval`` against the simulator): the form creates an
  evaluation, its page follows it until it ends and shows the scores and the samples.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from backend.app import create_app
from backend.db import db
from backend.evaluations.models import EvaluationCell, EvaluationJob
from tests.conftest import TEST_MODELS
from tests.e2e.conftest import E2E_STRESS_SETTINGS, NO_AWS_CREDENTIALS, screenshot
from tests.support.app_server import AppServer
from tests.support.browser_app import serve_in_process
from tests.support.simulator import SimulatorProcess
from tests.test_evaluations_review import add_run, mcq

BASE = "http://evaluations.test"
# 60 items; A is wrong on every 4th, B on every 3rd (so 60 - 45 = 15 and 60 - 40 = 20 wrong).
A_RIGHT = [i % 4 != 0 for i in range(60)]
B_RIGHT = [i % 3 != 0 for i in range(60)]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                       "catalog": {"models_file": TEST_MODELS}, "simulator": {"port": 9},
                       "evaluations": {"datasets_dir": str(tmp_path / "datasets"),
                                       "outputs_dir": str(tmp_path / "outputs"), "logs_dir": str(tmp_path / "el")}})


def serve(page: Page, app: Flask) -> None:
    serve_in_process(page, app, BASE)


def metric(right: list[bool]) -> dict[str, Any]:
    k, n = sum(right), len(right)
    return {"acc": {"score": k / n, "n": n, "ci_low": k / n - 0.1, "ci_high": k / n + 0.08, "method": "wilson"}}


def test_run_page_review_and_side_by_side(app: Flask, page: Page) -> None:
    a, b = add_run(app, "evrun1", [
        {"model": "sim-fast", "name": "Simulator A", "metrics": metric(A_RIGHT),
         "samples": mcq(A_RIGHT, prediction="<script>alert(1)</script> the answer is A")},
        {"model": "sim-slow", "name": "Simulator B", "metrics": metric(B_RIGHT), "samples": mcq(B_RIGHT)},
    ])
    serve(page, app)
    page.goto(f"{BASE}/evaluations")
    expect(page.locator("#evaluations-list tr[data-job=evrun1]")).to_contain_text("0.750")
    page.locator("#evaluations-list a", has_text="evrun1").click()
    expect(page).to_have_url(f"{BASE}/evaluations/evrun1")
    expect(page.locator(f'#eval-cells tr[data-cell="{a}"] .cell-score')).to_contain_text("0.750")
    expect(page.locator(f'#eval-cells tr[data-cell="{a}"] .cell-score')).to_contain_text("n=60")
    expect(page.locator("#figures")).to_have_attribute("data-drawn", "1")
    expect(page.locator("#figures .figure .main-svg").first).to_be_visible()

    # The review: every sample, 25 to a page; wrong answers only; the pager; a search.
    rows = page.locator("#review-table tbody tr")
    expect(page.locator("#review")).to_have_attribute("data-total", "120")
    expect(rows).to_have_count(25)
    page.locator("#review-filters input[name=wrong]").check()
    page.locator("#review-apply").click()
    wrong = A_RIGHT.count(False) + B_RIGHT.count(False)
    expect(page.locator("#review")).to_have_attribute("data-total", str(wrong))
    expect(rows).to_have_count(25)
    expect(page.locator('#review-table tr[data-correct="true"]')).to_have_count(0)
    first_page = rows.evaluate_all("rows => rows.map(r => r.dataset.cell + '/' + r.dataset.sample)")
    page.locator("#review-next").click()
    expect(rows).to_have_count(wrong - 25)
    second_page = rows.evaluate_all("rows => rows.map(r => r.dataset.cell + '/' + r.dataset.sample)")
    assert not set(first_page) & set(second_page)
    expect(page.locator("#review-next")).to_have_count(0)
    page.locator("#review-previous").click()
    expect(rows).to_have_count(25)
    # The filters are in the address: a reload (or a shared link) shows the same page of wrong answers.
    expect(page).to_have_url(re.compile(r"wrong=1"))
    page.reload()
    expect(page.locator("#review")).to_have_attribute("data-total", str(wrong))
    expect(page.locator("#review-filters input[name=wrong]")).to_be_checked()
    # Model output is text on the page, never markup.
    expect(page.locator("#review-table .prediction").first).to_contain_text("<script>alert(1)</script>")
    page.locator("#review-filters select[name=cell]").select_option(str(b))
    page.locator("#review-apply").click()
    expect(page.locator("#review")).to_have_attribute("data-total", str(B_RIGHT.count(False)))
    page.locator("#review-filters input[name=wrong]").uncheck()
    page.locator("#review-filters input[name=q]").fill("question 5")  # question 5 and 50..59 of cell B
    page.locator("#review-apply").click()
    expect(page.locator("#review")).to_have_attribute("data-total", "11")
    screenshot(page, "evaluation-run")

    # Side by side: A against B on the same dataset, the disagreements first.
    page.locator("#sbs-a").select_option(str(a))
    page.locator("#sbs-open").click()
    expect(page).to_have_url(f"{BASE}/evaluations/side-by-side?a={a}&b={b}")
    pairs = list(zip(A_RIGHT, B_RIGHT, strict=True))
    counts = {"only_a": pairs.count((True, False)), "only_b": pairs.count((False, True)),
              "both_wrong": pairs.count((False, False)), "both_right": pairs.count((True, True))}
    for key, value in counts.items():
        expect(page.locator(f'#sbs-counts tr[data-outcome="{key}"] td.num')).to_have_text(str(value))
    outcomes = page.locator("#sbs-pairs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.outcome)")
    disagree = counts["only_a"] + counts["only_b"]
    assert set(outcomes[:disagree]) == {"only_a", "only_b"} and len(outcomes) == 25
    page.locator('#sbs-counts tr[data-outcome="only_b"] a').click()
    expect(page.locator("#sbs-pairs tbody tr")).to_have_count(counts["only_b"])
    screenshot(page, "evaluation-side-by-side")


def test_live_cells_follow_the_run_cancel_and_the_page_reloads_when_it_ends(app: Flask, page: Page) -> None:
    add_run(app, "evlive", [{"model": "sim-fast", "samples": [], "metrics": {}, "status": "running",
                             "live": {"answered": 2, "reviewed": 2, "scored": 2, "score_so_far": 0.5,
                                      "metric": "acc"}}], status="running")
    serve(page, app)
    page.goto(f"{BASE}/evaluations/evlive")
    expect(page.locator("#eval-live .live-accuracy")).to_contain_text("acc so far 0.500")
    expect(page.locator("#eval-cancel")).to_be_visible()
    with app.app_context():  # the worker's progress, as it records it
        cell = db.session.scalars(db.select(EvaluationCell).where(EvaluationCell.job_id == "evlive")).one()
        cell.done, cell.live = 3, {"answered": 3, "reviewed": 3, "scored": 3, "score_so_far": 2 / 3, "metric": "acc"}
        db.session.commit()
    expect(page.locator("#eval-live .live-accuracy")).to_contain_text("acc so far 0.667", timeout=8000)
    page.locator("#eval-cancel").click()  # asks the worker to stop: the row says so, the button waits
    expect(page.locator("#eval-cancel")).to_have_text("Cancelling…")
    expect(page.locator("#eval-cancel")).to_be_disabled()
    with app.app_context():
        job = db.session.get(EvaluationJob, "evlive")
        assert job.status == "cancelling" and job.cancel_requested
    with app.app_context():  # the cell ends and the run with it
        cell = db.session.scalars(db.select(EvaluationCell).where(EvaluationCell.job_id == "evlive")).one()
        cell.status, cell.metrics = "completed", metric([True, True, False, True])
        db.session.get(EvaluationJob, "evlive").status = "cancelled"
        db.session.commit()
    expect(page.locator("#eval-live")).to_have_attribute("data-status", "cancelled", timeout=8000)
    expect(page.locator("#eval-live .cell-score")).to_contain_text("0.750")
    expect(page.locator("#figures")).to_have_attribute("data-drawn", "1")  # the reloaded page has its chart
    expect(page.locator("#eval-cancel")).to_have_count(0)


# --- end to end: the form, the worker, the real evalscope eval against the answering simulator ---------

LIMIT = 12  # the first 12 items: each of the four side-by-side outcomes happens (2, 2, 1, 7)
PROFILES = {"sim-answer-a": (3, 0.75), "sim-answer-b": (12, 0.6)}  # seed, accuracy: backend/simulator/profiles.py


def simulator_right(seed: int, accuracy: float, item_id: str) -> bool:
    """The simulator's rule for an item it answers right (backend/simulator/answers.py), written again here."""
    return int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) / 2**32 < accuracy


@pytest.fixture(scope="module")
def answering_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """gunicorn and the worker against a simulator with its answering profiles, the default catalogue
    (which lists sim-answer-a and sim-answer-b), evaluations' folders in a temporary directory."""
    root = tmp_path_factory.mktemp("eval-e2e")
    with SimulatorProcess(seed=5) as sim:
        env = {"SIMULATOR_PORT": str(sim.port), "PEP_CATALOG__MODELS_FILE": "config/models.yaml",
               "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9",
               "PEP_EVALUATIONS__DATASETS_DIR": str(root / "datasets"),
               "PEP_EVALUATIONS__OUTPUTS_DIR": str(root / "outputs"),
               "PEP_EVALUATIONS__LOGS_DIR": str(root / "logs"), **E2E_STRESS_SETTINGS, **NO_AWS_CREDENTIALS}
        with AppServer(env=env, stress_worker=True) as server:
            yield server


def test_create_an_evaluation_from_the_form_and_watch_it(answering_app: AppServer, page: Page) -> None:
    with (Path(__file__).resolve().parents[2] / "backend/evaluations/bundled/arithmetic_val.csv").open() as f:
        ids = [row["id"] for row in csv.DictReader(f)][:LIMIT]
    right = {model: [simulator_right(seed, accuracy, item) for item in ids]
             for model, (seed, accuracy) in PROFILES.items()}

    page.goto(answering_app.url + "/evaluations/new")
    for model in PROFILES:
        page.locator(f'#ef-models input[value="{model}"]').check()
    page.locator("#ef-datasets label", has_text="Arithmetic").locator("input").check()
    page.locator("#ef-limit").fill(str(LIMIT))
    page.locator("#ef-limit").press("Tab")
    page.locator("#ef-submit").click()
    expect(page).to_have_url(re.compile(r"/evaluations/[0-9a-f]{12}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#eval-cells tbody tr[data-cell]")).to_have_count(2)
    expect(page.locator("#eval-live")).to_have_attribute("data-status", "completed", timeout=180_000)

    cells = {}
    for model, marks in right.items():
        row = page.locator("#eval-cells tbody tr[data-cell]", has_text=model)
        expected = sum(marks) / LIMIT
        expect(row.locator(".cell-score")).to_contain_text(f"{expected:.3f}")
        expect(row.locator(".cell-score")).to_contain_text(f"n={LIMIT}")
        cells[model] = row.get_attribute("data-cell")
    expect(page.locator("#figures")).to_have_attribute("data-drawn", "1")
    screenshot(page, "evaluation-e2e-run")

    # The review: wrong answers only are the items the simulator was set to get wrong.
    page.locator("#review-filters input[name=wrong]").check()
    page.locator("#review-apply").click()
    wrong = {(model, item) for model, marks in right.items() for item, ok in zip(ids, marks, strict=True) if not ok}
    expect(page.locator("#review")).to_have_attribute("data-total", str(len(wrong)))
    shown = page.locator("#review-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.sample)")
    assert sorted(shown) == sorted(item for _, item in wrong)

    # Side by side of the two models on the same dataset.
    page.goto(f"{answering_app.url}/evaluations/side-by-side?a={cells['sim-answer-a']}&b={cells['sim-answer-b']}")
    pairs = list(zip(right["sim-answer-a"], right["sim-answer-b"], strict=True))
    for key, value in (("only_a", pairs.count((True, False))), ("only_b", pairs.count((False, True))),
                       ("both_wrong", pairs.count((False, False))), ("both_right", pairs.count((True, True)))):
        expect(page.locator(f'#sbs-counts tr[data-outcome="{key}"] td.num')).to_have_text(str(value))
    page.goto(f"{answering_app.url}/evaluations")
    expect(page.locator(f"#evaluations-list tr[data-job=\"{job_id}\"] .job-status")).to_have_text("completed")
