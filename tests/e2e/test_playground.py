"""The playground in a real browser: streaming columns, errors, Stop, media, sanitising, prefills."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from tests.e2e.conftest import screenshot
from tests.support.app_server import AppServer
from tests.support.playground import choose, open_playground
from tests.support.simulator import SimulatorProcess

pytestmark = pytest.mark.e2e


def column(page: Page, key: str) -> Locator:
    return page.locator(f'.pg-column[data-model="{key}"]')


def answer_lengths(page: Page) -> dict[str, int]:
    return page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('.pg-column'),
               (c) => [c.dataset.model, c.querySelector('.pg-answer').textContent.length]))""")


def statuses(page: Page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('.pg-column'),
               (c) => [c.dataset.model, c.dataset.status]))""")


def run_count(app: AppServer) -> int:
    return requests.get(f"{app.url}/api/v1/inference/runs", params={"limit": 1}, timeout=5).json()["total"]


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (37, 99, 235)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_three_columns_grow_token_by_token_and_end_with_metrics(page: Page, e2e_app: AppServer) -> None:
    models = ("sim-fast", "sim-reasoning", "sim-vision")
    open_playground(page, e2e_app)
    choose(page, *models)
    page.get_by_label("Prompt", exact=True).fill("Explain what a KV cache is, briefly.")
    page.get_by_role("button", name="Run").click()

    seen: dict[str, set[int]] = {key: set() for key in models}
    deadline = time.monotonic() + 20
    shot = False
    while time.monotonic() < deadline:
        lengths, status = answer_lengths(page), statuses(page)
        for key in models:
            if status.get(key) == "streaming" and lengths.get(key):
                seen[key].add(lengths[key])
        if not shot and all(len(seen[key]) >= 2 for key in models):
            screenshot(page, "playground-running")
            shot = True
        if status and all(value in ("done", "error", "stopped") for value in status.values()):
            break
        page.wait_for_timeout(40)
    assert statuses(page) == dict.fromkeys(models, "done")
    for key in models:
        assert len(seen[key]) >= 2, f"{key} was not seen growing: {sorted(seen[key])}"
        expect(column(page, key).locator('[data-metric="ttft"]')).to_contain_text("ms")
        expect(column(page, key).locator('[data-metric="tokens"]')).to_contain_text("out")
        expect(column(page, key).locator('[data-metric="tps"]')).to_contain_text("tok/s")
    expect(column(page, "sim-reasoning").locator(".pg-reasoning-text")).not_to_be_empty()
    expect(page.get_by_role("button", name="Run")).to_be_enabled()
    expect(page.locator("#pg-run-status")).to_contain_text("3 succeeded, 0 failed")
    screenshot(page, "playground-done")
    page.set_viewport_size({"width": 1024, "height": 800})
    screenshot(page, "playground-done-1024")


def wait_until_finished(page: Page, timeout_s: float = 20) -> dict[str, str]:
    page.wait_for_function(
        """() => { const columns = document.querySelectorAll('.pg-column');
                   return columns.length > 0 && !document.getElementById('pg-form').classList.contains('running'); }""",
        timeout=timeout_s * 1000)
    return statuses(page)


def test_a_failing_model_shows_its_error_in_its_column_while_the_others_finish(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-fast", "sim-error", "sim-echo")
    page.get_by_label("Prompt", exact=True).fill("Say something.")
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-fast": "done", "sim-error": "error", "sim-echo": "done"}
    error = column(page, "sim-error").locator(".pg-error-box")
    expect(error).to_be_visible()
    expect(error).to_contain_text("upstream")  # the error code, then the message
    expect(column(page, "sim-fast").locator(".pg-error-box")).to_be_hidden()
    expect(column(page, "sim-echo").locator(".pg-answer")).to_have_text("Say something.")
    expect(page.locator("#pg-run-status")).to_contain_text("2 succeeded, 1 failed")
    screenshot(page, "playground-model-error")


def test_stop_cancels_every_stream(page: Page, e2e_app: AppServer, e2e_simulator: SimulatorProcess) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-slow", "sim-hang")
    page.get_by_label("Prompt", exact=True).fill("Take your time.")
    run = page.get_by_role("button", name="Run")
    run.click()
    expect(column(page, "sim-slow")).to_have_attribute("data-status", "streaming", timeout=5000)
    expect(run).to_be_disabled()
    assert e2e_simulator.stats()["active_streams"] >= 1
    page.get_by_role("button", name="Stop").click()

    assert wait_until_finished(page, timeout_s=5) == {"sim-slow": "stopped", "sim-hang": "stopped"}
    expect(run).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.locator("#pg-run-status")).to_contain_text("Stopped")
    screenshot(page, "playground-stopped")
    # The server learns that the browser left on its next write (the next sim-slow token, within a second),
    # then cancels every upstream call, the hanging one too.
    deadline = time.monotonic() + 6
    while e2e_simulator.stats()["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert e2e_simulator.stats()["active_streams"] == 0


def test_images_reach_an_image_model_and_block_a_text_only_one(
        page: Page, e2e_app: AppServer, e2e_simulator: SimulatorProcess) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-vision", "sim-text-only")
    page.get_by_label("Prompt", exact=True).fill("What colour is this?")
    page.locator("#pg-images").set_input_files({"name": "blue.png", "mimeType": "image/png", "buffer": png_bytes()})
    # A second image by drag and drop onto the drop zone.
    transfer = page.evaluate_handle(
        """(bytes) => { const transfer = new DataTransfer();
                        transfer.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
                        return transfer; }""", list(png_bytes()))
    page.dispatch_event("#pg-drop", "drop", {"dataTransfer": transfer})
    expect(page.locator(".pg-preview")).to_have_count(2)
    expect(page.locator(".pg-preview").first).to_contain_text("blue.png")
    expect(page.locator(".pg-preview").first).to_contain_text(" B")

    text_only = page.locator('.pg-model[data-key="sim-text-only"]')
    expect(text_only.locator(".pg-model-flag")).to_have_text("cannot read images")
    expect(page.locator("#pg-compat")).to_have_text(
        "Simulator (text only) (sim-text-only) cannot read images: untick it, or remove the images.")
    run = page.get_by_role("button", name="Run")
    expect(run).to_be_disabled()
    screenshot(page, "playground-images-blocked")

    # Too large for an image: refused in the browser, with the reason.
    page.locator("#pg-images").set_input_files(
        {"name": "huge.png", "mimeType": "image/png", "buffer": b"\0" * (5 * 1024 * 1024 + 1)})
    expect(page.locator("#pg-media-error")).to_contain_text("huge.png is 5.0 MiB; an image may be at most 5.0 MiB")
    expect(page.locator(".pg-preview")).to_have_count(2)

    text_only.locator("input").uncheck()
    expect(page.locator("#pg-compat")).to_be_hidden()
    since = time.time()
    run.click()
    assert wait_until_finished(page) == {"sim-vision": "done"}
    received = [r for r in e2e_simulator.requests(since=since) if r["model"] == "sim-vision"]
    assert len(received) == 1 and received[0]["images"] == ["image/png", "image/png"]

    page.get_by_role("button", name="Remove blue.png").click()
    page.get_by_role("button", name="Remove dropped.png").click()
    expect(page.locator(".pg-preview")).to_have_count(0)
    expect(text_only.locator(".pg-model-flag")).to_be_hidden()


def test_model_html_is_shown_as_text_and_never_runs(page: Page, e2e_app: AppServer) -> None:
    prompt = ('Look: <script>window.__xss=1</script> and <img src=x onerror="window.__xss=2"> '
              "and `code` **bold**\n\n<script>window.__xss=3</script>\n\n```\n<b>kept</b>\n```")
    open_playground(page, e2e_app)
    choose(page, "sim-echo")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-echo": "done"}
    answer = column(page, "sim-echo").locator(".pg-answer")
    expect(answer).to_contain_text("<script>window.__xss=1</script>")
    expect(answer).to_contain_text('<img src=x onerror="window.__xss=2">')
    expect(answer).to_contain_text("<script>window.__xss=3</script>")
    expect(answer.locator("pre code")).to_have_text("<b>kept</b>\n")  # code blocks are kept, as text
    expect(answer.locator("strong")).to_have_text("bold")  # and Markdown is still Markdown
    expect(answer.locator("script, img")).to_have_count(0)
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.__xss") is None
    screenshot(page, "playground-sanitised")

    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=e2e_app.url)
    column(page, "sim-echo").get_by_role("button", name="Copy answer").click()
    expect(column(page, "sim-echo").locator(".pg-copy-note")).to_have_text("copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == prompt  # the raw text, not the HTML


def test_selections_survive_a_reload_but_the_api_key_does_not(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-fast", "sim-echo")
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_label("Max tokens").fill("77")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_text("Manual endpoint").click()
    page.get_by_label("Base URL").fill("http://127.0.0.1:9/v1")
    page.get_by_label("Model name").fill("my-model")
    page.get_by_label("API key").fill("sk-secret-123")
    page.get_by_label("Prompt", exact=True).fill("not remembered")
    page.reload()

    checked = page.eval_on_selector_all('input[name="models"]:checked', "(boxes) => boxes.map((b) => b.value)")
    assert sorted(checked) == ["sim-echo", "sim-fast"]
    expect(page.get_by_label("System prompt")).to_have_value("Be brief.")
    expect(page.get_by_label("Max tokens")).to_have_value("77")
    expect(page.get_by_label("Temperature")).to_have_value("0.3")
    expect(page.get_by_label("Base URL")).to_have_value("http://127.0.0.1:9/v1")
    expect(page.get_by_label("Model name")).to_have_value("my-model")
    expect(page.get_by_label("API key")).to_have_value("")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("")
    stored = page.evaluate("() => JSON.stringify(localStorage)")
    assert "sk-secret-123" not in stored and "not remembered" not in stored


def test_run_again_and_links_prefill_the_form(page: Page, e2e_app: AppServer) -> None:
    body = {"models": ["sim-fast", "sim-echo"], "text": "Prefill me", "system": "You are terse.",
            "max_tokens": 42, "temperature": 0.7}
    with requests.post(f"{e2e_app.url}/api/v1/multi-inference", json=body, stream=True, timeout=30) as response:
        lines = list(response.iter_lines(decode_unicode=True))
    run_id = next(line for line in lines if line.startswith("data:") and '"run_id"' in line).split('"run_id":"')[1][:32]

    open_playground(page, e2e_app, f"?run={run_id}")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("Prefill me")
    expect(page.get_by_label("System prompt")).to_have_value("You are terse.")
    expect(page.get_by_label("Max tokens")).to_have_value("42")
    expect(page.get_by_label("Temperature")).to_have_value("0.7")
    checked = page.eval_on_selector_all('input[name="models"]:checked', "(boxes) => boxes.map((b) => b.value)")
    assert sorted(checked) == ["sim-echo", "sim-fast"]
    expect(page.locator("#pg-notice")).to_contain_text(f"Prefilled from run {run_id}")

    open_playground(page, e2e_app, "?model=sim-vision&prompt=Hello%20there")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("Hello there")
    checked = page.eval_on_selector_all('input[name="models"]:checked', "(boxes) => boxes.map((b) => b.value)")
    assert checked == ["sim-vision"]


def test_a_double_click_starts_one_run_and_api_errors_show_in_the_page(page: Page, e2e_app: AppServer) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-echo")
    page.get_by_label("Prompt", exact=True).fill("Only once, please.")
    before = run_count(e2e_app)
    page.get_by_role("button", name="Run").dblclick()
    assert wait_until_finished(page) == {"sim-echo": "done"}
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    assert wait_until_finished(page) == {"sim-echo": "done"}
    assert run_count(e2e_app) == before + 2

    page.get_by_label("Max tokens").fill("999999")
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    expect(page.locator("#pg-error")).to_have_text("max_tokens: at most 32768")
    expect(page.get_by_role("button", name="Run")).to_be_enabled()
    assert run_count(e2e_app) == before + 2
    screenshot(page, "playground-api-error")


def test_a_manual_endpoint_runs_beside_catalogue_models(
        page: Page, e2e_app: AppServer, e2e_simulator: SimulatorProcess) -> None:
    open_playground(page, e2e_app)
    choose(page, "sim-fast")
    page.get_by_text("Manual endpoint").click()
    page.get_by_label("Base URL").fill(e2e_simulator.base_url)
    page.get_by_label("Model name").fill("sim-echo")
    page.get_by_label("API key").fill("sk-not-needed")
    page.get_by_label("Prompt", exact=True).fill("Hello from a manual endpoint")
    page.get_by_role("button", name="Run").click()
    assert wait_until_finished(page) == {"sim-fast": "done", "manual:sim-echo": "done"}
    expect(column(page, "manual:sim-echo").locator(".pg-answer")).to_have_text("Hello from a manual endpoint")
    assert "sk-not-needed" not in page.url
