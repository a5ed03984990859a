"""The playground as a new operator meets it (issue 9): what it carries to a stress test, what it restores,
the model picker, the summary after a run, files it cannot send, and a stopped run in History."""

from __future__ import annotations

import base64
import struct
import zlib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml
from playwright.sync_api import Page, expect

from tests.conftest import TEST_MODELS
from tests.e2e.conftest import screenshot
from tests.support.app_server import AppServer
from tests.support.playground import (
    checked_models,
    choose,
    column,
    open_playground,
    png_bytes,
    run_id_of_last_run,
    stored_run,
    wait_until_finished,
)
from tests.support.simulator import SimulatorProcess

pytestmark = pytest.mark.e2e

NAMES = {key: entry["name"] for key, entry in yaml.safe_load(Path(TEST_MODELS).read_text())["models"].items()}


def query_of(href: str | None) -> dict[str, list[str]]:
    assert href, "the link has no href"
    parts = urlsplit(href)
    assert parts.path == "/stress-tests/new", href
    return parse_qs(parts.query, keep_blank_values=True)


# --- item 2: "Stress-test this prompt" carries what the operator typed ------------------------------


def test_stress_link_carries_the_prompt_and_every_setting(
        page: Page, e2e_app: AppServer, e2e_simulator: SimulatorProcess) -> None:
    prompt = "Stress me: 100% & ünïcode? #1 = ok\nsecond line"
    open_playground(page, e2e_app)
    choose(page, "sim-fast")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("System prompt").fill("Be terse & exact.")
    page.get_by_label("Max tokens").fill("128")
    page.get_by_label("Temperature").fill("0.7")
    page.get_by_text("Manual endpoint").click()
    page.get_by_label("Base URL").fill(e2e_simulator.base_url)
    page.get_by_label("Model name").fill("sim-echo")
    page.get_by_label("API key").fill("sk-never-in-a-link")
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-fast": "done", "manual:sim-echo": "done"}

    settings = {"prompt": [prompt], "system": ["Be terse & exact."], "max_tokens": ["128"], "temperature": ["0.7"]}
    catalogue_link = column(page, "sim-fast").get_by_role("link", name="Stress-test this prompt")
    assert query_of(catalogue_link.get_attribute("href")) == {"from": ["playground"], "model": ["sim-fast"],
                                                              **settings}
    manual_link = column(page, "manual:sim-echo").get_by_role("link", name="Stress-test this prompt")
    manual_href = manual_link.get_attribute("href")
    assert query_of(manual_href) == {"from": ["playground"], "manual_url": [e2e_simulator.base_url],
                                     "manual_model": ["sim-echo"], **settings}
    assert "sk-never-in-a-link" not in (manual_href or "")

    # What the run was sent, not what the form says afterwards; and unset settings stay out of the link.
    page.get_by_label("Temperature").fill("1.5")
    assert query_of(catalogue_link.get_attribute("href"))["temperature"] == ["0.7"]
    page.get_by_role("button", name="Clear").click()
    page.get_by_label("System prompt").fill("")
    page.get_by_label("Max tokens").fill("")
    page.get_by_label("Temperature").fill("")
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-fast": "done"}
    href = column(page, "sim-fast").get_by_role("link", name="Stress-test this prompt").get_attribute("href")
    assert query_of(href) == {"from": ["playground"], "model": ["sim-fast"], "prompt": [prompt]}


# --- item 6: remembered settings are shown, with Clear and Reset --------------------------------------


def test_restored_settings_are_listed_and_can_be_cleared_or_reset(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    expect(page.locator("#pg-restored")).to_be_hidden()  # a first visit restores nothing
    choose(page, "sim-fast", "sim-echo")
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_label("Max tokens").fill("77")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_text("Manual endpoint").click()
    page.get_by_label("Base URL").fill("http://127.0.0.1:9/v1")
    page.get_by_label("Model name").fill("old-model")
    page.reload()

    notice = page.locator("#pg-restored")
    expect(notice).to_be_visible()
    items = dict(notice.locator("li").evaluate_all("items => items.map(i => [i.dataset.field, i.textContent])"))
    assert set(items) == {"models", "system", "max_tokens", "temperature", "manual"}
    assert NAMES["sim-fast"] in items["models"] and NAMES["sim-echo"] in items["models"]
    assert "Be brief." in items["system"] and "77" in items["max_tokens"] and "0.3" in items["temperature"]
    assert "old-model at http://127.0.0.1:9/v1" in items["manual"]
    # The manual endpoint says it will run, even folded, and is listed with the selection.
    expect(page.locator("#pg-manual-state")).to_contain_text("old-model at http://127.0.0.1:9/v1")
    expect(page.locator("#pg-selected-list")).to_contain_text("manual: old-model")
    screenshot(page, "playground-restored")

    page.locator("#pg-manual").get_by_role("button", name="Clear").click()
    expect(page.get_by_label("Base URL")).to_have_value("")
    expect(page.get_by_label("Model name")).to_have_value("")
    expect(notice.locator('li[data-field="manual"]')).to_have_count(0)
    expect(page.locator("#pg-selected-list")).not_to_contain_text("manual:")
    page.get_by_label("Prompt", exact=True).fill("Only the catalogue models, please.")
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-fast": "done", "sim-echo": "done"}  # no manual column

    page.reload()
    expect(page.get_by_label("Base URL")).to_have_value("")  # the clearing was remembered
    expect(page.locator('#pg-restored li[data-field="manual"]')).to_have_count(0)
    expect(page.locator('#pg-restored li[data-field="models"]')).to_be_visible()

    default_max_tokens = page.locator("#pg-max-tokens").get_attribute("value")  # the page's own default
    page.get_by_role("button", name="Reset form").click()
    assert checked_models(page) == []
    expect(page.get_by_label("System prompt")).to_have_value("")
    expect(page.get_by_label("Max tokens")).to_have_value(default_max_tokens or "")
    expect(page.get_by_label("Temperature")).to_have_value("")
    expect(notice).to_be_hidden()
    page.reload()
    expect(page.locator("#pg-restored")).to_be_hidden()
    assert checked_models(page) == []
    expect(page.get_by_label("Temperature")).to_have_value("")


# --- item 13: the model picker ------------------------------------------------------------------------


def visible_model_keys(page: Page) -> list[str]:
    return page.locator(".pg-model").evaluate_all(
        "items => items.filter(i => i.offsetParent !== null).map(i => i.dataset.key)")


def test_picker_puts_available_models_first_and_says_each_reason_once(page: Page, e2e_app: AppServer) -> None:
    catalogue = requests.get(f"{e2e_app.url}/api/v1/models", timeout=10).json()["models"]
    available = {m["key"] for m in catalogue if m["available"]}
    unavailable = {m["key"] for m in catalogue if not m["available"]}
    reasons = {m["reason"] for m in catalogue if not m["available"]}
    assert unavailable and len(reasons) == 1, "the browser tests run with no AWS credentials"

    open_playground(page, e2e_app)
    order = page.locator(".pg-model").evaluate_all("items => items.map(i => i.dataset.key)")
    assert set(order) == available | unavailable
    assert max(order.index(k) for k in available) < min(order.index(k) for k in unavailable)

    picker = page.locator("#pg-models")
    banners = picker.locator(".pg-group-reason")
    expect(banners).to_have_count(1)
    expect(banners).to_have_text("No AWS credentials: Bedrock models are unavailable (set AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY, or a profile); the sim-* models work without a cloud account.")
    assert picker.inner_text().lower().count("no aws credentials") == 1  # not once per row
    assert {m["provider"] for m in catalogue if not m["available"]} == {"bedrock"}

    # Search: name, key, provider and capabilities, every word.
    page.get_by_label("Search models").fill("reasoning")
    expected = {m["key"] for m in catalogue
                if "reasoning" in " ".join([m["name"], m["key"], m["provider"], m["model_id"] or "",
                                            *m["capabilities"]]).lower()}
    expect(picker.locator(".pg-model:visible")).to_have_count(len(expected))
    assert set(visible_model_keys(page)) == expected
    page.locator('.pg-model[data-key="sim-reasoning"] input').check()
    page.get_by_label("Search models").fill("echo sim")
    assert visible_model_keys(page) == ["sim-echo"]
    # The selection stays in view, whatever the search hides.
    selected = page.locator("#pg-selected-list")
    expect(selected.locator('[data-key="sim-reasoning"]')).to_have_text(f"{NAMES['sim-reasoning']}✕")
    page.get_by_label("Search models").fill("no such model")
    expect(page.locator("#pg-model-nomatch")).to_have_text("No model matches “no such model”.")
    page.get_by_label("Search models").fill("")

    # "available only" hides the unavailable models and their banner, never the selection.
    page.locator('.pg-model[data-key="claude35"] input').check()
    page.get_by_label("available only").check()
    assert set(visible_model_keys(page)) == available
    expect(banners).to_be_hidden()
    expect(selected.locator('[data-key="claude35"]')).to_be_visible()
    assert sorted(checked_models(page)) == ["claude35", "sim-reasoning"]
    page.set_viewport_size({"width": 400, "height": 800})
    screenshot(page, "playground-picker-400")
    page.set_viewport_size({"width": 1400, "height": 900})

    selected.get_by_role("button", name=f"Untick {NAMES['claude35']}").click()
    assert checked_models(page) == ["sim-reasoning"]
    expect(page.locator("#pg-model-count")).to_have_text("1 selected")


# --- item 15: a profile that fails by design is not called "available" --------------------------------


def test_profiles_that_fail_by_design_say_what_they_do(page: Page, e2e_app: AppServer) -> None:
    catalogue = requests.get(f"{e2e_app.url}/api/v1/models", timeout=10).json()["models"]
    behaviour = {m["key"]: m["behavior"] for m in catalogue}
    assert behaviour["sim-error"] == "always fails" and behaviour["sim-hang"] == "never answers"
    open_playground(page, e2e_app)
    for key, label in (("sim-error", "always fails"), ("sim-hang", "never answers"), ("sim-fast", "available")):
        expect(page.locator(f'.pg-model[data-key="{key}"] .availability-badge')).to_have_text(label)
    page.goto(f"{e2e_app.url}/models?provider=simulator")
    for key, label in (("sim-error", "always fails"), ("sim-hang", "never answers"), ("sim-fast", "available")):
        expect(page.locator(f'#models-table tr[data-key="{key}"] .availability-badge')).to_have_text(label)
    expect(page.locator('#models-table tr[data-key="sim-error"] .availability')).to_contain_text("HTTP 500")


# --- item 14: the summary under the columns -----------------------------------------------------------


def js_fixed(value: float, digits: int) -> str:
    """Number.prototype.toFixed: the exact binary value, halves rounded up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def js_ms(ms: float) -> str:
    return f"{js_fixed(ms, 0)} ms" if ms < 1000 else f"{js_fixed(ms / 1000, 2)} s"


def expected_summary(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the summary should say of each stored result, with the best figures marked."""
    done = [r for r in run["results"] if r["status"] == "completed"]
    best: dict[str, float] = {}
    for name, field, pick in (("ttft", "ttft_ms", min), ("tps", "tokens_per_s", max), ("total", "latency_ms", min)):
        values = [r["metrics"][field] for r in done if r["metrics"][field] is not None]
        if len(values) >= 2:
            best[name] = pick(values)
    summary: dict[str, dict[str, Any]] = {}
    for r in run["results"]:
        m = r["metrics"]
        if r["status"] != "completed":
            summary[r["model"]] = {"note": f"failed ({r['error']['code']}): no figures"}
            continue
        approx = "≈" if m["token_source"] == "chunks" else ""
        cells = {"ttft": (m["ttft_ms"], js_ms), "tps": (m["tokens_per_s"], lambda v: js_fixed(v, 1)),
                 "output": (m["output_tokens"], lambda v, approx=approx: f"{approx}{v:,}"),
                 "total": (m["latency_ms"], js_ms)}
        summary[r["model"]] = {name: ("—" if value is None else fmt(value),
                                      value is not None and best.get(name) == value)
                               for name, (value, fmt) in cells.items()}
    return summary


def shown_summary(page: Page) -> dict[str, dict[str, Any]]:
    rows = page.locator("#pg-summary tbody tr").evaluate_all("""rows => rows.map(row => [row.dataset.model,
        Array.from(row.querySelectorAll('td')).map(td => [td.dataset.metric || 'note',
            td.textContent.replace(' ★', '').trim(), td.dataset.best === 'true'])])""")
    return {model: {name: (text if name == "note" else (text, best)) for name, text, best in cells}
            for model, cells in rows}


def test_summary_under_the_columns_marks_the_best_and_never_invents_figures(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    expect(page.locator("#pg-summary")).to_be_hidden()
    choose(page, "sim-fast", "sim-reasoning", "sim-echo", "sim-error")
    page.get_by_label("Prompt", exact=True).fill("Compare yourselves.")
    page.get_by_role("button", name="Run").click()
    wait_until_finished(page)
    expect(page.locator("#pg-summary")).to_be_visible()
    run = stored_run(e2e_app, run_id_of_last_run(page))
    expected = expected_summary(run)
    assert expected["sim-error"] == {"note": "failed (upstream): no figures"}
    assert shown_summary(page) == expected
    marked = page.locator("#pg-summary td.best")
    assert marked.count() >= 3  # one best TTFT, tokens/s and total time at least
    screenshot(page, "playground-summary")

    # One output token: no decode time, so no tokens/s; "—", never 0.
    page.get_by_label("Max tokens").fill("1")
    choose(page, "sim-fast", "sim-echo")
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-fast": "done", "sim-echo": "done"}
    run = stored_run(e2e_app, run_id_of_last_run(page))
    assert all(r["metrics"]["tokens_per_s"] is None for r in run["results"])
    shown = shown_summary(page)
    assert shown == expected_summary(run)
    assert {shown[key]["tps"] for key in shown} == {("—", False)}
    assert "0.0" not in page.locator("#pg-summary tbody").inner_text()


# --- item 16: files the playground cannot send are refused by name --------------------------------------


def png_with_damaged_text_chunk() -> bytes:
    """A PNG whose comment chunk has a wrong checksum: Chromium shows it, the server's PIL refuses it."""
    good = png_bytes((220, 38, 38))
    end = good.index(b"IEND") - 4
    text = b"Comment\x00damaged"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text) ^ 1)
    return good[:end] + chunk + good[end:]


def test_images_that_cannot_be_sent_are_refused_by_file_name(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-vision")
    page.locator("#pg-images").set_input_files([
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"these are my notes, not a picture"},
        {"name": "cut-off.png", "mimeType": "image/png", "buffer": png_bytes()[:40]},
        {"name": "blue.png", "mimeType": "image/png", "buffer": png_bytes()},
    ])
    error = page.locator("#pg-media-error")
    expect(error).to_contain_text("notes.png: not a PNG, JPEG, GIF or WebP image inside")
    expect(error).to_contain_text("cut-off.png: not a readable image; the browser could not decode it")
    previews = page.locator(".pg-preview")
    expect(previews).to_have_count(1)
    expect(previews).to_contain_text("blue.png")
    screenshot(page, "playground-images-refused")

    # One the browser can show but the server refuses: the server's message names the file, not images[1].
    damaged = png_with_damaged_text_chunk()
    page.locator("#pg-images").set_input_files({"name": "damaged.png", "mimeType": "image/png", "buffer": damaged})
    expect(previews).to_have_count(2)
    refusal = requests.post(f"{e2e_app.url}/api/v1/multi-inference", timeout=10, json={
        "models": ["sim-vision"], "text": "x",
        "images": [base64.b64encode(png_bytes()).decode(), base64.b64encode(damaged).decode()]})
    assert refusal.status_code == 400 and refusal.json()["error"]["details"]["field"] == "images[1]"
    message = refusal.json()["error"]["message"]
    assert message.startswith("images[1] ")
    page.get_by_label("Prompt", exact=True).fill("What colours are these?")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#pg-error")).to_have_text(message.replace("images[1]", "damaged.png (image 2)", 1))


# --- item 18: a stopped model is "stopped" in the playground, History and the run page ---------------


def test_a_stopped_model_is_stopped_everywhere_and_not_a_failure(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-echo", "sim-slow")
    page.get_by_label("Prompt", exact=True).fill("Stop me halfway.")
    page.get_by_role("button", name="Run").click()
    expect(column(page, "sim-echo")).to_have_attribute("data-status", "done", timeout=10_000)
    expect(column(page, "sim-slow")).to_have_attribute("data-status", "streaming", timeout=10_000)
    page.get_by_role("button", name="Stop").click()
    assert wait_until_finished(page, timeout_s=5) == {"sim-echo": "done", "sim-slow": "stopped"}
    expect(column(page, "sim-slow").locator(".pg-status")).to_have_text("stopped")
    expect(column(page, "sim-echo").locator(".pg-status")).to_have_text("completed")
    expect(page.locator("#pg-run-status")).to_contain_text("Stopped: 1 finished, 1 stopped.")
    expect(page.locator('#pg-summary tr[data-model="sim-slow"]')).to_contain_text("stopped before it finished")

    run_id = run_id_of_last_run(page)
    stored = {r["model"]: r for r in stored_run(e2e_app, run_id)["results"]}
    assert stored["sim-slow"]["status"] == "cancelled" and stored["sim-echo"]["status"] == "completed"

    page.goto(f"{e2e_app.url}/history")
    row = page.locator(f"#runs tr[data-run-id='{run_id}']")
    expect(row.locator(".outcome")).to_have_text("1 ok · 1 stopped")
    expect(row.locator(".badge[data-status='stopped']")).to_have_text("sim-slow")
    expect(row.locator(".badge.bad")).to_have_count(0)
    screenshot(page, "history-stopped")

    page.goto(f"{e2e_app.url}/history/{run_id}")
    expect(page.locator(".run-outcome")).to_have_text("1 ok · 1 stopped")
    slow = page.locator(".output-column[data-model='sim-slow']")
    expect(slow.locator(".status")).to_have_text("stopped")
    expect(slow.locator(".output-stopped")).to_contain_text("Stopped before it finished")
    expect(slow.locator(".output-error")).to_have_count(0)
    assert "cancel" not in page.locator(".outputs").inner_text().lower()
    screenshot(page, "run-stopped")
