"""Evaluation jobs end to end: the real ``evalscope eval`` subprocess, offline, against the simulator's
answering profiles, ingested into rows and served by ``GET /api/v1/evaluations/<id>``.

Expected scores are recomputed here from the simulator's documented rule (a seeded hash per item) and
the intervals from Wilson's closed formula; nothing is copied from the run's output.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.db import db
from backend.evaluations.models import EvaluationSample
from tests.support.evaluations import (
    answered_right,
    bundled_id,
    catalogue_with_answerers,
    create,
    finished,
    job_of,
    make_app,
    upload,
    wilson,
)
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker, wait_for

LIMIT = 8
UPLOADED = [("up-1", "What colour is grass?", "Blue", "Green", "Red", "B"),
            ("up-2", "How many legs has a cat?", "Four", "Two", "Six", "A"),
            ("up-3", "Which is a fruit?", "Carrot", "Potato", "Apple", "C"),
            ("up-4", "Which is a metal?", "Iron", "Wood", "Glass", "A"),
            ("up-5", "Which is a planet?", "Moon", "Mars", "Sun", "B"),
            ("up-6", "Which is an ocean?", "Sahara", "Alps", "Pacific", "C")]


def _csv(rows: list[tuple[str, ...]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "question", "A", "B", "C", "answer"])
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Path]]:
    tmp = tmp_path_factory.mktemp("evaluations")
    answers = tmp / "answers" / "uploaded_val.csv"
    answers.parent.mkdir()
    answers.write_bytes(_csv(UPLOADED))
    sim = SimulatorProcess(extra_args=["--answers", str(answers)]).start()
    app = make_app(tmp, sim.port, models_file=catalogue_with_answerers(tmp))
    worker = ThreadWorker(app)
    try:
        yield app, app.test_client(), tmp
    finally:
        worker.close()
        sim.stop()


def _bundled_items(app: Any, kind: str, dataset_id: str) -> list[dict[str, Any]]:
    from backend.evaluations import datasets

    with app.app_context():
        return datasets.read_items(datasets.get_dataset(dataset_id), app.config["PEP"]["evaluations"])


def _cell(job: dict[str, Any], model: str, dataset_id: str) -> dict[str, Any]:
    return next(c for c in job["cells"] if c["model"] == model and c["dataset_id"] == dataset_id)


def _assert_proportion(metric: dict[str, Any], right: int, n: int) -> None:
    low, high = wilson(right, n)
    assert metric["n"] == n
    assert metric["score"] == pytest.approx(right / n)
    assert metric["method"] == "wilson"
    assert metric["ci_low"] == pytest.approx(low, abs=1e-9)
    assert metric["ci_high"] == pytest.approx(high, abs=1e-9)


def test_two_models_on_the_bundled_datasets_with_a_judge(stack: tuple[Any, Any, Path]) -> None:
    app, client, _tmp = stack
    mcq, qa = bundled_id(client, "mcq"), bundled_id(client, "qa")
    job = create(client, models=["sim-answer-a", "sim-answer-b"], datasets=[mcq, qa], limit=LIMIT,
                 max_tokens=32, judge="sim-judge")
    assert [c["status"] for c in job["cells"]] == ["queued"] * 4
    job = finished(client, job["id"], timeout=150)
    assert job["status"] == "completed", job["error"]

    mcq_items = _bundled_items(app, "mcq", mcq)[:LIMIT]
    qa_items = _bundled_items(app, "qa", qa)[:LIMIT]
    for model in ("sim-answer-a", "sim-answer-b"):
        right_mcq = [item["id"] for item in mcq_items if answered_right(model, item["id"])]
        cell = _cell(job, model, mcq)
        assert cell["status"] == "completed" and cell["primary_metric"] == "acc"
        _assert_proportion(cell["metrics"]["acc"], len(right_mcq), LIMIT)
        assert cell["progress"] == {"done": LIMIT, "total": LIMIT}

        right_qa = [item["id"] for item in qa_items if answered_right(model, item["id"])]
        cell = _cell(job, model, qa)
        assert cell["status"] == "completed", cell["error"]
        _assert_proportion(cell["metrics"]["exact_match"], len(right_qa), LIMIT)
        # sim-judge says CORRECT iff the answer equals the reference: the same items
        _assert_proportion(cell["metrics"]["judge"], len(right_qa), LIMIT)
        assert cell["metrics"]["rouge_l"]["method"] == "bootstrap" and cell["metrics"]["rouge_l"]["n"] == LIMIT
        assert cell["judge"]["input_tokens"] > 0 and cell["judge"]["output_tokens"] > 0

        with app.app_context():
            rows = db.session.scalars(db.select(EvaluationSample).where(EvaluationSample.cell_id == cell["id"])
                                      .order_by(EvaluationSample.sample_index)).all()
            assert [row.sample_id for row in rows] == [item["id"] for item in qa_items]
            for row, item in zip(rows, qa_items, strict=True):
                assert row.reference == item["response"]
                assert row.correct is answered_right(model, item["id"])
                if row.correct:  # the reference itself: ROUGE-L F1 of 1 (evalscope rounds to 1 - 5e-9)
                    assert row.scores["rouge_l"] == pytest.approx(1.0, abs=1e-6)
                assert row.judge_verdict and ('"A"' if row.correct else '"B"') in row.judge_verdict
                assert row.input_messages[-1]["role"] == "user" and item["query"] in row.input_messages[-1]["content"]

    # sim-answer-a and -b differ on known items: the MCQ rows say which
    with app.app_context():
        cells = {c["model"]: c["id"] for c in job["cells"] if c["dataset_id"] == mcq}
        for model, cell_id in cells.items():
            rows = db.session.scalars(db.select(EvaluationSample).where(EvaluationSample.cell_id == cell_id)).all()
            expected = {i["id"] for i in mcq_items if answered_right(model, i["id"])}
            assert {r.sample_id for r in rows if r.correct} == expected
            assert all(r.extracted in "ABCD" and r.extracted for r in rows)

    listed = client.get("/api/v1/evaluations?model=sim-answer-b").json
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    assert client.get("/api/v1/evaluations?status=failed").json["total"] == 0
    first = client.get(f"/api/v1/evaluations/{job['id']}/log?lines=5000").get_data(as_text=True).split("\n")[0]
    assert first.startswith("$ -m backend.evaluations.evalscope_entry --pep-cell=0 eval --model=sim-answer-a")
    assert "--pep-cell=3" in first and "--api-key" not in first


def test_an_uploaded_dataset(stack: tuple[Any, Any, Path]) -> None:
    app, client, _tmp = stack
    dataset = upload(client, "mcq", "Uploaded quiz", _csv(UPLOADED), "quiz.csv")
    job = create(client, models=["sim-answer-a"], datasets=[dataset["id"]])
    again = create(client, models=["sim-answer-a"], datasets=[dataset["id"]], repeats=2)
    job, again = finished(client, job["id"]), finished(client, again["id"])
    assert job["status"] == "completed", job["error"]
    cell = job["cells"][0]
    assert cell["dataset_hash"] == dataset["content_hash"] and cell["dataset_name"] == "Uploaded quiz"
    right = sum(answered_right("sim-answer-a", row[0]) for row in UPLOADED)
    _assert_proportion(cell["metrics"]["acc"], right, len(UPLOADED))

    # Two repeats: n is still the number of items, each item's score the mean of its repeats (the simulator
    # answers an item the same way each time), and the interval a bootstrap over the per-item means.
    assert again["status"] == "completed", again["error"]
    cell = again["cells"][0]
    acc = cell["metrics"]["acc"]
    assert (acc["n"], acc["repeats"], acc["method"]) == (len(UPLOADED), 2, "bootstrap")
    assert acc["score"] == pytest.approx(right / len(UPLOADED))
    assert acc["ci_low"] <= acc["score"] <= acc["ci_high"]
    assert cell["progress"] == {"done": 2 * len(UPLOADED), "total": 2 * len(UPLOADED)}
    with app.app_context():
        rows = db.session.scalars(db.select(EvaluationSample).where(EvaluationSample.cell_id == cell["id"])).all()
        assert sorted(len(row.repeat_scores) for row in rows) == [2] * len(UPLOADED)
        assert {row.sample_id for row in rows if row.correct} == {r[0] for r in UPLOADED
                                                                 if answered_right("sim-answer-a", r[0])}


def test_cancel_during_a_run(stack: tuple[Any, Any, Path]) -> None:
    _app, client, _tmp = stack
    mcq = bundled_id(client, "mcq")
    job = create(client, models=["sim-answer-a", "sim-answer-b"], datasets=[mcq], batch_size=1)
    wait_for(lambda: job_of(client, job["id"])["cells"][0]["progress"]["done"] > 0, 60, "the first answers")
    response = client.post(f"/api/v1/evaluations/{job['id']}/cancel")
    assert response.status_code in (200, 202)
    ended = finished(client, job["id"], timeout=60)
    assert ended["status"] == "cancelled" and ended["error"] == "cancelled by request"
    statuses = [c["status"] for c in ended["cells"]]
    assert "completed" not in statuses[1:] and statuses[-1] == "cancelled"


def test_an_unreachable_endpoint_fails_fast_with_the_reason(stack: tuple[Any, Any, Path]) -> None:
    _app, client, _tmp = stack
    mcq = bundled_id(client, "mcq")
    started = time.monotonic()
    job = create(client, manual_config={"base_url": "http://127.0.0.1:9/v1", "model_name": "nobody"},
                 datasets=[mcq], limit=3)
    ended = finished(client, job["id"], timeout=30)
    assert time.monotonic() - started < 20
    assert ended["status"] == "failed"
    assert "cannot connect to http://127.0.0.1:9" in ended["error"]
    assert ended["cells"][0]["status"] == "failed" and "cannot connect" in ended["cells"][0]["error"]


@pytest.mark.parametrize(("body", "field"), [
    ({"datasets": ["x"]}, "body"),
    ({"models": ["sim-answer-a"]}, "datasets"),
    ({"models": ["sim-answer-a"], "datasets": ["nope"]}, "datasets[0]"),
    ({"models": ["nobody"], "datasets": ["gsm8k"]}, "models[0]"),
    ({"models": ["sim-answer-a"], "datasets": ["../etc"]}, "datasets"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "limit": 0}, "limit"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "limit": "5"}, "limit"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "repeats": 99}, "repeats"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "temperature": 3}, "temperature"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "metrics": ["bleu"]}, "metrics[0]"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "metrics": ["judge"]}, "metrics"),
    ({"models": ["sim-answer-a"], "datasets": ["gsm8k"], "surprise": 1}, "surprise"),
])
def test_bad_bodies_name_the_field(stack: tuple[Any, Any, Path], body: dict[str, Any], field: str) -> None:
    _app, client, _tmp = stack
    response = client.post("/api/v1/evaluations", json=body)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert field in (error.get("details") or {}).get("field", "") + error["message"]


def test_a_builtin_benchmark_that_is_not_cached_is_refused_plainly(stack: tuple[Any, Any, Path]) -> None:
    _app, client, _tmp = stack
    started = time.monotonic()
    response = client.post("/api/v1/evaluations", json={"models": ["sim-answer-a"], "datasets": ["gsm8k"]})
    assert time.monotonic() - started < 2
    assert response.status_code == 400
    assert "not available offline" in response.json["error"]["message"]


def test_a_bedrock_model_through_our_converse_model_api(stack: tuple[Any, Any, Path], bedrock_server: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import BEDROCK_CREDENTIALS
    from tests.support.bedrock_server import OK_ANSWER

    app, client, _tmp = stack
    for name, value in {**BEDROCK_CREDENTIALS, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_server.url}.items():
        monkeypatch.setenv(name, value)  # the worker's evalscope inherits these
    qa = bundled_id(client, "qa")
    seen_before = len(bedrock_server.requests)  # the server is shared by the whole session
    job = create(client, models=["claude35"], datasets=[qa], limit=3, max_tokens=64)
    assert job["target"]["models"][0]["provider"] == "bedrock"
    job = finished(client, job["id"])
    assert job["status"] == "completed", job["error"]
    assert "--eval-type=pep_bedrock" in client.get(f"/api/v1/evaluations/{job['id']}/log?lines=5000").get_data(
        as_text=True).split("\n")[0]

    requests = bedrock_server.requests[seen_before:]
    assert {r.model_id for r in requests} == {"test.ok"} and len(requests) == 3
    assert all(r.path.endswith("/converse") for r in requests)
    assert all(r.body["inferenceConfig"]["maxTokens"] == 64 for r in requests)
    items = _bundled_items(app, "qa", qa)[:3]
    asked = sorted(r.body["messages"][-1]["content"][0]["text"] for r in requests)
    assert all(any(item["query"] in text for text in asked) for item in items)

    cell = job["cells"][0]
    _assert_proportion(cell["metrics"]["exact_match"], 0, 3)  # the test model always says the same sentence
    with app.app_context():
        rows = db.session.scalars(db.select(EvaluationSample).where(EvaluationSample.cell_id == cell["id"])).all()
        assert [row.prediction for row in rows] == [OK_ANSWER] * 3


def test_events_follow_a_run_to_its_end_and_a_manual_key_stays_secret(stack: tuple[Any, Any, Path]) -> None:
    import json
    import sqlite3

    app, client, tmp = stack
    from tests.support.evaluations import upload as _upload

    dataset = _upload(client, "mcq", "Uploaded quiz", _csv(UPLOADED), "quiz.csv")
    sim_url = app.config["PEP"]["simulator"]["port"]
    key = "sk-evaluation-secret-123"
    job = create(client, manual_config={"base_url": f"http://127.0.0.1:{sim_url}/v1", "model_name": "sim-answer-b",
                                        "api_key": key}, datasets=[dataset["id"]], label="manual b")
    assert key not in json.dumps(job) and job["target"]["models"][0]["api_key_given"] is True
    response = client.get(f"/api/v1/evaluations/{job['id']}/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [block for block in response.get_data(as_text=True).split("\n\n") if block.startswith("event:")]
    names = [block.split("\n", 1)[0].removeprefix("event: ") for block in events]
    assert names[-1] == "end" and "cell" in names and "progress" in names
    end = json.loads(events[-1].split("data: ", 1)[1])
    assert end["status"] == "completed", end["error"]
    right = sum(answered_right("sim-answer-b", row[0]) for row in UPLOADED)
    _assert_proportion(end["cells"][0]["metrics"]["acc"], right, len(UPLOADED))
    cells = [json.loads(block.split("data: ", 1)[1]) for block in events if block.startswith("event: cell")]
    order = ["queued", "running", "completed"]
    seen = [order.index(c["status"]) for c in cells]
    assert seen == sorted(seen) and seen[-1] == 2  # a cell only moves forward, and ends completed

    log = client.get(f"/api/v1/evaluations/{job['id']}/log?lines=5000").get_data(as_text=True)
    assert key not in log and "--pep-cell=0" in log
    with sqlite3.connect(app.config["PEP"]["database"]["path"]) as connection:
        stored = connection.execute("SELECT api_key_encrypted, target, params FROM evaluation_jobs WHERE id = ?",
                                    (job["id"],)).fetchone()
    assert stored[0] is None and key not in stored[1] + stored[2]  # wiped when it finished, never in clear
    outputs = "".join(path.read_text(errors="replace") for path in (tmp / "eval-outputs" / job["id"]).rglob("*")
                      if path.is_file())
    assert key not in outputs


def test_refusals_that_depend_on_the_dataset(stack: tuple[Any, Any, Path]) -> None:
    _app, client, _tmp = stack
    mcq, qa = bundled_id(client, "mcq"), bundled_id(client, "qa")
    cases = [({"datasets": [mcq], "few_shot": 6}, "few_shot"),  # the arithmetic set has 5 few-shot items
             ({"datasets": [qa], "metrics": ["acc"]}, "metrics"),  # accuracy is for multiple choice
             ({"datasets": [mcq], "judge": "sim-judge"}, "judge"),  # a judge scores QA only
             ({"datasets": [mcq], "judge": "nobody"}, "judge"),
             ({"datasets": [mcq], "limit": 10_001}, "limit")]
    before = client.get("/api/v1/evaluations").json["total"]
    for body, field in cases:
        response = client.post("/api/v1/evaluations", json={"models": ["sim-answer-a"], **body})
        assert response.status_code == 400, (body, response.json)
        assert response.json["error"]["details"]["field"] == field, response.json
    assert client.get("/api/v1/evaluations").json["total"] == before  # nothing was queued


def test_few_shot_examples_come_from_the_dev_file(stack: tuple[Any, Any, Path]) -> None:
    from backend.evaluations import datasets

    app, client, _tmp = stack
    mcq = bundled_id(client, "mcq")
    job = finished(client, create(client, models=["sim-answer-a"], datasets=[mcq], limit=4, few_shot=2)["id"])
    assert job["status"] == "completed", job["error"]
    with app.app_context():
        dataset = datasets.get_dataset(mcq)
        shots = datasets.read_items(dataset, app.config["PEP"]["evaluations"], dev=True)
        items = datasets.read_items(dataset, app.config["PEP"]["evaluations"])[:4]
        rows = db.session.scalars(db.select(EvaluationSample).where(EvaluationSample.cell_id == job["cells"][0]["id"])
                                  .order_by(EvaluationSample.sample_index)).all()
    for row, item in zip(rows, items, strict=True):
        prompt = "\n".join(message["content"] for message in row.input_messages)
        assert shots[0]["question"] in prompt and shots[1]["question"] in prompt
        assert shots[2]["question"] not in prompt and item["question"] in prompt
    right = sum(answered_right("sim-answer-a", item["id"]) for item in items)
    _assert_proportion(job["cells"][0]["metrics"]["acc"], right, 4)


def test_a_server_that_never_answers_is_bounded_by_the_request_timeout(stack: tuple[Any, Any, Path]) -> None:
    _app, client, _tmp = stack
    mcq = bundled_id(client, "mcq")
    started = time.monotonic()
    job = create(client, models=["sim-hang"], datasets=[mcq], limit=2, timeout_s=2, retries=1)
    ended = finished(client, job["id"], timeout=60)
    took = time.monotonic() - started
    assert ended["status"] == "failed"
    cell = ended["cells"][0]
    assert cell["status"] == "failed" and "timed out" in cell["error"].lower(), cell["error"]
    # two attempts of 2 s (retry_interval 1 s) plus evalscope's start-up, not evalscope's ~47 s per sample
    assert took < 30, took


def test_a_judge_without_a_usable_verdict_fails_the_cell_and_its_tokens_are_priced(
        stack: tuple[Any, Any, Path], bedrock_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """claude35 (the local Bedrock server's test.ok) judges: it always says the same sentence, never the
    JSON verdict evalscope asks for, so the judge metric cannot be computed: the cell fails saying so (the
    judge score is not 0), exact match and ROUGE-L are kept, and the judge's Bedrock tokens are priced from
    config/pricing.yaml (claude35: $3 per M input, $15 per M output)."""
    import yaml

    from backend.config import resolve_path
    from tests.conftest import BEDROCK_CREDENTIALS

    app, client, _tmp = stack
    for name, value in {**BEDROCK_CREDENTIALS, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_server.url}.items():
        monkeypatch.setenv(name, value)
    qa = bundled_id(client, "qa")
    seen_before = len(bedrock_server.requests)
    job = finished(client, create(client, models=["sim-answer-a"], datasets=[qa], limit=3, judge="claude35")["id"])
    assert job["status"] == "failed"
    cell = job["cells"][0]
    assert cell["status"] == "failed" and cell["error"].startswith("judge: the judge gave no usable verdict")
    assert "judge" not in cell["metrics"]
    right = sum(answered_right("sim-answer-a", item["id"]) for item in _bundled_items(app, "qa", qa)[:3])
    _assert_proportion(cell["metrics"]["exact_match"], right, 3)
    judged = bedrock_server.requests[seen_before:]
    assert len(judged) >= 3 and all("[Reference Answer]" in r.body["messages"][-1]["content"][0]["text"]
                                    for r in judged)
    pricing_file = resolve_path(app.config["PEP"]["results"]["pricing_file"])
    prices = yaml.safe_load(pricing_file.read_text())["bedrock"]["claude35"]
    tokens = cell["judge"]
    assert tokens["input_tokens"] > 0 and tokens["output_tokens"] > 0
    expected = (tokens["input_tokens"] * prices["input_per_m"] + tokens["output_tokens"] * prices["output_per_m"]) / 1e6
    assert tokens["cost_usd"] == pytest.approx(expected, rel=1e-4)
