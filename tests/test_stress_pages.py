"""In-process checks of the stress-test pages: plotly served locally, the list and its filters, the form
(prefill, errors next to fields, redirect), the job page and its fragments, the live HTML stream, 404s."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.db import db
from backend.inference.models import InferenceRun
from backend.stress.models import StressJob, StressLevel, StressSample
from tests.support.stress import offline_app

HTMX = {"HX-Request": "true"}
FORM = {"submitted": "1", "target": "sim-fast", "concurrency": "1, 2", "requests": "3, 4", "dataset": "prompt",
        "prompt": "Hello there", "input_tokens": "64", "output_tokens": "32", "temperature": "0", "stream": "on",
        "connect_timeout_s": "10", "read_timeout_s": "120", "total_timeout_s": "600"}


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    return offline_app(tmp_path, monkeypatch, sse_poll_s=0.05, heartbeat_s=1)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def add_job(app: Flask, model: str = "sim-fast", status: str = "completed", **values: Any) -> str:
    with app.app_context():
        job = StressJob(model_key=model, status=status, target={"kind": "catalog", "key": model, "name": model,
                                                                "provider": "openai", "model_id": model},
                        params={"concurrency": [1, 2], "requests": [3, 4], "input_tokens": 64, "output_tokens": 32,
                                "dataset": "prompt", "prompt": "<script>alert(1)</script>", "stream": True,
                                "temperature": 0.0, "connect_timeout_s": 10, "read_timeout_s": 120,
                                "total_timeout_s": 600},
                        estimated_requests=7, token_source="server",
                        progress={"percent": 100.0 if status == "completed" else 42.86, "level": 2, "levels": 2,
                                  "concurrency": 2, "processed": 7 if status == "completed" else 3, "total": 7},
                        **values)
        db.session.add(job)
        db.session.commit()
        return job.id


def add_results(app: Flask, job_id: str) -> None:
    metric = {"avg": 1.0, "p50": 1.0, "p90": 1.2, "p99": 1.5}
    with app.app_context():
        for position, concurrency in enumerate((1, 2)):
            db.session.add(StressLevel(
                job_id=job_id, position=position, concurrency=concurrency, requests=3 + position,
                succeeded=3 + position, failed=0, duration_s=3.5, req_per_s=0.9, output_tokens_per_s=24.5,
                total_tokens_per_s=31.0,
                avg_input_tokens=64, avg_output_tokens=32,
                metrics={"latency_s": metric, "ttft_ms": {"avg": 40.0, "p50": 41.0, "p90": 44.0, "p99": 45.5},
                         "tpot_ms": metric, "itl_ms": metric}))
            db.session.add(StressSample(job_id=job_id, t=1.0 + position, level=concurrency, processed=3 + position,
                                        ok=3, errors=0, ttft_ms=41.0, latency_s=1.2, output_tokens_per_s=24.0))
        db.session.commit()


# --- plotly, served by the app -------------------------------------------------------------------


def test_plotly_is_served_from_the_installed_package_with_long_caching(client: FlaskClient) -> None:
    response = client.get("/vendor/plotly.min.js?v=1")
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.cache_control.max_age >= 365 * 24 * 3600
    assert response.cache_control.public and response.cache_control.immutable
    assert b"plotly" in response.data[:2000].lower() and len(response.data) > 1_000_000


def test_no_page_loads_anything_from_a_cdn(app: Flask, client: FlaskClient) -> None:
    job_id = add_job(app)
    add_results(app, job_id)
    running = add_job(app, status="running")
    pages = ["/", "/stress-tests", "/stress-tests/new", f"/stress-tests/{job_id}", f"/stress-tests/{running}",
             "/playground"]
    for url in pages:
        text = client.get(url).text
        assert "cdn" not in text.lower(), url
        assert "https://" not in text, url
    job_page = client.get(f"/stress-tests/{job_id}").text
    assert re.search(r'<script src="/vendor/plotly\.min\.js\?v=[0-9.]+">', job_page)


# --- the list ------------------------------------------------------------------------------------


def test_list_filters_by_status_and_model(app: Flask, client: FlaskClient) -> None:
    done = add_job(app, model="sim-fast", status="completed")
    failed = add_job(app, model="sim-slow", status="failed", error="all 7 requests failed")
    running = add_job(app, model="sim-slow", status="running")

    page = client.get("/stress-tests")
    assert page.status_code == 200 and "<html" in page.text
    assert "HX-Request" in page.headers.get("Vary", "")
    for job_id in (done, failed, running):
        assert f'data-job="{job_id}"' in page.text
    # Newest first.
    assert page.text.index(running) < page.text.index(failed) < page.text.index(done)
    # One live stream for the page, with only the unfinished job in it.
    assert page.text.count("sse-connect=") == 1
    assert f"/stress-tests/live?id={running}" in page.text
    assert f'sse-swap="job-{running}"' in page.text and f'sse-swap="job-{done}"' not in page.text

    fragment = client.get("/stress-tests?status=failed", headers=HTMX)
    assert "<html" not in fragment.text and fragment.text.lstrip().startswith(("{#", '<div id="jobs-list"'))
    assert f'data-job="{failed}"' in fragment.text
    assert done not in fragment.text and running not in fragment.text
    assert "sse-connect" not in fragment.text  # nothing unfinished: no stream

    by_model = client.get("/stress-tests?model=sim-slow", headers=HTMX).text
    assert failed in by_model and running in by_model and done not in by_model

    active = client.get("/stress-tests?status=active", headers=HTMX).text
    assert running in active and failed not in active and done not in active

    both = client.get("/stress-tests?status=completed&model=sim-slow", headers=HTMX).text
    assert "No stress test matches these filters" in both

    bad = client.get("/stress-tests?status=bogus")
    assert bad.status_code == 400 and "There is no status" in bad.text


def test_worker_banner_when_no_worker_is_running(client: FlaskClient) -> None:
    for url in ("/stress-tests", "/stress-tests/new", "/"):
        assert "no stress worker is running" in client.get(url).text.lower(), url


def test_live_stream_sends_html_per_job_and_closes_when_all_have_finished(app: Flask, client: FlaskClient) -> None:
    done = add_job(app, status="completed")
    response = client.get(f"/stress-tests/live?id={done}&id=../etc")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)  # finished jobs only: the stream ends by itself
    assert f"event: job-{done}\n" in body
    assert 'data-status="completed"' in body
    assert f'id="job-duration-{done}" class="job-duration" hx-swap-oob="true"' in body
    assert body.rstrip().endswith("data: all listed jobs have finished")
    # Multi-line HTML goes out as one data: line per line (an SSE event ends at the first blank line).
    event = body.split(f"event: job-{done}\n", 1)[1].split("\n\n", 1)[0]
    assert all(line.startswith("data:") for line in event.split("\n"))


# --- the form ------------------------------------------------------------------------------------


def test_form_prefills_from_the_query_escaped(client: FlaskClient) -> None:
    page = client.get("/stress-tests/new?model=sim-fast&prompt=%3Cscript%3Ealert(1)%3C/script%3E")
    assert page.status_code == 200
    assert '<option value="sim-fast"' in page.text
    assert re.search(r'<option value="sim-fast"[^>]*selected', page.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in page.text
    assert "<script>alert(1)" not in page.text
    unknown = client.get("/stress-tests/new?model=nope").text
    assert "is not in the catalogue" in unknown


def test_form_prefills_from_a_playground_run(app: Flask, client: FlaskClient) -> None:
    with app.app_context():
        db.session.add(InferenceRun(id="run123", prompt="A long prompt from the playground", params={},
                                    models=["sim-fast"], status="completed"))
        db.session.commit()
    page = client.get("/stress-tests/new?model=sim-fast&run=run123").text
    assert "A long prompt from the playground</textarea>" in page


def test_form_submission_creates_the_job_and_redirects(app: Flask, client: FlaskClient) -> None:
    response = client.post("/stress-tests/new", data=FORM)
    assert response.status_code == 303
    job_id = re.fullmatch(r"/stress-tests/([0-9a-f]{12})", response.headers["Location"]).group(1)
    with app.app_context():
        job = db.session.get(StressJob, job_id)
        assert job.status == "queued" and job.model_key == "sim-fast"
        assert job.params["concurrency"] == [1, 2] and job.params["requests"] == [3, 4]
        assert job.params["prompt"] == "Hello there" and job.params["stream"] is True

    htmx = client.post("/stress-tests/new", data={**FORM, "requests": "5", "stream": ""}, headers=HTMX)
    assert htmx.status_code == 200 and htmx.headers["HX-Redirect"].startswith("/stress-tests/")
    with app.app_context():
        job = db.session.get(StressJob, htmx.headers["HX-Redirect"].rsplit("/", 1)[1])
        assert job.params["requests"] == [5, 5] and job.params["stream"] is False


def test_manual_endpoint_key_is_never_echoed(app: Flask, client: FlaskClient) -> None:
    data = {**FORM, "target": "__manual__", "manual_url": "http://127.0.0.1:9/v1", "manual_model": "m",
            "manual_key": "sk-secret-123", "concurrency": "1, 0"}
    refused = client.post("/stress-tests/new", data=data)
    assert refused.status_code == 400
    assert "sk-secret-123" not in refused.text
    assert 'value="http://127.0.0.1:9/v1"' in refused.text
    created = client.post("/stress-tests/new", data={**data, "concurrency": "1", "requests": "3"})
    assert created.status_code == 303
    with app.app_context():
        job = db.session.get(StressJob, created.headers["Location"].rsplit("/", 1)[1])
        assert job.target["kind"] == "manual" and job.target["api_key_given"] is True
        assert "sk-secret-123" not in str(job.target) + str(job.params) + (job.api_key_encrypted or "")
    page = client.get(created.headers["Location"]).text
    assert "sk-secret-123" not in page and "with an API key" in page


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"concurrency": "1, 0"}, "concurrency", "Concurrency levels: level 2 must be at least 1"),
    ({"concurrency": "1, x"}, "concurrency", "Concurrency levels: whole numbers"),
    ({"concurrency": "1, 1"}, "concurrency", "Concurrency levels: a level is repeated"),
    ({"requests": "1, 2, 3"}, "requests", "Requests per level: give one number, or one per concurrency level"),
    ({"prompt": ""}, "prompt", "Prompt: required with the “Fixed prompt” dataset"),
    ({"target": ""}, "target", "Model: choose a model"),
    ({"target": "nope"}, "target", "Model: unknown model"),
    ({"output_tokens": "abc"}, "output_tokens", "Output tokens: must be a whole number"),
    ({"output_tokens": ""}, "output_tokens", "Output tokens: enter a whole number"),
    ({"temperature": ""}, "temperature", "Temperature: enter a number"),
    ({"total_timeout_s": ""}, "total_timeout_s", "Timeout per request: enter a whole number"),
    ({"temperature": "nan"}, "temperature", "Temperature: must be a finite number"),
    ({"temperature": "3"}, "temperature", "Temperature: must be at most 2"),
    ({"label": "x" * 101}, "label", "Label: must be at most 100 characters long"),
    ({"dataset": "openqa"}, "dataset_file",
     "Uploaded file: required with the “File: OpenQA” dataset (upload one first)"),
    ({"dataset": "random"}, "tokenizer", "Tokenizer: the “Random tokens” dataset needs a local tokenizer"),
    ({"target": "__manual__", "manual_url": "ftp://x", "manual_model": "m"}, "manual_url",
     "Base URL or chat completions URL: must be an http:// or https:// URL"),
    ({"target": "__manual__", "manual_url": "", "manual_model": "m"}, "manual_url",
     "Base URL or chat completions URL: enter one"),
    ({"target": "__manual__", "manual_url": "http://127.0.0.1:9/v1", "manual_model": ""}, "manual_model",
     "Model name: must not be empty"),
    ({"warmup": "fixed", "warmup_count": ""}, "warmup", "Warm-up requests: enter a whole number"),
    ({"warmup": "fixed", "warmup_count": "100000"}, "warmup", "Warm-up requests: at most 10000"),
])
def test_form_errors_land_next_to_their_field(client: FlaskClient, changes: dict[str, str], field: str,
                                              message: str) -> None:
    # Without htmx: the whole page again, with the message in the field's slot and what was typed kept.
    page = client.post("/stress-tests/new", data={**FORM, **changes})
    assert page.status_code == 400
    slot = re.search(rf'<div class="field-error" id="error-{field}">([^<]*)</div>', page.text)
    assert slot and message in slot.group(1).replace("&#39;", "'"), page.text[:3000]
    # With htmx: the summary, and every slot out of band (this one filled, the others emptied).
    fragment = client.post("/stress-tests/new", data={**FORM, **changes}, headers=HTMX)
    assert fragment.status_code == 400 and "<html" not in fragment.text
    oob = re.search(rf'<div class="field-error" id="error-{field}" hx-swap-oob="true">([^<]*)</div>', fragment.text)
    assert oob and message in oob.group(1).replace("&#39;", "'")
    assert '<div class="field-error" id="error-dataset" hx-swap-oob="true"></div>' in fragment.text


# --- one job -------------------------------------------------------------------------------------


def test_job_page_finished_shows_the_table_and_escapes(app: Flask, client: FlaskClient) -> None:
    job_id = add_job(app, error=None)
    add_results(app, job_id)
    page = client.get(f"/stress-tests/{job_id}")
    assert page.status_code == 200
    text = page.text
    assert 'id="levels-table"' in text and text.count('<tr data-concurrency="') == 2
    assert "41.0 / 45.5" in text  # TTFT p50 / p99
    assert "server usage" in text
    assert "<script>alert(1)</script>" not in text.split('id="job-data"')[0]
    assert "\\u003cscript\\u003e" in text  # the JSON for the charts escapes it too
    assert 'id="job-cancel"' not in text and 'id="job-delete"' in text
    assert 'hx-trigger="every 3s"' not in text  # no log polling once finished
    assert '"samples": [{' in text.replace('"samples":[{', '"samples": [{')

    fragment = client.get(f"/stress-tests/{job_id}", headers=HTMX)
    assert "<html" not in fragment.text
    assert 'id="job-summary"' in fragment.text
    assert '<section id="job-levels" class="panel" hx-swap-oob="true">' in fragment.text


def test_running_job_page_follows_and_can_be_cancelled(app: Flask, client: FlaskClient) -> None:
    job_id = add_job(app, status="running")
    text = client.get(f"/stress-tests/{job_id}").text
    assert f'data-events-url="/api/v1/stress-tests/{job_id}/events"' in text
    assert re.search(r'<div id="job-progress" class="job-progress" data-processed="3"', text)
    assert 'hx-trigger="every 3s"' in text and 'id="job-cancel"' in text

    cancelled = client.post(f"/stress-tests/{job_id}/cancel", headers=HTMX)
    assert cancelled.status_code == 200
    assert 'data-status="cancelling"' in cancelled.text and 'hx-swap-oob="true"' in cancelled.text
    refused = client.post(f"/stress-tests/{job_id}/delete", headers=HTMX)
    assert refused.status_code == 409 and refused.headers["HX-Retarget"] == "#flash"


def test_delete_a_finished_job(app: Flask, client: FlaskClient) -> None:
    job_id = add_job(app)
    response = client.post(f"/stress-tests/{job_id}/delete", headers=HTMX)
    assert response.status_code == 200 and response.headers["HX-Redirect"] == "/stress-tests"
    assert client.get(f"/stress-tests/{job_id}").status_code == 404


@pytest.mark.parametrize(("method", "suffix"), [
    ("get", ""), ("get", "/log"), ("post", "/cancel"), ("post", "/delete"),
])
def test_unknown_job_is_a_404_page(client: FlaskClient, method: str, suffix: str) -> None:
    response = getattr(client, method)(f"/stress-tests/0123456789ab{suffix}")
    assert response.status_code == 404
    assert "There is no stress test 0123456789ab" in response.text
    assert response.mimetype == "text/html"


def test_home_shows_running_and_finished_jobs(app: Flask, client: FlaskClient) -> None:
    running = add_job(app, status="running")
    done = add_job(app, model="sim-slow", status="completed")
    text = client.get("/").text
    assert f'href="/stress-tests/{running}"' in text and f'sse-swap="job-{running}"' in text
    assert f'href="/stress-tests/{done}"' in text and "Latest finished" in text


def test_form_estimates_duration_from_the_latest_completed_job(app: Flask, client: FlaskClient) -> None:
    job_id = add_job(app)
    add_results(app, job_id)
    page = client.get("/stress-tests/new?model=sim-fast").text
    data = page.split('<script type="application/json" id="sf-data">', 1)[1].split("</script>", 1)[0]
    assert f'"job": "{job_id}"' in data.replace('"job":"', '"job": "')
    assert '"concurrency": 1' in data.replace('"concurrency":1', '"concurrency": 1')


def test_chart_samples_are_thinned_evenly(app: Flask) -> None:
    from backend.stress import service

    job_id = add_job(app)
    with app.app_context():
        for index in range(10):
            db.session.add(StressSample(job_id=job_id, t=float(index), level=1, processed=index, ok=index, errors=0))
        db.session.commit()
        assert [s["t"] for s in service.job_samples(job_id, 100)] == [float(i) for i in range(10)]
        assert [s["t"] for s in service.job_samples(job_id, 4)] == [0.0, 3.0, 6.0, 9.0]
