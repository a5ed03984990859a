"""Inputs a hostile user sends: text that cannot be stored, absurd nesting, loose types, huge offsets and
prompts. Each is refused with a 400 naming the field; what was answered is always stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from tests.support.raw_http import DONE, RawHttpServer, Reply, chunked_stream, delta_chunk, sse, usage_chunk
from tests.support.simulator import SimulatorProcess

LONE = "a\ud800b"


def raw_post(client: Any, path: str, text: str) -> Any:
    """Post JSON text as is: a lone surrogate can only arrive as a \\u escape, which json= would not write."""
    return client.post(path, data=text.encode("ascii"), content_type="application/json")


def refused(response: Any, field: str) -> str:
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "bad_request" and error["details"]["field"] == field, error
    assert error["message"].startswith(f"{field}: "), error
    return error["message"]


def stored_runs(app: Flask) -> int:
    from backend.db import db
    from backend.inference.models import InferenceRun

    with app.app_context():
        return db.session.scalar(db.select(db.func.count()).select_from(InferenceRun))


# --- text that cannot be stored ------------------------------------------------------------------

INFERENCE_TEXT_FIELDS = [
    ("/api/v1/inference", {"model": "sim-fast", "prompt": LONE}, "prompt"),
    ("/api/v1/inference", {"model": "sim-fast", "text": LONE}, "text"),
    ("/api/v1/inference", {"model": "sim-fast", "text": "hi", "system": LONE}, "system"),
    ("/api/v1/multi-inference", {"models": ["sim-fast"], "text": LONE}, "text"),
    ("/api/v1/multi-inference", {"models": ["sim-fast"], "text": "hi", "system": LONE}, "system"),
    ("/api/v1/multi-inference", {"models": ["sim-fast"], "messages": [{"role": "user", "content": LONE}]},
     "messages[0].content"),
    ("/api/v1/multi-inference", {"text": "hi", "manual_config": {"base_url": "http://127.0.0.1:9/v1",
                                                                 "model_name": "m", "label": LONE}},
     "manual_config.label"),
    ("/api/v1/stress-tests", {"model": "sim-fast", "concurrency": [1], "requests": 1, "prompt": LONE}, "prompt"),
    ("/api/v1/stress-tests", {"model": "sim-fast", "concurrency": [1], "requests": 1, "prompt": "x",
                              "label": LONE}, "label"),
]


@pytest.mark.parametrize(("path", "body", "field"), INFERENCE_TEXT_FIELDS)
def test_a_lone_surrogate_is_refused_naming_the_field(app: Flask, client: Any, path: str, body: dict,
                                                      field: str) -> None:
    text = json.dumps(body)  # ensure_ascii: the surrogate travels as the escape \ud800
    assert "\\ud800" in text
    message = refused(raw_post(client, path, text), field)
    assert "lone surrogate" in message and "\\ud800" in message and "character 2" in message
    assert stored_runs(app) == 0
    assert client.get("/api/v1/stress-tests").json["total"] == 0


def test_a_lone_surrogate_in_a_key_is_refused(client: Any) -> None:
    message = refused(raw_post(client, "/api/v1/multi-inference", '{"models": ["sim-fast"], "text": "hi", '
                                                                   '"\\udc00": 1}'), "body (a key)")
    assert "lone surrogate" in message


def test_paired_surrogates_are_ordinary_text(app: Flask, client: Any) -> None:
    """An emoji written as a \\u escape pair is one valid character, not two lone surrogates."""
    response = raw_post(client, "/api/v1/inference", '{"model": "sim-echo", "prompt": "hi \\ud83d\\ude00"}')
    assert response.status_code == 200, response.json
    run = client.get(f"/api/v1/inference/runs/{response.json['run_id']}").json
    assert run["prompt"] == "hi \U0001F600"


def test_stress_form_with_undecodable_bytes_is_stored_or_refused_cleanly(client: Any) -> None:
    """A form cannot carry a lone surrogate: werkzeug keeps undecodable percent-escapes as written."""
    form = "target=sim-fast&concurrency=1&requests=1&dataset=prompt&prompt=a%ED%A0%80b&submitted=1"
    response = client.post("/stress-tests/new", data=form, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 303, response.get_data(as_text=True)
    [job] = client.get("/api/v1/stress-tests").json["jobs"]
    prompt = job["params"]["prompt"]
    assert prompt.encode("utf-8").decode("utf-8") == prompt and prompt[0] == "a" and prompt[-1] == "b"
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in prompt)


@pytest.mark.parametrize(("path", "body", "field"), INFERENCE_TEXT_FIELDS)
def test_a_nul_character_is_refused_naming_the_field(app: Flask, client: Any, path: str, body: dict,
                                                     field: str) -> None:
    """PostgreSQL's text and JSONB cannot hold U+0000: refused on every database, so that SQLite and
    PostgreSQL answer alike, instead of a 500 from the one that cannot store it."""
    text = json.dumps(body).replace("\\ud800", "\\u0000")
    assert "\\u0000" in text and "\\ud800" not in text
    message = refused(raw_post(client, path, text), field)
    assert "NUL character" in message and "character 2" in message
    assert stored_runs(app) == 0
    assert client.get("/api/v1/stress-tests").json["total"] == 0


@pytest.mark.parametrize(("url", "field"), [("/api/v1/stress-tests/a%00b/log", "path"),
                                            ("/api/v1/stress-tests?q=a%00b", "q"),
                                            ("/results?model=%00", "model"),
                                            ("/history?a%00=1", "query (a name)")])
def test_a_nul_character_in_a_url_is_refused(client: Any, url: str, field: str) -> None:
    response = client.get(url)
    assert response.status_code == 400, response.get_data(as_text=True)
    if url.startswith("/api/"):
        assert response.json["error"]["details"]["field"] == field
    assert "NUL character" in response.get_data(as_text=True)


def test_a_nul_character_in_a_form_is_refused_or_replaced(client: Any) -> None:
    form = "target=sim-fast&concurrency=1&requests=1&dataset=prompt&prompt=a%00b&submitted=1"
    response = client.post("/stress-tests/new", data=form, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (303, 400), response.get_data(as_text=True)
    jobs = client.get("/api/v1/stress-tests").json["jobs"]
    if response.status_code == 400:
        assert not jobs and "NUL character" in response.get_data(as_text=True)
    else:
        assert "\x00" not in jobs[0]["params"]["prompt"]


@pytest.fixture
def scripted() -> Iterator[RawHttpServer]:
    server = RawHttpServer().start()
    yield server
    server.stop()


def test_a_lone_surrogate_from_upstream_is_relayed_and_stored_as_a_replacement(app: Flask, client: Any,
                                                                               scripted: RawHttpServer) -> None:
    """Model output is untrusted too: JSON from upstream may hold the same escape."""
    body = b"".join([sse(delta_chunk("", role="assistant")), sse(json.dumps(delta_chunk("x\ud800y"))),
                     sse(json.dumps(delta_chunk(reasoning="r\udfffs"))), sse(delta_chunk("!", finish_reason="stop")),
                     sse(usage_chunk(3, 3)), DONE])
    assert b"\\ud800" in body
    scripted.script(Reply((chunked_stream(body),), then="close"))
    manual = {"base_url": scripted.base_url, "model_name": "m"}
    response = client.post("/api/v1/multi-inference", json={"text": "hi", "manual_config": manual})
    text = response.get_data()  # werkzeug would refuse to build the response body if it were not UTF-8
    events = [block for block in text.decode("utf-8").split("\n\n") if block.startswith("event: ")]
    deltas = [json.loads(e.split("data: ", 1)[1])["text"] for e in events if e.startswith("event: delta")]
    assert deltas == ["x\ufffdy", "!"]
    done = json.loads(next(e for e in events if e.startswith("event: done")).split("data: ", 1)[1])
    assert done["succeeded"] == 1
    run = client.get(f"/api/v1/inference/runs/{done['run_id']}").json
    [result] = run["results"]
    assert result["status"] == "completed" and result["output"] == "x\ufffdy!" and result["reasoning"] == "r\ufffds"


def test_a_nul_character_from_upstream_is_stored_as_a_replacement(app: Flask, client: Any,
                                                                  scripted: RawHttpServer) -> None:
    body = b"".join([sse(delta_chunk("", role="assistant")), sse(json.dumps(delta_chunk("x\x00y"))),
                     sse(delta_chunk("!", finish_reason="stop")), sse(usage_chunk(3, 3)), DONE])
    assert b"\\u0000" in body
    scripted.script(Reply((chunked_stream(body),), then="close"))
    response = client.post("/api/v1/multi-inference", json={"text": "hi", "manual_config": {
        "base_url": scripted.base_url, "model_name": "m"}})
    events = [block for block in response.get_data(as_text=True).split("\n\n") if block.startswith("event: ")]
    done = json.loads(next(e for e in events if e.startswith("event: done")).split("data: ", 1)[1])
    assert done["succeeded"] == 1
    [result] = client.get(f"/api/v1/inference/runs/{done['run_id']}").json["results"]
    assert result["output"] == "x\ufffdy!"


# --- nesting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/inference", "/api/v1/multi-inference", "/api/v1/stress-tests"])
@pytest.mark.parametrize("depth", [40, 1200, 100_000])
def test_deep_nesting_is_refused(client: Any, path: str, depth: int) -> None:
    text = '{"models": ' + "[" * depth + "]" * depth + ', "text": "hi"}'
    message = refused(raw_post(client, path, text), "body" if depth > 900 else "models" + "[0]" * 31)
    assert "nested too deeply" in message


# --- loose types ---------------------------------------------------------------------------------

LOOSE = [
    ("/api/v1/inference", {"max_tokens": "10"}, "max_tokens", "must be a whole number"),
    ("/api/v1/inference", {"max_tokens": True}, "max_tokens", "must be a whole number"),
    ("/api/v1/inference", {"max_tokens": 10.0}, "max_tokens", "must be a whole number"),
    ("/api/v1/inference", {"stream": "yes"}, "stream", "must be true or false"),
    ("/api/v1/inference", {"stream": 1}, "stream", "must be true or false"),
    ("/api/v1/inference", {"temperature": "0.5"}, "temperature", "must be a number"),
    ("/api/v1/inference", {"prompt": 5}, "prompt", "must be text"),
    ("/api/v1/stress-tests", {"concurrency": ["2"]}, "concurrency[0]", "must be a whole number"),
    ("/api/v1/stress-tests", {"concurrency": [True]}, "concurrency[0]", "must be a whole number"),
    ("/api/v1/stress-tests", {"requests": "3"}, "requests", "whole number"),
    ("/api/v1/stress-tests", {"requests": [3, "4"]}, "requests", "whole number"),
    ("/api/v1/stress-tests", {"stream": "yes"}, "stream", "must be true or false"),
    ("/api/v1/stress-tests", {"output_tokens": "64"}, "output_tokens", "must be a whole number"),
    ("/api/v1/stress-tests", {"temperature": "0"}, "temperature", "must be a number"),
]
BASE = {"/api/v1/inference": {"model": "sim-fast", "prompt": "hi"},
        "/api/v1/stress-tests": {"model": "sim-fast", "concurrency": [1], "requests": 1, "prompt": "x"}}


@pytest.mark.parametrize(("path", "change", "field", "words"), LOOSE)
def test_loose_types_are_refused(client: Any, path: str, change: dict, field: str, words: str) -> None:
    message = refused(client.post(path, json={**BASE[path], **change}), field)
    assert words in message


@pytest.mark.parametrize("path", ["/api/v1/inference", "/api/v1/stress-tests"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_temperature_must_be_finite(client: Any, path: str, literal: str) -> None:
    text = json.dumps(BASE[path])[:-1] + f', "temperature": {literal}}}'
    assert refused(raw_post(client, path, text), "temperature") == "temperature: must be a finite number"


def test_strict_types_still_take_what_json_means(client: Any) -> None:
    """An integer where a number is wanted is a number; the typed equivalents of the refusals pass."""
    created = client.post("/api/v1/stress-tests", json={**BASE["/api/v1/stress-tests"], "temperature": 1,
                                                        "concurrency": [2], "requests": [3], "stream": False})
    assert created.status_code == 201, created.json
    assert created.json["params"]["temperature"] == 1.0 and created.json["params"]["requests"] == [3]
    answered = client.post("/api/v1/inference", json={**BASE["/api/v1/inference"], "max_tokens": 10,
                                                      "temperature": 0, "stream": False})
    assert answered.status_code == 200, answered.json


# --- paging ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "field"), [
    ("offset=99999999999999999999999", "offset"), ("offset=-1", "offset"), ("offset=1.5", "offset"),
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=abc", "limit"),
])
def test_run_list_paging_is_bounded(client: Any, query: str, field: str) -> None:
    refused(client.get(f"/api/v1/inference/runs?{query}"), field)


def test_the_largest_offset_answers_an_empty_page(client: Any) -> None:
    page = client.get("/api/v1/inference/runs?offset=1000000000").json
    assert page["runs"] == [] and page["offset"] == 10**9


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "sim-fast", "prompt": "p" * 1001}, "prompt"),
    ({"model": "sim-fast", "text": "hi", "system": "s" * 1001}, "system"),
    ({"model": "sim-fast", "messages": [{"role": "user", "content": "m" * 600},
                                        {"role": "assistant", "content": "a"},
                                        {"role": "user", "content": "m" * 400}]}, "messages"),
])
def test_prompts_beyond_the_limit_are_refused(app: Flask, client: Any, body: dict, field: str) -> None:
    app.config["PEP"]["inference"]["max_prompt_chars"] = 1000
    message = refused(client.post("/api/v1/inference", json=body), field)
    assert "1,001 characters" in message and "1,000" in message and "inference.max_prompt_chars" in message
    assert stored_runs(app) == 0
    at_limit = {**body, field: body[field][:1000] if field != "messages" else body[field][:1]}
    assert client.post("/api/v1/inference", json=at_limit).status_code == 200


def test_answers_are_stored_cut_at_the_limit_and_lists_show_previews(app: Flask, client: Any) -> None:
    settings = app.config["PEP"]["inference"]
    settings["max_stored_chars"], settings["preview_chars"] = 30, 10
    prompt = "one two three four five six seven eight nine ten eleven twelve"
    answer = client.post("/api/v1/inference", json={"model": "sim-echo", "prompt": prompt, "system": "be brief"})
    assert answer.status_code == 200, answer.json
    run_id = answer.json["run_id"]
    stored = client.get(f"/api/v1/inference/runs/{run_id}").json
    assert stored["prompt"] == prompt  # a run's own route has every text whole
    [result] = stored["results"]
    assert result["truncated"] is True and len(result["output"]) == 30
    assert "output_chars" not in result

    listed = client.get("/api/v1/inference/runs").json
    assert listed["preview_chars"] == 10
    [item] = listed["runs"]
    assert item["prompt"] == prompt[:10] and item["prompt_chars"] == len(prompt)
    assert item["system"] == "be brief" and "system_chars" not in item
    assert item["results"][0]["output"] == result["output"][:10] and item["results"][0]["output_chars"] == 30


def test_stress_job_lists_show_prompt_previews(app: Flask, client: Any) -> None:
    app.config["PEP"]["stress"]["preview_chars"] = 12
    prompt = "Tell me everything about lighthouses."
    job_id = client.post("/api/v1/stress-tests", json={**BASE["/api/v1/stress-tests"], "prompt": prompt}).json["id"]
    [listed] = client.get("/api/v1/stress-tests").json["jobs"]
    assert listed["params"]["prompt"] == prompt[:12] and listed["params"]["prompt_chars"] == len(prompt)
    whole = client.get(f"/api/v1/stress-tests/{job_id}").json["params"]
    assert whole["prompt"] == prompt and "prompt_chars" not in whole


# --- the simulator's bookkeeping -----------------------------------------------------------------


def test_the_simulator_refuses_invalid_text_and_keeps_counting(simulator: SimulatorProcess) -> None:
    before = simulator.stats()
    body = json.dumps({"model": "sim-fast", "messages": [{"role": "user", "content": LONE}], "stream": True})
    response = requests.post(f"{simulator.base_url}/chat/completions", data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and "lone surrogate" in response.json()["error"]["message"]
    records = requests.get(f"{simulator.url}/sim/requests?limit=5", timeout=10)
    assert records.status_code == 200
    after = simulator.stats()
    assert after["active_streams"] == before["active_streams"]
    assert after["started"] == before["started"]  # refused before it became a request
    ok = requests.post(f"{simulator.base_url}/chat/completions", timeout=10,
                       json={"model": "sim-fast", "messages": [{"role": "user", "content": "fine"}]})
    assert ok.status_code == 200
    assert simulator.stats()["completed"] == after["completed"] + 1
