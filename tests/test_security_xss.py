"""XSS: a marker payload arrives as model output (the simulator's echo profile), as an upstream error
message, as labels (a manual endpoint's, a stress test's, an evaluation's), as uploaded file names and as
dataset contents; every page that shows them, and every list page, has it only escaped. The evaluation is
created (queued), not run: its pages show its label, and the dataset's pages show its contents."""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.support.raw_http import RawHttpServer, Reply, whole
from tests.support.results import add_job, level, ok

MARK = "<img src=x onerror=alert(1)>\"'<script>alert(2)</script>"
RAW = ("<img src=x", "<script>alert(2)")  # what must never reach a page unescaped


@pytest.fixture
def upstream() -> Iterator[RawHttpServer]:
    server = RawHttpServer().start()
    yield server
    server.stop()


def escaped_only(page: str, where: str) -> bool:
    """No raw marker on the page; whether its escaped form is there (Jinja's or a JSON string's)."""
    for raw in RAW:
        assert raw not in page, f"{where}: unescaped {raw!r} at {page.find(raw)}: {page[page.find(raw) - 200:][:400]}"
    return html.escape(MARK) in page or html.escape(MARK, quote=False) in page or "&lt;img src=x" in page


def test_the_marker_is_escaped_wherever_it_is_shown(app: Flask, client: Any, upstream: RawHttpServer) -> None:
    # model output, and a manual endpoint's label and error message
    echoed = client.post("/api/v1/inference", json={"model": "sim-echo", "prompt": MARK})
    assert echoed.status_code == 200, echoed.json
    run_id = echoed.json["run_id"]
    assert MARK in client.get(f"/api/v1/inference/runs/{run_id}").json["results"][0]["output"]
    upstream.script(Reply([whole(500, json.dumps({"error": {"message": MARK}}).encode())]))
    failed = client.post("/api/v1/multi-inference", json={
        "text": MARK, "manual_config": {"base_url": upstream.base_url, "model_name": "m", "label": MARK[:60]}})
    failed_id = re.search(r'"run_id": ?"([0-9a-f]+)"', failed.get_data(as_text=True)).group(1)
    stored = client.get(f"/api/v1/inference/runs/{failed_id}").json
    assert MARK in stored["results"][0]["error"]["message"]
    # a stress test's label and prompt, a stress dataset's file name
    stress = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 1,
                                                       "prompt": MARK, "label": MARK})
    assert stress.status_code == 201, stress.json
    dataset = client.post("/api/v1/stress-tests/datasets", content_type="multipart/form-data",
                          data={"format": "line_by_line",
                                "file": (io.BytesIO(MARK.encode() + b"\n"), "<img src=x onerror=alert(1)>.txt")})
    assert dataset.status_code == 201, dataset.json
    # an evaluation dataset with the marker in its name, file name and contents; an evaluation labelled so
    row = json.dumps({"id": "x1", "question": MARK, "answer": MARK}).encode() + b"\n"
    name = "<img src=x onerror=alert(1)>"  # a file name has no folders (and a form's has no quotes)
    uploaded = client.post("/api/v1/datasets", content_type="multipart/form-data",
                           data={"kind": "qa", "name": MARK, "file": (io.BytesIO(row), name + ".jsonl")})
    assert uploaded.status_code == 201, uploaded.json
    dataset_id = uploaded.json["id"]
    evaluation = client.post("/api/v1/evaluations", json={"models": ["sim-echo"], "datasets": [dataset_id],
                                                          "label": MARK, "limit": 1})
    assert evaluation.status_code == 201, evaluation.json

    # a finished stress job named and labelled with the marker, with results: the results pages and compare
    add_job(app, "xss1", [level(1, [ok(100.0)])], model=MARK[:60],
            target={"kind": "manual", "key": "manual:x", "provider": "openai", "name": MARK, "label": MARK})
    add_job(app, "xss2", [level(2, [ok(90.0)])], model="plain")
    shown = {  # page -> it must show the marker (escaped)
        "/results/xss1": True, "/results": True, "/results/compare?ids=xss1,xss2": True, "/leaderboard": False,
        f"/history/{run_id}": True, f"/history/{failed_id}": True, "/history": True,
        f"/stress-tests/{stress.json['id']}": True, "/stress-tests": True, "/stress-tests/new": False,
        f"/datasets/{dataset_id}": True, "/datasets": True,
        f"/evaluations/{evaluation.json['id']}": True, "/evaluations": True, "/evaluations/new": False,
        "/": False, "/playground": False, "/results/capacity": False,
        "/models": False, "/analytics/trends": False, "/analytics/compare": False,
        "/analytics/quality-cost": False, "/analytics/correlations": False,
    }
    for page, must_show in shown.items():
        response = client.get(page)
        assert response.status_code == 200, (page, response.status_code)
        present = escaped_only(response.get_data(as_text=True), page)
        if must_show:
            assert present, f"{page} does not show the escaped marker"
        fragment = client.get(page, headers={"HX-Request": "true"})  # the HTMX partial of the same page
        escaped_only(fragment.get_data(as_text=True), f"{page} (HX-Request)")


def test_an_error_message_naming_hostile_input_is_escaped_on_a_form_page(client: Any) -> None:
    """A refused form echoes what was wrong: the page re-rendered with the error shows the input escaped."""
    response = client.post("/stress-tests/new", data={"target": MARK, "concurrency": "1", "requests": "1",
                                                      "dataset": "prompt", "prompt": "x", "submitted": "1"})
    assert response.status_code in (200, 400, 422), response.status_code
    escaped_only(response.get_data(as_text=True), "/stress-tests/new (refused)")
    refused = client.post("/api/v1/stress-tests", json={"model": MARK, "concurrency": [1], "requests": 1,
                                                        "prompt": "x"})
    assert refused.status_code in (400, 404) and refused.content_type.startswith("application/json")
