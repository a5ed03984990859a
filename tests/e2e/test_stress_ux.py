"""Issue 9 in a real browser: the stress form refuses what the server would (a number field holding text, a
value out of bounds) naming the field, and shows no estimate for it; the estimate counts start-up, pauses
and warm-up; level chips say how many requests failed; a running job's duration ticks and its phase is
named; a finished job's log stops refreshing; tables stay readable at 400 px; a deletion says what went.

Jobs in a given state are written straight into the platform's database (tests/support/stress_rows.py);
one real job runs through the form, the worker and evalscope against the simulator."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Page, expect

from backend.app import create_app
from tests.conftest import TEST_MODELS
from tests.e2e.conftest import E2E_STRESS_SETTINGS, screenshot
from tests.support.app_server import AppServer
from tests.support.stress_rows import (
    add_fake_worker,
    add_job,
    add_level,
    add_sample,
    delete_jobs,
    delete_worker,
    update_job,
)

pytestmark = [pytest.mark.e2e]

JOB_URL = re.compile(r"/stress-tests/([0-9a-f]{12})$")
PAUSE_S = int(E2E_STRESS_SETTINGS["PEP_STRESS__LEVEL_PAUSE_S"])
NO_FIGURE = "\N{EN DASH}"
RED, AMBER, GREEN = "rgb(185, 28, 28)", "rgb(180, 83, 9)", "rgb(21, 128, 61)"  # --bad, --warn, --ok


@pytest.fixture(scope="module")
def rows(e2e_app: AppServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app on the browser tests' database, to write job rows the platform then shows."""
    saved = os.environ.get("ENVIRONMENT")
    os.environ["ENVIRONMENT"] = "test"
    logs = tmp_path_factory.mktemp("rows-logs")
    try:
        yield create_app({"database": {"path": str(e2e_app.database_path)}, "logging": {"dir": str(logs)},
                          "catalog": {"models_file": TEST_MODELS},
                          "stress": {"outputs_dir": str(e2e_app.root / "outputs" / "stress"),
                                     "logs_dir": str(e2e_app.log_dir / "stress")}})
    finally:
        if saved is None:
            os.environ.pop("ENVIRONMENT", None)
        else:
            os.environ["ENVIRONMENT"] = saved


def open_form(page: Page, app: AppServer, query: str = "") -> None:
    page.goto(f"{app.url}/stress-tests/new{query}")
    expect(page.get_by_role("heading", name="New stress test")).to_be_visible()


def fill_number(page: Page, selector: str, text: str) -> None:
    """Type as a person would (``fill`` refuses text in a number field, which is the point here)."""
    field = page.locator(selector)
    field.click()
    field.press("Control+a")
    field.press("Delete")
    field.press_sequentially(text)
    field.blur()


# --- 3 and 17: the form refuses what the server would ------------------------------------------


def test_text_in_a_number_field_is_refused_naming_the_field(page: Page, e2e_app: AppServer) -> None:
    open_form(page, e2e_app, "?model=sim-fast")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    fill_number(page, "#sf-output-tokens", "abc")
    assert page.evaluate("document.getElementById('sf-output-tokens').value") == ""  # what the browser would send
    expect(page.locator("#error-output_tokens")).to_have_text("Output tokens: enter a whole number")
    expect(page.locator("#sf-output-tokens")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#sf-estimate-requests")).to_have_text(NO_FIGURE)
    expect(page.locator("#sf-estimate-levels")).to_contain_text("Output tokens: enter a whole number")
    page.locator("#sf-submit").click()
    expect(page.locator("#form-errors")).to_contain_text("see the fields marked below")
    page.wait_for_timeout(500)
    assert posts == [], "a refused form went to the server"
    assert page.url.endswith("/stress-tests/new?model=sim-fast")
    screenshot(page, "stress-form-bad-number")

    fill_number(page, "#sf-output-tokens", "12")
    expect(page.locator("#error-output_tokens")).to_be_empty()
    expect(page.locator("#sf-output-tokens")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#sf-estimate-requests")).to_have_text("10")


@pytest.mark.parametrize(("selector", "text", "message"), [
    ("#sf-temperature", "3", "Temperature: must be at most 2"),
    ("#sf-temperature", "1e", "Temperature: enter a number"),
    ("#sf-concurrency", "1, 600", "Concurrency levels (level 2): at most 512 (stress.max_parallel)"),
    ("#sf-concurrency", "4, 4", "Concurrency levels: a level is repeated"),
    ("#sf-requests", "10, 20", "Requests per level: give one number, or one per concurrency level (1)"),
    ("#sf-output-tokens", "5000", "Output tokens: sim-fast answers at most 4096 tokens"),
])
def test_no_estimate_for_values_the_server_refuses(page: Page, e2e_app: AppServer, selector: str, text: str,
                                                   message: str) -> None:
    open_form(page, e2e_app, "?model=sim-fast")
    expect(page.locator("#sf-estimate-requests")).to_have_text("10")
    if page.locator(selector).get_attribute("type") == "number":
        fill_number(page, selector, text)
    else:
        page.locator(selector).fill(text)
        page.locator(selector).blur()
    expect(page.locator("#sf-estimate-requests")).to_have_text(NO_FIGURE)
    expect(page.locator("#sf-estimate-levels")).to_contain_text(message)
    slot = "#error-" + page.locator(selector).get_attribute("name")
    expect(page.locator(slot)).to_have_text(message)


def test_the_input_length_shows_only_for_random_prompts(page: Page, e2e_app: AppServer) -> None:
    open_form(page, e2e_app, "?from=playground&model=sim-fast&prompt=hi&system=Be%20brief.")
    expect(page.locator("#sf-input-tokens")).to_be_hidden()
    expect(page.locator("#sf-system")).to_have_value("Be brief.")
    page.locator("#sf-dataset").select_option("random")
    expect(page.locator("#sf-input-tokens")).to_be_visible()
    # The system prompt goes only with a fixed prompt, and the page says so rather than dropping it quietly.
    expect(page.locator("#sf-system")).to_be_hidden()
    expect(page.locator("#sf-dataset-note")).to_contain_text("The system prompt is sent only with a fixed prompt")
    page.locator("#sf-dataset").select_option("line_by_line")
    expect(page.locator("#sf-input-tokens")).to_be_hidden()


def test_a_prompt_file_can_be_uploaded_from_the_form(page: Page, e2e_app: AppServer, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first question\nsecond question\n", encoding="utf-8")
    open_form(page, e2e_app)
    page.locator("#sf-dataset").select_option("line_by_line")
    page.locator("#sf-upload-file").set_input_files(str(prompts))
    page.locator("#sf-upload").click()
    expect(page.locator("#sf-upload-status")).to_have_text("uploaded: 2 prompts")
    expect(page.locator("#sf-dataset-file option:checked")).to_contain_text("prompts.txt · 2 prompts")


# --- 9: the estimate counts start-up, pauses and warm-up ----------------------------------------


def js_round(x: float) -> int:
    """JavaScript's Math.round (halves go up; Python's round goes to the even neighbour)."""
    return math.floor(x + 0.5)


def test_the_estimate_counts_start_up_pauses_and_warm_up(page: Page, e2e_app: AppServer, rows: Flask) -> None:
    # The latest completed job (dated ahead, so that it stays the latest whatever else ran): sim-reasoning.
    ahead = datetime.now(UTC) + timedelta(days=365)
    ttft, tpot = 50.0, 20.0
    metrics = {"latency_s": {"avg": 1.3, "p50": 1.3, "p90": 1.3, "p99": 1.3},
               "ttft_ms": {"avg": ttft, "p50": ttft, "p90": ttft, "p99": ttft},
               "tpot_ms": {"avg": tpot, "p50": tpot, "p90": tpot, "p99": tpot},
               "itl_ms": {"avg": tpot, "p50": tpot, "p90": tpot, "p99": tpot}}
    # Its answers stopped by themselves at 32 tokens (add_level's mean) of a limit of 100.
    job = add_job(rows, model="sim-reasoning", params={"concurrency": [1], "requests": [5], "warmup": 0,
                                                       "output_tokens": 100},
                  created_at=ahead, started_at=ahead, finished_at=ahead + timedelta(seconds=14))
    try:
        add_level(rows, job, 0, 1, succeeded=5, failed=0, duration_s=6.5, metrics=metrics)
        overhead = 14 - 6.5  # one level: no pause, no warm-up
        open_form(page, e2e_app, "?model=sim-reasoning")
        page.locator("#sf-concurrency").fill("1, 4")
        page.locator("#sf-requests").fill("8, 16")
        fill_number(page, "#sf-output-tokens", "40")
        one = (ttft + tpot * (32 - 1)) / 1000  # answers of 32 tokens: the model's own length, under the limit of 40
        waves = math.ceil((8 + 1) / 1) + math.ceil((16 + 4) / 4)  # warm-up: one per concurrency slot
        seconds = overhead + PAUSE_S + waves * one
        expect(page.locator("#sf-estimate-levels")).to_have_text(
            "8 at concurrency 1 · 16 at concurrency 4 · plus 5 warm-up requests, not counted")
        text = page.locator("#sf-estimate-duration").text_content() or ""
        assert text.startswith(f"≈ {js_round(seconds)} s or more: {js_round(waves * one)} s of requests "
                               f"({one:.2f} s each at low load, from job {job}) for answers of about 32 tokens, as "
                               f"that job's stopped by themselves, {PAUSE_S} s of pauses between levels, "
                               f"{js_round(overhead)} s of start-up and reports (measured on job {job})."), text
        # Forced to 40 tokens, the answers are 40 long; without warm-up, fewer waves.
        page.locator("#sf-exact").check()
        one = (ttft + tpot * (40 - 1)) / 1000
        total = js_round(overhead + PAUSE_S + waves * one)
        expect(page.locator("#sf-estimate-duration")).to_contain_text(
            f"≈ {total} s or more: {js_round(waves * one)} s of requests ({one:.2f} s")
        page.locator("#sf-warmup").select_option("none")
        waves = math.ceil(8 / 1) + math.ceil(16 / 4)
        total = js_round(overhead + PAUSE_S + waves * one)
        expect(page.locator("#sf-estimate-duration")).to_contain_text(f"≈ {total} s or more")
    finally:
        delete_jobs(rows, job)


# --- 5: level chips say what failed -------------------------------------------------------------


def test_level_chips_say_how_many_requests_failed(page: Page, e2e_app: AppServer, rows: Flask) -> None:
    job = add_job(rows, status="failed", params={"concurrency": [1, 2, 4], "requests": [2, 4, 4]},
                  error="all requests failed", started_at=datetime.now(UTC) - timedelta(seconds=20),
                  finished_at=datetime.now(UTC))
    try:
        add_level(rows, job, 0, 1, succeeded=0, failed=2)
        add_level(rows, job, 1, 2, succeeded=3, failed=1)
        add_level(rows, job, 2, 4, succeeded=4, failed=0)
        page.goto(f"{e2e_app.url}/stress-tests/{job}")
        chips = {level: page.locator(f'#job-level-steps li[data-concurrency="{level}"]') for level in (1, 2, 4)}
        for level, outcome, text, colour in ((1, "bad", "0 ok · 2 failed of 2", RED),
                                             (2, "mixed", "3 ok · 1 failed of 4", AMBER),
                                             (4, "ok", "4 ok of 4", GREEN)):
            expect(chips[level]).to_have_attribute("data-outcome", outcome)
            expect(chips[level].locator(".level-step-counts")).to_have_text(text)
            fill = chips[level].locator(".progress > span")
            assert fill.evaluate("e => getComputedStyle(e).backgroundColor") == colour, level
        expect(page.locator('#levels-table tr[data-concurrency="1"]')).to_have_attribute("data-outcome", "bad")
        screenshot(page, "stress-job-failed-levels")
    finally:
        delete_jobs(rows, job)


# --- 7 and 8: a running job's duration and phase ------------------------------------------------


def test_a_running_jobs_duration_ticks_and_its_phase_is_named(page: Page, e2e_app: AppServer, rows: Flask) -> None:
    worker = f"ux-test-{os.getpid()}"
    add_fake_worker(rows, worker)  # the real worker leaves a job alone while its worker looks alive
    started = datetime.now(UTC) - timedelta(seconds=5)
    progress = {"percent": 0.0, "level": 0, "levels": 2, "concurrency": None, "processed": 0, "total": 7,
                "phase": "starting"}
    job = add_job(rows, status="running", params={"concurrency": [4, 8], "requests": [3, 4]}, worker_id=worker,
                  started_at=started, heartbeat_at=datetime.now(UTC) + timedelta(hours=1), progress=progress)
    try:
        page.goto(f"{e2e_app.url}/stress-tests/{job}")
        level = page.locator("#job-progress-level")
        expect(level).to_contain_text(re.compile(r"^Starting EvalScope \(\d+\.\d s\): connection test, loading"))

        def shown() -> float:
            return float((page.locator("#job-duration").text_content() or "").removesuffix(" s"))

        first = shown()
        assert 5 <= first < 30, first
        page.wait_for_timeout(2500)
        second = shown()
        assert 2 <= second - first <= 4, (first, second)  # counted in the page, about one step a second
        expect(page.locator("#job-summary")).to_contain_text("so far")

        update_job(rows, job, progress={**progress, "level": 1, "concurrency": 4, "phase": "warmup", "warmup": 4})
        expect(level).to_have_text("Level 1 of 2 · concurrency 4 · warm-up: 4 requests, not counted", timeout=5000)
        update_job(rows, job, progress={**progress, "level": 1, "concurrency": 4, "phase": "first"})
        expect(level).to_have_text("Level 1 of 2 · concurrency 4 · waiting for its first request to end")
        add_sample(rows, job, 4, ok=1, errors=2)
        update_job(rows, job, progress={**progress, "level": 1, "concurrency": 4, "phase": "running",
                                        "processed": 3, "percent": 42.86})
        expect(level).to_have_text("Level 1 of 2 · concurrency 4")
        chip = page.locator('#job-level-steps li[data-concurrency="4"]')
        expect(chip).to_have_attribute("data-outcome", "mixed")  # live: the latest sample's counts
        expect(chip.locator(".level-step-counts")).to_have_text("1 ok · 2 failed of 3")
        update_job(rows, job, progress={**progress, "level": 1, "concurrency": 4, "phase": "pause", "processed": 3})
        expect(level).to_have_text(f"Level 1 of 2 done · pause of {PAUSE_S} s before level 2")
        screenshot(page, "stress-job-phase")
    finally:
        update_job(rows, job, status="cancelled", finished_at=datetime.now(UTC))
        delete_jobs(rows, job)
        delete_worker(rows, worker)


# --- one real job: form, phases, the end, the log, run again, delete, 400 px -------------------


@pytest.mark.usefixtures("e2e_stress_worker")
def test_a_real_job_from_start_to_deletion(page: Page, e2e_app: AppServer, rows: Flask) -> None:
    # An earlier completed job of the model, so that this one has an estimate to be compared with.
    before = datetime.now(UTC) - timedelta(hours=2)
    earlier = add_job(rows, model="sim-fast", params={"concurrency": [1], "requests": [2]}, created_at=before,
                      started_at=before, finished_at=before + timedelta(seconds=6))
    add_level(rows, earlier, 0, 1, succeeded=2, failed=0, duration_s=1.0)
    try:
        open_form(page, e2e_app, "?model=sim-fast")
        page.locator("#sf-concurrency").fill("1, 2")
        page.locator("#sf-requests").fill("2")
        fill_number(page, "#sf-output-tokens", "10")
        page.locator("#sf-prompt").fill("Describe a lighthouse at night.")
        page.locator("#sf-system").fill("Answer in one line.")
        page.locator("#sf-submit").click()
        page.wait_for_url(JOB_URL, timeout=10_000)
        job_id = JOB_URL.search(page.url).group(1)
        page.evaluate("""() => {
            const el = document.getElementById('job-progress');
            window.__phases = [el.dataset.phase];
            new MutationObserver(() => {
                const phases = window.__phases;
                if (phases[phases.length - 1] !== el.dataset.phase) phases.push(el.dataset.phase);
            }).observe(el, {attributes: true, attributeFilter: ['data-phase']});
        }""")
        logs: list[float] = []
        page.on("request", lambda r: logs.append(time.monotonic()) if r.url.endswith(f"/{job_id}/log") else None)

        expect(page.locator("#job-summary .job-status")).to_have_text("completed", timeout=90_000)
        ended = time.monotonic()
        phases = page.evaluate("window.__phases")
        assert "starting" in phases and phases.index("starting") < phases.index("warmup"), phases
        # The log says it has stopped, at once, and stops.
        header = page.locator("#job-log .page-head")
        expect(header).not_to_contain_text("refreshing", timeout=1000)
        page.wait_for_timeout(4000)
        assert not [t for t in logs if t > ended + 1.0], "the log went on refreshing after the job ended"
        # Estimate against what it took; measured input tokens (system prompt included).
        expect(page.locator("#job-estimate")).to_contain_text(re.compile(r"≈ .* or more.*· took \d", re.S))
        expect(page.locator("#job-tokens")).to_contain_text("in (measured)")
        expect(page.locator("#job-system")).to_have_text("Answer in one line.")
        rows_ = page.locator("#levels-table tbody tr")
        expect(rows_).to_have_count(2)
        screenshot(page, "stress-ux-job-finished")

        # At 400 px each level is a card whose every figure is on screen.
        page.set_viewport_size({"width": 400, "height": 900})
        page.wait_for_timeout(400)
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        for cell in rows_.nth(1).locator("td").all():
            box = cell.bounding_box()
            assert box and box["width"] > 0 and box["x"] >= 0 and box["x"] + box["width"] <= 400, \
                (cell.get_attribute("data-label"), box)
            expect(cell).to_be_visible()
        screenshot(page, "stress-ux-job-finished-400")
        page.set_viewport_size({"width": 1400, "height": 900})

        # Run again: every setting back in the form.
        page.locator("#job-run-again").click()
        expect(page.locator(".flash-info").first).to_contain_text(f"Every setting copied from stress test {job_id}")
        for selector, value in (("#sf-target", "sim-fast"), ("#sf-concurrency", "1, 2"), ("#sf-requests", "2"),
                                ("#sf-output-tokens", "10"), ("#sf-prompt", "Describe a lighthouse at night."),
                                ("#sf-system", "Answer in one line."), ("#sf-warmup", "concurrency")):
            expect(page.locator(selector)).to_have_value(value)

        # The jobs list at 400 px: cards, nothing off screen.
        page.goto(f"{e2e_app.url}/stress-tests")
        page.set_viewport_size({"width": 400, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        for cell in page.locator(f'tr[data-job="{job_id}"] td').all():
            box = cell.bounding_box()
            assert box and box["x"] + box["width"] <= 400, (cell.get_attribute("data-label"), box)
        screenshot(page, "stress-ux-list-400")
        page.set_viewport_size({"width": 1400, "height": 900})

        # Delete says what went.
        page.goto(f"{e2e_app.url}/stress-tests/{job_id}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#job-delete").click()
        page.wait_for_url(re.compile(r"/stress-tests$"))
        expect(page.locator("#flash")).to_contain_text(
            f"Deleted stress test {job_id} (Simulator (fast), completed): 2 levels of results, its log and its "
            "output files.")
    finally:
        delete_jobs(rows, earlier)
