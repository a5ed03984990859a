"""Issue 9, in-process: what the stress pages say and keep. "Run again…" copies every setting of a job; the
playground's link carries its generation settings and says where each came from; the summary shows the
input tokens requests really had; an estimate is compared with the real duration; a deletion says what
went; messages name fields as the form labels them. Browser checks are in tests/e2e/test_stress_ux.py."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.db import db
from backend.stress.models import StressJob
from backend.stress.pages import form_body
from tests.support.html_form import form_fields
from tests.support.stress import offline_app
from tests.support.stress_rows import add_job, add_level

HTMX = {"HX-Request": "true"}
PAUSE_S = 5


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    return offline_app(tmp_path, monkeypatch, level_pause_s=PAUSE_S)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def notes(html: str) -> list[str]:
    return [unescape(re.sub(r"<[^>]+>", "", n)).strip()
            for n in re.findall(r'<div class="flash flash-info" role="status">(.*?)</div>', html, re.S)]


def came_from(html: str) -> dict[str, str]:
    return {name: unescape(text) for name, text in re.findall(r'data-from="([a-z_]+)">([^<]*)<', html)}


def params_of(app: Flask, job_id: str) -> dict[str, Any]:
    with app.app_context():
        return dict(db.session.get(StressJob, job_id).params)


def created_id(response: Any) -> str:
    assert response.status_code == 303, response.get_data(as_text=True)[:2000]
    return response.headers["Location"].rsplit("/", 1)[1]


# --- 1. Run again -------------------------------------------------------------------------------


def test_run_again_copies_every_setting_of_the_job(app: Flask, client: FlaskClient) -> None:
    body = {"model": "sim-fast", "label": "night run", "concurrency": [2, 8], "requests": [5, 9], "prompt": "Tell me",
            "system": "You are terse.", "output_tokens": 48, "temperature": 0.4, "stream": False,
            "exact_output_tokens": True, "warmup": 3, "connect_timeout_s": 7, "read_timeout_s": 90,
            "total_timeout_s": 300, "labels": ["vpc-a", "gpu-net"], "shards": 2}
    original = client.post("/api/v1/stress-tests", json=body)
    assert original.status_code == 201, original.json
    job_id = original.json["id"]
    with app.app_context():  # as if it had run
        db.session.get(StressJob, job_id).status = "completed"
        db.session.commit()

    page = client.get(f"/stress-tests/{job_id}").text
    link = re.search(r'<a id="job-run-again" class="button" href="([^"]+)"', page)
    assert link and unescape(link.group(1)) == f"/stress-tests/new?from_job={job_id}"

    form = client.get(unescape(link.group(1))).text
    assert f"Every setting copied from stress test {job_id} (night run, completed)." in notes(form)
    fields = form_fields(form, "stress-form")
    expected = {"target": "sim-fast", "label": "night run", "concurrency": "2, 8", "requests": "5, 9",
                "prompt": "Tell me", "system": "You are terse.", "output_tokens": "48", "temperature": "0.4",
                "warmup": "fixed", "warmup_count": "3", "connect_timeout_s": "7", "read_timeout_s": "90",
                "total_timeout_s": "300", "dataset": "prompt", "exact_output_tokens": "on", "labels": "gpu-net, vpc-a",
                "shards": "2"}
    assert {name: fields.get(name) for name in expected} == expected
    assert "stream" not in fields  # unchecked

    # Submitted unchanged, the form makes the same job again.
    copy = created_id(client.post("/stress-tests/new", data=fields))
    assert copy != job_id
    assert params_of(app, copy) == params_of(app, job_id)
    with app.app_context():
        assert db.session.get(StressJob, copy).target["name"] == "night run"
        assert db.session.get(StressJob, copy).labels == ["gpu-net", "vpc-a"]


def test_run_again_of_a_manual_endpoint_asks_for_its_key_again(app: Flask, client: FlaskClient) -> None:
    body = {"manual_config": {"base_url": "http://127.0.0.1:9/v1", "model_name": "Qwen/Qwen3-8B",
                              "api_key": "sk-never-shown"},
            "concurrency": [4], "requests": 20, "prompt": "hi", "warmup": "concurrency", "output_tokens": 16}
    job_id = client.post("/api/v1/stress-tests", json=body).json["id"]
    with app.app_context():
        db.session.get(StressJob, job_id).status = "failed"
        db.session.commit()
    form = client.get(f"/stress-tests/new?from_job={job_id}").text
    assert "sk-never-shown" not in form
    fields = form_fields(form, "stress-form")
    assert (fields["target"], fields["manual_url"], fields["manual_model"]) == \
        ("__manual__", "http://127.0.0.1:9/v1", "Qwen/Qwen3-8B")
    assert fields["warmup"] == "concurrency" and fields["requests"] == "20" and fields["output_tokens"] == "16"
    assert any("without its API key" in note and "type the key again" in note for note in notes(form))
    assert came_from(form)["manual_key"].startswith(f"not copied from job {job_id}: type it again")
    assert fields.get("manual_key", "") == ""
    copy = created_id(client.post("/stress-tests/new", data={**fields, "manual_key": "sk-typed-again"}))
    assert params_of(app, copy) == params_of(app, job_id)
    with app.app_context():
        assert db.session.get(StressJob, copy).target["api_key_given"] is True


def test_run_again_of_a_job_that_is_gone(client: FlaskClient) -> None:
    form = client.get("/stress-tests/new?from_job=0123456789ab").text
    assert "There is no stress test 0123456789ab to copy: the form shows the defaults." in notes(form)


# --- 2. from the playground ---------------------------------------------------------------------


def test_playground_link_carries_system_prompt_max_tokens_and_temperature(app: Flask, client: FlaskClient) -> None:
    query = ("/stress-tests/new?from=playground&model=sim-fast&prompt=Name%20three%20rivers&system=Be%20brief."
             "&max_tokens=128&temperature=0.7")
    form = client.get(query).text
    fields = form_fields(form, "stress-form")
    assert (fields["target"], fields["prompt"], fields["system"]) == ("sim-fast", "Name three rivers", "Be brief.")
    assert (fields["output_tokens"], fields["temperature"]) == ("128", "0.7")
    assert notes(form)[0] == ("From the playground: the model (sim-fast), the prompt, the system prompt, max tokens "
                              "128 as Output tokens and temperature 0.7 as Temperature. Everything else is the Quick "
                              "check preset's.")
    assert came_from(form) == {"target": "from the playground", "prompt": "from the playground",
                               "system": "from the playground", "output_tokens": "max tokens from the playground",
                               "temperature": "temperature from the playground"}
    job_id = created_id(client.post("/stress-tests/new", data=fields))
    params = params_of(app, job_id)
    assert (params["system"], params["output_tokens"], params["temperature"]) == ("Be brief.", 128, 0.7)


def test_playground_link_for_a_manual_endpoint_and_values_that_are_not_numbers(client: FlaskClient) -> None:
    form = client.get("/stress-tests/new?from=playground&manual_url=http://127.0.0.1:9/v1&manual_model=m"
                      "&prompt=hi&max_tokens=lots&temperature=inf").text
    fields = form_fields(form, "stress-form")
    assert (fields["target"], fields["manual_url"], fields["manual_model"]) == \
        ("__manual__", "http://127.0.0.1:9/v1", "m")
    assert (fields["output_tokens"], fields["temperature"], fields["system"]) == ("64", "0.0", "")
    said = notes(form)
    assert said[0].startswith("From the playground: the manual endpoint's URL and model name (not its API key: type "
                              "it again if it needs one) and the prompt.")
    assert "max_tokens “lots” from the playground is not a whole number: Output tokens keeps 64." in said
    assert "temperature “inf” from the playground is not a number: Temperature keeps 0.0." in said


def test_a_system_prompt_is_stored_only_when_given(app: Flask, client: FlaskClient) -> None:
    fields = form_fields(client.get("/stress-tests/new?model=sim-fast").text, "stress-form")
    assert fields["system"] == ""
    params = params_of(app, created_id(client.post("/stress-tests/new", data=fields)))
    assert "system" not in params
    # The page shows a job's system prompt, escaped.
    job_id = add_job(app, params={"system": "<b>terse</b>"})
    page = client.get(f"/stress-tests/{job_id}").text
    assert '<div class="prompt-text" id="job-system">&lt;b&gt;terse&lt;/b&gt;</div>' in page


# --- 3. number fields ---------------------------------------------------------------------------


def test_an_emptied_number_field_is_refused_not_replaced_by_the_api_default(app: Flask, client: FlaskClient) -> None:
    """What a browser sends for "abc" typed into <input type=number>: an empty value."""
    fields = form_fields(client.get("/stress-tests/new?model=sim-fast").text, "stress-form")
    refused = client.post("/stress-tests/new", data={**fields, "output_tokens": ""}, headers=HTMX)
    assert refused.status_code == 400
    slot = re.search(r'<div class="field-error" id="error-output_tokens" hx-swap-oob="true">([^<]*)</div>',
                     refused.text)
    assert slot and slot.group(1) == "Output tokens: enter a whole number"
    with app.app_context():
        assert db.session.query(StressJob).count() == 0
    # As shown, the form's own default is what the job gets.
    job_id = created_id(client.post("/stress-tests/new", data=fields))
    assert params_of(app, job_id)["output_tokens"] == int(fields["output_tokens"]) == 64


def test_every_refused_field_is_named_at_once(client: FlaskClient) -> None:
    fields = form_fields(client.get("/stress-tests/new?model=sim-fast").text, "stress-form")
    page = client.post("/stress-tests/new", data={**fields, "output_tokens": "", "temperature": "",
                                                  "concurrency": "1, x"}).text
    slots = dict(re.findall(r'<div class="field-error" id="error-([a-z_]+)">([^<]+)</div>', page))
    assert slots == {"output_tokens": "Output tokens: enter a whole number",
                     "temperature": "Temperature: enter a number",
                     "concurrency": "Concurrency levels: whole numbers separated by commas, for example 1, 4, 8"}


# --- 4. input tokens ----------------------------------------------------------------------------


def test_a_fixed_prompt_job_shows_the_measured_input_tokens_not_the_input_length(app: Flask,
                                                                                 client: FlaskClient) -> None:
    job_id = add_job(app, params={"input_tokens": 512, "output_tokens": 32})
    add_level(app, job_id, 0, 1, succeeded=3, failed=0, avg_input_tokens=16.0)
    add_level(app, job_id, 1, 2, succeeded=1, failed=3, avg_input_tokens=20.0)
    tokens = re.search(r'<dd id="job-tokens">(.*?)</dd>', client.get(f"/stress-tests/{job_id}").text, re.S).group(1)
    text = " ".join(unescape(re.sub(r"<[^>]+>", "", tokens)).split())
    assert text == f"{(16 * 3 + 20 * 1) / 4:.0f} in (measured) · at most 32 out"
    assert "512" not in text

    unknown = add_job(app, params={"input_tokens": 512})  # no level reported input tokens
    tokens = re.search(r'<dd id="job-tokens">(.*?)</dd>', client.get(f"/stress-tests/{unknown}").text, re.S).group(1)
    assert " ".join(unescape(re.sub(r"<[^>]+>", "", tokens)).split()) == "at most 32 out"

    random = add_job(app, params={"dataset": "random", "prompt": None, "input_tokens": 512, "tokenizer": "default",
                                  "exact_output_tokens": True})
    tokens = re.search(r'<dd id="job-tokens">(.*?)</dd>', client.get(f"/stress-tests/{random}").text, re.S).group(1)
    assert " ".join(unescape(re.sub(r"<[^>]+>", "", tokens)).split()) == "512 in · exactly 32 out (forced)"


def test_the_input_length_field_belongs_to_the_random_datasets_only(client: FlaskClient) -> None:
    form = client.get("/stress-tests/new").text
    pair = re.search(r'<div class="sf-pair" data-for="input_length" hidden>(.*?)</div>\s*</div>', form, re.S)
    assert pair and 'name="input_tokens"' in pair.group(1)
    fields = form_fields(form, "stress-form")
    # A fixed prompt never sends it on, whatever the field holds.
    assert "input_tokens" not in form_body({**fields, "target": "sim-fast", "input_tokens": "999"})
    random = form_body({**fields, "target": "sim-fast", "dataset": "random", "input_tokens": "999"})
    assert random["input_tokens"] == 999


# --- 9. estimate against actual -----------------------------------------------------------------


def test_a_finished_job_shows_its_estimate_against_what_it_took(app: Flask, client: FlaskClient) -> None:
    now = datetime.now(UTC)
    ttft, tpot, latency = 40.0, 10.0, 0.5
    metrics = {"latency_s": {"avg": latency, "p50": latency, "p90": latency, "p99": latency},
               "ttft_ms": {"avg": ttft, "p50": ttft, "p90": ttft, "p99": ttft},
               "tpot_ms": {"avg": tpot, "p50": tpot, "p90": tpot, "p99": tpot},
               "itl_ms": {"avg": tpot, "p50": tpot, "p90": tpot, "p99": tpot}}
    # An earlier job: 30 s in all, 4 s + 6 s of levels, one pause, one warm-up request per slot.
    earlier = add_job(app, params={"concurrency": [1, 2], "requests": [3, 4], "warmup": "concurrency"},
                      created_at=now - timedelta(minutes=10), started_at=now - timedelta(minutes=10),
                      finished_at=now - timedelta(minutes=10) + timedelta(seconds=30))
    add_level(app, earlier, 0, 1, succeeded=3, failed=0, duration_s=4.0, metrics=metrics)
    add_level(app, earlier, 1, 2, succeeded=4, failed=0, duration_s=6.0, metrics=metrics)
    overhead = 30 - (4 + 6) - PAUSE_S - (1 * latency + 1 * latency)  # warm-up: one wave per level
    # The job under test: 3 levels, 64 output tokens, warm-up 2 at every level; it took 41.5 s.
    params = {"concurrency": [1, 4, 8], "requests": [10, 16, 16], "output_tokens": 64, "warmup": 2}
    job_id = add_job(app, params=params, created_at=now - timedelta(minutes=5),
                     started_at=now - timedelta(minutes=5), finished_at=now - timedelta(minutes=5, seconds=-41.5))
    one = (ttft + tpot * (64 - 1)) / 1000
    waves = math.ceil(12 / 1) + math.ceil(18 / 4) + math.ceil(18 / 8)
    expected = overhead + PAUSE_S * 2 + waves * one

    page = client.get(f"/stress-tests/{job_id}").text
    estimate = " ".join(unescape(re.sub(r"<[^>]+>", "", re.search(
        r'<dd id="job-estimate">(.*?)</dd>', page, re.S).group(1))).split())
    assert estimate == (f"≈ {expected:.1f} s or more (from job {earlier}, start-up from job {earlier}) · took 41.5 s "
                        f"({41.5 / expected:.1f}\N{MULTIPLICATION SIGN} the estimate)")

    # The form starts from the same figures: the latest completed job with levels gives the start-up.
    form = client.get("/stress-tests/new?model=sim-fast").text
    data = json.loads(form.split('<script type="application/json" id="sf-data">', 1)[1].split("</script>", 1)[0])
    assert data["overhead"] == {"job": earlier, "seconds": round(overhead, 1)}
    assert data["timings"]["sim-fast"] == {"job": earlier, "concurrency": 1, "latency_s": latency, "ttft_ms": ttft,
                                           "tpot_ms": tpot, "avg_output_tokens": 32.0, "output_tokens": 32}

    # A job with no completed job of its model before it has no estimate, and says so.
    first = add_job(app, model="sim-slow", created_at=now - timedelta(hours=1))
    assert "none: no completed job of this target before this one" in client.get(f"/stress-tests/{first}").text


# --- 10. the log stops --------------------------------------------------------------------------


def test_a_finished_jobs_log_neither_polls_nor_says_it_refreshes(app: Flask, client: FlaskClient) -> None:
    running = add_job(app, status="running")
    fragment = client.get(f"/stress-tests/{running}/log").text
    assert 'hx-trigger="every 3s"' in fragment and "refreshing every 3 s" in fragment
    done = add_job(app, status="completed")
    for text in (client.get(f"/stress-tests/{done}/log").text, client.get(f"/stress-tests/{done}").text):
        assert "hx-trigger" not in text.split('id="job-log"', 1)[1].split("</section>", 1)[0]
        assert "refreshing" not in text


# --- 12. delete says what went ------------------------------------------------------------------


@pytest.mark.parametrize("htmx", [True, False])
def test_deleting_a_job_says_what_was_deleted(app: Flask, client: FlaskClient, htmx: bool) -> None:
    job_id = add_job(app, status="failed")
    add_level(app, job_id, 0, 1, succeeded=0, failed=3)
    add_level(app, job_id, 1, 2, succeeded=0, failed=4)
    response = client.post(f"/stress-tests/{job_id}/delete", headers=HTMX if htmx else {})
    target = response.headers["HX-Redirect"] if htmx else response.headers["Location"]
    assert target == "/stress-tests"
    listing = client.get(target).text
    message = (f"Deleted stress test {job_id} (sim-fast, failed): 2 levels of results, its log and its output "
               "files.")
    assert f'<div class="flash flash-info">{message}</div>' in listing
    assert message not in client.get(target).text  # said once


# --- 17. messages name the form's fields ----------------------------------------------------------


@pytest.mark.parametrize(("api_field", "api_message", "slot", "shown"), [
    ("temperature", "must be at most 2", "temperature", "Temperature: must be at most 2"),
    ("prompt", "must not be empty", "prompt", "Prompt: must not be empty"),
    ("concurrency[3]", "at most 512 (stress.max_parallel)", "concurrency",
     "Concurrency levels (level 4): at most 512 (stress.max_parallel)"),
    ("requests[0]", "must be at least 1", "requests", "Requests per level (level 1): must be at least 1"),
    ("manual_config.model_name", "must not be empty", "manual_model", "Model name: must not be empty"),
    ("model", "unknown model 'x'", "target", "Model: unknown model 'x'"),
    ("total_timeout_s", "must be at least 1", "total_timeout_s", "Timeout per request: must be at least 1"),
    ("warmup", "at most 10000 (stress.max_requests)", "warmup",
     "Warm-up requests: at most 10000 (stress.max_requests)"),
    ("dataset_file", "not used with dataset 'random'", "dataset_file",
     "Uploaded file: not used with the “Random tokens” dataset"),
    ("body", "give exactly one of model or manual_config", "", "give exactly one of model or manual_config"),
])
def test_form_errors_are_sentences_naming_the_form_label(api_field: str, api_message: str, slot: str,
                                                         shown: str) -> None:
    from backend.errors import ApiError
    from backend.stress.pages import form_errors

    one = ApiError(f"{api_field}: {api_message}", field=api_field)
    listed = ApiError("x", details={"errors": [{"field": api_field, "message": api_message}]})
    assert form_errors(one) == form_errors(listed) == {slot: [shown]}


def test_the_form_knows_the_timings_of_manual_endpoints_too(app: Flask, client: FlaskClient) -> None:
    target = {"kind": "manual", "key": "manual:Qwen/Qwen3-8B", "provider": "openai", "model_id": "Qwen/Qwen3-8B",
              "name": "Qwen/Qwen3-8B", "base_url": "http://127.0.0.1:9/v1", "api_url": None,
              "chat_url": "http://127.0.0.1:9/v1/chat/completions", "api_key_given": False}
    job_id = add_job(app, model="manual:Qwen/Qwen3-8B", target=target)
    add_level(app, job_id, 0, 1, succeeded=3, failed=0)
    form = client.get(f"/stress-tests/new?from_job={job_id}").text
    data = json.loads(form.split('<script type="application/json" id="sf-data">', 1)[1].split("</script>", 1)[0])
    assert data["timings"]["manual:Qwen/Qwen3-8B"]["job"] == job_id


def test_a_playground_run_too_long_for_a_link_gives_its_prompt_and_system_prompt(app: Flask,
                                                                                 client: FlaskClient) -> None:
    from backend.inference.models import InferenceRun

    with app.app_context():
        db.session.add(InferenceRun(id="run456", prompt="P" * 5000, system="S" * 3000, params={"max_tokens": 99},
                                    models=["sim-fast"], status="completed"))
        db.session.commit()
    form = client.get("/stress-tests/new?from=playground&model=sim-fast&run=run456&max_tokens=99").text
    fields = form_fields(form, "stress-form")
    assert (fields["prompt"], fields["system"], fields["output_tokens"]) == ("P" * 5000, "S" * 3000, "99")
    assert notes(form)[0].startswith("From the playground: the model (sim-fast), the prompt, the system prompt and "
                                     "max tokens 99 as Output tokens.")


def test_the_estimate_counts_answers_as_long_as_the_model_makes_them(app: Flask) -> None:
    """A limit of 256 tokens to a model whose answers stopped at 40 of an earlier limit of 100 makes 40-token
    answers; forced to 256 (min_tokens), they are 256 long."""
    from backend.stress import service

    timing = {"latency_s": 1.0, "ttft_ms": 30.0, "tpot_ms": 10.0, "avg_output_tokens": 40.0, "output_tokens": 100}
    params = {"concurrency": [2], "requests": [10], "output_tokens": 256, "warmup": 0}
    assert service.estimate_seconds(params, timing, 3.0, PAUSE_S) == pytest.approx(3.0 + 5 * (30 + 10 * 39) / 1000)
    forced = {**params, "exact_output_tokens": True}
    assert service.estimate_seconds(forced, timing, 3.0, PAUSE_S) == pytest.approx(3.0 + 5 * (30 + 10 * 255) / 1000)
    at_limit = {**timing, "avg_output_tokens": 100.0}  # answers cut at the limit: their length is unknown
    assert service.estimate_seconds(params, at_limit, 3.0, PAUSE_S) == pytest.approx(3.0 + 5 * (30 + 10 * 255) / 1000)



@pytest.mark.parametrize(("progress", "words"), [
    ({"level": 0, "phase": "starting"}, "0 / 7 · starting EvalScope"),
    ({"level": 1, "phase": "warmup", "warmup": 2}, "0 / 7 · level 1 of 2 · warm-up"),
    ({"level": 1, "phase": "pause", "processed": 3}, "3 / 7 · level 1 of 2 · pause"),
    ({"level": 2, "phase": "running", "processed": 5}, "5 / 7 · level 2 of 2"),
])
def test_the_jobs_list_names_the_phase_of_a_running_job(app: Flask, client: FlaskClient, progress: dict[str, Any],
                                                        words: str) -> None:
    job_id = add_job(app, status="running", progress={"percent": 0.0, "levels": 2, "concurrency": None,
                                                      "processed": 0, "total": 7, **progress})
    cell = re.search(rf'<td class="live-cell"[^>]*id="job-live-{job_id}".*?<span class="small muted live-counts">'
                     r"(.*?)</span>", client.get("/stress-tests").text, re.S)
    assert cell and " ".join(unescape(re.sub(r"<[^>]+>", "", cell.group(1))).split()) == words


def test_a_field_the_submission_does_not_have_takes_the_apis_default(app: Flask, client: FlaskClient) -> None:
    """A client of its own posting the form without a field is not the page showing one empty."""
    job_id = created_id(client.post("/stress-tests/new", data={"target": "sim-fast", "concurrency": "1",
                                                               "requests": "2", "dataset": "prompt", "prompt": "hi"}))
    params = params_of(app, job_id)
    assert (params["output_tokens"], params["temperature"], params["warmup"]) == (128, 0.0, 0)


def test_load_generators_that_cannot_split_a_level_are_refused_on_the_form(app: Flask, client: FlaskClient) -> None:
    fields = form_fields(client.get("/stress-tests/new?model=sim-fast").text, "stress-form")
    assert fields["shards"] == "1"
    refused = client.post("/stress-tests/new", data={**fields, "concurrency": "2, 8", "shards": "3"}, headers=HTMX)
    assert refused.status_code == 400
    slot = re.search(r'<div class="field-error" id="error-shards" hx-swap-oob="true">([^<]*)</div>', refused.text)
    assert slot and unescape(slot.group(1)).startswith("Load generators: 3 shards cannot split concurrency[0] = 2")
    job_id = created_id(client.post("/stress-tests/new", data={**fields, "concurrency": "2, 8", "shards": "2"}))
    assert params_of(app, job_id)["shards"] == 2
