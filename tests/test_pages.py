"""In-process checks of the HTML pages: fragment versus page, filters, checks, history and runs."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from flask import Flask
from moto import mock_aws

from backend.app import create_app
from backend.catalog.checks import check_model
from backend.catalog.registry import ModelSpec
from backend.catalog.service import get_catalog
from backend.db import db
from backend.inference.models import InferenceResult, InferenceRun
from tests.support.emd_stacks import ECS_TEMPLATE, create_emd_stack

HTMX = {"HX-Request": "true"}


def _store_run(app: Flask, run_id: str, prompt: str, results: list[tuple[str, str, str]]) -> None:
    with app.app_context():
        run = InferenceRun(id=run_id, prompt=prompt, system="be brief", params={"max_tokens": 64, "temperature": 0.2},
                           models=[model for model, _, _ in results], status="completed")
        for position, (model, status, output) in enumerate(results):
            run.results.append(InferenceResult(
                position=position, model=model, display_name=model, provider="simulator", status=status,
                output=output, ttft_ms=12.5, latency_ms=80.0, input_tokens=5, output_tokens=7, tokens_per_s=90.0,
                token_source="server", finish_reason="stop" if status == "completed" else None,
                error_code=None if status == "completed" else "upstream",
                error_message=None if status == "completed" else "HTTP 500: injected failure"))
        db.session.add(run)
        db.session.commit()


def test_models_page_full_and_fragment(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/models")
    assert page.status_code == 200
    assert "<html" in page.text and 'id="models-table"' in page.text
    assert "HX-Request" in page.headers.get("Vary", "")

    fragment = client.get("/models?provider=simulator", headers=HTMX)
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and fragment.text.lstrip().startswith(("{#", "<div id=\"models-table\""))
    assert "HX-Request" in fragment.headers.get("Vary", "")
    assert 'data-key="sim-fast"' in fragment.text and 'data-key="claude35"' not in fragment.text

    # A history restore (back button after the cache is gone) needs the whole page.
    restore = client.get("/models", headers={**HTMX, "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text


def test_models_page_says_why_a_model_is_unavailable(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/models?capability=images")
    assert 'data-key="claude35"' in page.text and 'data-key="sim-fast"' not in page.text
    assert "no AWS credentials" in page.text


def test_models_page_shows_emd_deployments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDFORMATION", raising=False)
    models = tmp_path / "models.yaml"
    models.write_text("models:\n"
                      "  qwen3-8b: {name: Qwen3 8B, provider: emd, model_id: Qwen3-8B, tag: dev}\n"
                      "  llama-gone: {name: Llama gone, provider: emd, model_id: Llama-3.1-8B, tag: prod}\n")
    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        create_emd_stack(cfn, ECS_TEMPLATE, "Qwen3-8B", "dev", InstanceType="g5.2xlarge",
                         EngineType="vllm", ServiceType="ecs", DNSName="emd-router.example.com")
        app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                          "catalog": {"models_file": str(models)}})
        page = app.test_client().get("/models?provider=emd", headers=HTMX).text
    qwen = page[page.index('data-key="qwen3-8b"'):page.index('data-key="llama-gone"')]
    assert "CREATE_COMPLETE" in qwen and "g5.2xlarge" in qwen and "vllm" in qwen and "badge ok" in qwen
    gone = page[page.index('data-key="llama-gone"'):]
    assert "unavailable" in gone and "not deployed" in gone


@pytest.mark.parametrize("query", ["provider=azure", "capability=audio", "provider=<b>x</b>"])
def test_bad_model_filters_are_a_friendly_message(client, query: str) -> None:  # type: ignore[no-untyped-def]
    for headers in ({}, HTMX):
        response = client.get(f"/models?{query}", headers=headers)
        assert response.status_code == 400
        assert "choose one of" in response.text
        assert "Traceback" not in response.text and "<b>x</b>" not in response.text


def test_check_endpoint(client) -> None:  # type: ignore[no-untyped-def]
    ok = client.post("/models/sim-fast/check", headers=HTMX)
    assert ok.status_code == 200 and " ms" in ok.text and "<html" not in ok.text
    failing = client.post("/models/sim-error/check", headers=HTMX)
    assert failing.status_code == 200 and "badge bad" in failing.text
    unknown = client.post("/models/gpt-17/check", headers=HTMX)
    assert unknown.status_code == 404 and "gpt-17" in unknown.text and "Traceback" not in unknown.text


def test_check_model_results(app: Flask) -> None:
    with app.app_context():
        catalog = get_catalog()
        ok = check_model(catalog, catalog.get("sim-fast"), timeout_s=10)  # type: ignore[arg-type]
        assert ok.ok and ok.latency_ms is not None and ok.latency_ms > 0 and ok.code is None
        erroring = check_model(catalog, catalog.get("sim-error"), timeout_s=10)  # type: ignore[arg-type]
        assert not erroring.ok and erroring.code and erroring.message and erroring.latency_ms is None
        no_credentials = check_model(catalog, catalog.get("claude35"), timeout_s=10)  # type: ignore[arg-type]
        assert not no_credentials.ok and no_credentials.code == "auth"
        # A model nobody serves: the connection is refused, and that is an answer too.
        nowhere = ModelSpec(key="nowhere", name="Nowhere", provider="openai", model_id="x",
                            base_url="http://127.0.0.1:9/v1")
        unreachable = check_model(catalog, nowhere, timeout_s=5)
        assert not unreachable.ok and unreachable.code == "upstream"
        hanging = check_model(catalog, catalog.get("sim-hang"), timeout_s=1)  # type: ignore[arg-type]
        assert not hanging.ok and hanging.code == "timeout"
        # A check is not a run.
        assert db.session.scalar(db.select(db.func.count()).select_from(InferenceRun)) == 0


def test_history_lists_filters_and_pages(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    assert "No runs yet" in client.get("/history").text
    _store_run(app, "a" * 32, "apples and pears", [("sim-fast", "completed", "fine")])
    _store_run(app, "b" * 32, "bananas 100%", [("sim-echo", "completed", "ok"), ("sim-error", "failed", "")])
    page = client.get("/history")
    assert page.status_code == 200 and "<html" in page.text
    assert page.text.index("bananas") < page.text.index("apples")  # newest first
    assert '<option value="sim-echo"' in page.text

    by_model = client.get("/history?model=sim-error", headers=HTMX)
    assert "<html" not in by_model.text and "bananas" in by_model.text and "apples" not in by_model.text
    assert "HX-Request" in by_model.headers.get("Vary", "")
    by_text = client.get("/history?q=APPLES", headers=HTMX)
    assert "apples" in by_text.text and "bananas" not in by_text.text
    percent = client.get("/history?q=0%25", headers=HTMX)  # % is a literal, not a LIKE wildcard
    assert "bananas" in percent.text and "apples" not in percent.text
    assert "No run matches" in client.get("/history?q=cherries", headers=HTMX).text

    first = client.get("/history?limit=1")
    assert "bananas" in first.text and "apples" not in first.text and "older" in first.text
    second = client.get("/history?limit=1&offset=1", headers=HTMX)
    assert "apples" in second.text and "newer" in second.text and "older" not in second.text
    for query, field in (("limit=x", "limit"), ("offset=-5", "offset"), ("offset=99999999999999999999999", "offset"),
                         ("limit=201", "limit")):
        refused = client.get(f"/history?{query}")
        assert refused.status_code == 400 and "<html" in refused.text, query
        assert f"{field}: must be" in refused.text, query


def test_run_page(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    run_id = "c" * 32
    _store_run(app, run_id, "say <b>hi</b>", [("sim-echo", "completed", "<script>alert(1)</script>"),
                                              ("sim-error", "failed", "")])
    page = client.get(f"/history/{run_id}")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert(1)" not in page.text
    assert "say &lt;b&gt;hi&lt;/b&gt;" in page.text
    assert "HTTP 500: injected failure" in page.text and "be brief" in page.text
    assert f"/playground?run={run_id}" in page.text

    missing = client.get("/history/nope")
    assert missing.status_code == 404 and "<html" in missing.text and "There is no run nope" in missing.text


def test_home_lists_runs_like_history(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    _store_run(app, "d" * 32, "hello home", [("sim-fast", "completed", "hi")])
    page = client.get("/")
    assert "hello home" in page.text and f"/history/{'d' * 32}" in page.text and "runs-table" in page.text


# --- Home page and icon (issue 9, items 19 and 21) --------------------------------------------------


def _home_stress_job(client, levels: list[int]) -> str:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": levels,
                                                         "requests": [2] * len(levels), "dataset": "prompt",
                                                         "prompt": "hi", "output_tokens": 8})
    assert response.status_code == 201, response.json
    return response.json["id"]


def _panel(page: str, panel_id: str) -> str:
    """The HTML of the home page's panel ``panel_id``, up to the next panel."""
    start = page.index(f'id="{panel_id}"')
    end = page.find('class="panel', start)
    return page[start:end if end != -1 else None]


def test_home_says_what_each_job_is_for(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/").text
    for panel_id, heading, link in (("home-compare", "Compare models", 'href="/playground"'),
                                    ("home-stress", "Stress tests", 'href="/stress-tests/new"'),
                                    ("home-results", "Results", 'href="/results"')):
        panel = _panel(page, panel_id)
        assert f"<h2>{heading}</h2>" in panel and link in panel, panel_id
        purposes = panel.split('<p class="home-purpose">')[1:]
        assert len(purposes) == 1, panel_id
        sentence = purposes[0].split("</p>", 1)[0].strip()
        assert sentence.endswith(".") and sentence.count(". ") == 0 and len(sentence.split()) >= 8, sentence


def test_home_first_run_hint_starts_with_the_simulator(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/").text
    hint = _panel(page, "first-run")
    # The test catalogue's simulator models, the usual three first (tests/data/models.yaml).
    assert 'href="/playground?model=sim-fast,sim-reasoning,sim-vision"' in hint
    assert 'href="/stress-tests/new?model=sim-fast"' in hint
    assert "<code>sim-*</code>" in hint and "scripts/start.sh" in hint

    _store_run(app, "e" * 32, "first", [("sim-fast", "completed", "hi")])
    assert 'id="first-run"' not in client.get("/").text


def test_home_first_run_hint_goes_once_a_stress_test_exists(client) -> None:  # type: ignore[no-untyped-def]
    _home_stress_job(client, [1])
    page = client.get("/").text
    assert 'id="first-run"' not in page and 'id="home-stress"' in page


def test_home_labels_the_concurrency_levels(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    from backend.db import db
    from backend.stress.models import JobStatus, transition

    queued = _home_stress_job(client, [1, 4])
    done = _home_stress_job(client, [2, 8, 16])
    with app.app_context():
        assert transition(done, JobStatus.CANCELLED)
        db.session.commit()
    stress = _panel(client.get("/").text, "home-stress")
    assert f'href="/stress-tests/{queued}"' in stress and f'href="/stress-tests/{done}"' in stress
    assert "concurrency 1, 4" in stress and "concurrency 2, 8, 16" in stress
    assert "\u00d7 " not in stress  # the unexplained multiplication sign of before


def test_favicon_is_served(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/models").text
    links = [tag for tag in page.split("<link ")[1:] if 'rel="icon"' in tag.split(">", 1)[0]]
    assert len(links) == 1
    href = links[0].split('href="', 1)[1].split('"', 1)[0]
    icon = client.get(href)
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.data.lstrip().startswith(b"<svg") and b'xmlns="http://www.w3.org/2000/svg"' in icon.data

    direct = client.get("/favicon.ico", follow_redirects=True)
    assert direct.status_code == 200 and direct.mimetype == "image/svg+xml" and direct.data == icon.data
