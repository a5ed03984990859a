"""The per-sample review and the side by side (backend/evaluations/review.py, review_api.py) on fixed rows:
every expected count is computed here from the rows the test wrote, never read back from the service."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from backend.db import db
from backend.evaluations.models import EvaluationCell, EvaluationJob, EvaluationSample

HASH = "a" * 64
OTHER_HASH = "b" * 64


def add_run(app: Flask, job_id: str, cells: list[dict[str, Any]], *, status: str = "completed",
            models: str = "sim-a,sim-b") -> list[int]:
    """A finished run with its cells; each cell dict has ``model``, ``samples`` (a list of sample dicts:
    sample_id, correct, score, subset, prediction, reference, input) and optional columns. Returns the cell ids."""
    ids = []
    with app.app_context():
        db.session.add(EvaluationJob(id=job_id, status=status, model_key=models, target={}, params={}, progress={}))
        db.session.flush()
        for position, spec in enumerate(cells):
            samples = spec.pop("samples")
            cell = EvaluationCell(job_id=job_id, position=position, model_key=spec.pop("model"),
                                  target={"name": spec.pop("name", None)},
                                  dataset_id=spec.pop("dataset_id", "arith"), dataset_hash=spec.pop("hash", HASH),
                                  dataset_name=spec.pop("dataset_name", "Arithmetic"), dataset_kind="mcq",
                                  benchmark="general_mcq", status=spec.pop("status", "completed"),
                                  done=len(samples), total=len(samples), primary_metric="acc", **spec)
            db.session.add(cell)
            db.session.flush()
            for index, sample in enumerate(samples):
                db.session.add(EvaluationSample(
                    cell_id=cell.id, sample_index=index, sample_id=str(sample.get("sample_id", index)),
                    subset=sample.get("subset", "default"),
                    input_messages=[{"role": "user", "content": sample.get("input", f"question {index}")}],
                    prediction=sample.get("prediction", f"answer {index}"), extracted=sample.get("extracted"),
                    reference=sample.get("reference", "A"), score=sample.get("score"),
                    correct=sample.get("correct"), repeat_scores=sample.get("repeat_scores", [sample.get("score")]),
                    judge_explanation=sample.get("judge_explanation")))
            ids.append(cell.id)
        db.session.commit()
    return ids


def mcq(correct_pattern: list[bool], subsets: tuple[str, ...] = ("default",), **extra: Any) -> list[dict[str, Any]]:
    return [{"sample_id": f"q{i}", "correct": ok, "score": 1.0 if ok else 0.0, "subset": subsets[i % len(subsets)],
             **extra} for i, ok in enumerate(correct_pattern)]


# 30 samples; model A is right on every sample whose number is not a multiple of 3, B on the even ones.
A_RIGHT = [i % 3 != 0 for i in range(30)]
B_RIGHT = [i % 2 == 0 for i in range(30)]


@pytest.fixture
def run(app: Flask) -> dict[str, Any]:
    cells = add_run(app, "run1", [
        {"model": "sim-a", "name": "Sim A", "samples": mcq(A_RIGHT, ("algebra", "geometry")),
         "metrics": {"acc": {"score": 20 / 30, "n": 30, "ci_low": 0.49, "ci_high": 0.81, "method": "wilson"}}},
        {"model": "sim-b", "name": "Sim B", "samples": mcq(B_RIGHT, ("algebra", "geometry")),
         "metrics": {"acc": {"score": 0.5, "n": 30, "ci_low": 0.33, "ci_high": 0.67, "method": "wilson"}}},
    ])
    return {"cells": cells}


def test_wrong_answers_only_pages_through_every_wrong_sample_once(client, run) -> None:  # type: ignore[no-untyped-def]
    expected = {("sim-a", f"q{i}") for i, ok in enumerate(A_RIGHT) if not ok} | \
               {("sim-b", f"q{i}") for i, ok in enumerate(B_RIGHT) if not ok}
    seen, cursor, pages = [], None, 0
    while True:
        args = {"wrong": "1", "limit": "4", **({"after": cursor} if cursor else {})}
        body = client.get("/api/v1/evaluations/run1/samples", query_string=args).get_json()
        assert body["total"] == len(expected)
        seen += [(s["model"], s["sample_id"]) for s in body["samples"]]
        assert all(s["correct"] is False for s in body["samples"])
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == len(expected) and set(seen) == expected
    assert pages == -(-len(expected) // 4)
    # And back: the page before the last cursor's page holds the samples just before it, in order.
    last = client.get("/api/v1/evaluations/run1/samples", query_string={"wrong": "1", "limit": "4",
                                                                        "before": body["previous"]}).get_json()
    first_of_last_page = len(seen) - len(body["samples"])
    assert [(s["model"], s["sample_id"]) for s in last["samples"]] == seen[first_of_last_page - 4:first_of_last_page]


def test_filters_by_cell_subset_score_and_text(client, run) -> None:  # type: ignore[no-untyped-def]
    a, b = run["cells"]
    get = lambda **args: client.get("/api/v1/evaluations/run1/samples", query_string={"limit": 500, **args}).get_json()  # noqa: E731
    only_b = get(cell=b)
    assert only_b["total"] == 30 and {s["model"] for s in only_b["samples"]} == {"sim-b"}
    geometry_wrong_a = get(cell=a, subset="geometry", wrong=1)
    assert geometry_wrong_a["total"] == sum(1 for i, ok in enumerate(A_RIGHT) if i % 2 == 1 and not ok)
    assert get(min_score="0.5")["total"] == sum(A_RIGHT) + sum(B_RIGHT)
    assert get(max_score="0.5")["total"] == 60 - sum(A_RIGHT) - sum(B_RIGHT)
    # "question 1" is the input of q1, and of q10..q19 (substring), in both cells.
    expected = 2 * sum(1 for i in range(30) if "question 1" in f"question {i}")
    assert get(q="QUESTION 1")["total"] == expected
    assert get(q="answer 29")["total"] == 2  # the prediction
    assert get(q="100%_")["total"] == 0  # LIKE's wildcards are text here


def test_search_finds_non_ascii_input_and_treats_wildcards_as_text(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    add_run(app, "run2", [{"model": "sim-a", "samples": [
        {"sample_id": "x", "correct": True, "score": 1.0, "input": "Où est le café ?"},
        {"sample_id": "y", "correct": False, "score": 0.0, "input": "50% of 10", "prediction": "5_0"},
        {"sample_id": "z", "correct": False, "score": 0.0, "input": "500 of 10"}]}])
    get = lambda q: client.get("/api/v1/evaluations/run2/samples", query_string={"q": q}).get_json()  # noqa: E731
    assert [s["sample_id"] for s in get("CAFÉ")["samples"]] in (["x"], [])  # lower() of É is ASCII-only in SQLite
    assert [s["sample_id"] for s in get("café")["samples"]] == ["x"]
    assert [s["sample_id"] for s in get("50%")["samples"]] == ["y"]
    assert [s["sample_id"] for s in get("5_0")["samples"]] == ["y"]


def test_side_by_side_counts_and_disagreements_first(client, run) -> None:  # type: ignore[no-untyped-def]
    a, b = run["cells"]
    body = client.get("/api/v1/evaluations/side-by-side", query_string={"a": a, "b": b, "limit": 500}).get_json()
    pairs = list(zip(A_RIGHT, B_RIGHT, strict=True))
    expected = {"both_right": pairs.count((True, True)), "both_wrong": pairs.count((False, False)),
                "only_a": pairs.count((True, False)), "only_b": pairs.count((False, True))}
    assert body["counts"] == expected and body["matched"] == 30
    outcomes = [p["outcome"] for p in body["pairs"]]
    disagree = expected["only_a"] + expected["only_b"]
    assert set(outcomes[:disagree]) == {"only_a", "only_b"}
    assert "only_a" not in outcomes[disagree:] and "only_b" not in outcomes[disagree:]
    for pair in body["pairs"]:
        i = int(pair["sample_id"][1:])
        assert (pair["a"]["correct"], pair["b"]["correct"]) == (A_RIGHT[i], B_RIGHT[i])
        assert pair["a"]["model"] == "sim-a" and pair["b"]["model"] == "sim-b"
    only_b = client.get("/api/v1/evaluations/side-by-side", query_string={"a": a, "b": b, "outcome": "only_b"})
    assert {p["sample_id"] for p in only_b.get_json()["pairs"]} == \
        {f"q{i}" for i, (ra, rb) in enumerate(pairs) if rb and not ra}


def test_side_by_side_across_two_runs_matches_by_sample_id(app: Flask, client, run) -> None:  # type: ignore[no-untyped-def]
    # The second run stored its samples in another order and has two the first lacks.
    reordered = [*reversed(mcq(B_RIGHT)), {"sample_id": "extra1", "correct": True, "score": 1.0},
                 {"sample_id": "extra2", "correct": False, "score": 0.0}]
    (c,) = add_run(app, "run3", [{"model": "sim-c", "samples": reordered}])
    body = client.get("/api/v1/evaluations/side-by-side", query_string={"a": run["cells"][0], "b": c}).get_json()
    pairs = list(zip(A_RIGHT, B_RIGHT, strict=True))
    assert body["matched"] == 30 and body["only_in_b"] == 2 and body["only_in_a"] == 0
    assert body["counts"]["only_a"] == pairs.count((True, False))


def test_side_by_side_refuses_different_datasets_and_bad_arguments(app: Flask, client, run) -> None:  # type: ignore[no-untyped-def]
    (other,) = add_run(app, "run4", [{"model": "sim-a", "hash": OTHER_HASH, "samples": mcq([True])}])
    a, b = run["cells"]
    cases = [({"a": a, "b": other}, "b"), ({"b": b}, "a"), ({"a": "x1", "b": b}, "a"), ({"a": a, "b": a}, "b"),
             ({"a": a, "b": b, "outcome": "maybe"}, "outcome"), ({"a": a, "b": b, "limit": "0"}, "limit"),
             ({"a": a, "b": b, "offset": "-1"}, "offset")]
    for args, field in cases:
        response = client.get("/api/v1/evaluations/side-by-side", query_string=args)
        assert response.status_code == 400, args
        assert response.get_json()["error"]["details"]["field"] == field, args
    assert client.get("/api/v1/evaluations/side-by-side", query_string={"a": a, "b": 999999}).status_code == 404


@pytest.mark.parametrize(("args", "field"), [
    ({"limit": "0"}, "limit"), ({"limit": "five"}, "limit"), ({"limit": "501"}, "limit"),
    ({"cell": "abc"}, "cell"), ({"cell": "999999"}, "cell"), ({"wrong": "maybe"}, "wrong"),
    ({"min_score": "nan"}, "min_score"), ({"max_score": "x"}, "max_score"),
    ({"min_score": "0.8", "max_score": "0.2"}, "max_score"), ({"q": "x" * 201}, "q"),
    ({"after": "12"}, "after"), ({"before": "a.b"}, "before"), ({"after": "1.2", "before": "1.3"}, "before"),
])
def test_bad_sample_arguments_are_400_naming_the_argument(client, run, args, field) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/evaluations/run1/samples", query_string=args)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == field


def test_unknown_run_is_404(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/evaluations/nope/samples").status_code == 404
    assert client.get("/api/v1/evaluations/nope/export?format=csv").status_code == 404


def test_continuous_scores_count_as_right_from_half_and_as_wrong_below_one(app: Flask, client) -> None:  # type: ignore[no-untyped-def]
    a_scores, b_scores = [0.9, 0.2, 0.6, None, 1.0], [0.4, 0.8, 0.5, 0.1, 1.0]
    a, b = add_run(app, "rouge", [
        {"model": "sim-a", "samples": [{"sample_id": f"s{i}", "correct": None, "score": v}
                                       for i, v in enumerate(a_scores)]},
        {"model": "sim-b", "samples": [{"sample_id": f"s{i}", "correct": None, "score": v}
                                       for i, v in enumerate(b_scores)]}])
    right = lambda v: v is not None and v >= 0.5  # noqa: E731 - review.CONTINUOUS_RIGHT, written again
    pairs = [(right(x), right(y)) for x, y in zip(a_scores, b_scores, strict=True)]
    body = client.get("/api/v1/evaluations/side-by-side", query_string={"a": a, "b": b}).get_json()
    assert body["counts"] == {"only_a": pairs.count((True, False)), "only_b": pairs.count((False, True)),
                              "both_wrong": pairs.count((False, False)), "both_right": pairs.count((True, True))}
    assert [p["sample_id"] for p in body["pairs"]][:2] == ["s0", "s1"]  # only A, then only B
    wrong = client.get("/api/v1/evaluations/rouge/samples", query_string={"cell": a, "wrong": 1}).get_json()
    assert [s["sample_id"] for s in wrong["samples"]] == [f"s{i}" for i, v in enumerate(a_scores) if v is None or v < 1]


def test_the_score_chart_waits_for_a_score_and_leaves_unknown_ones_out() -> None:
    from backend.evaluations.figures import score_figure

    running = [{"model": "a", "dataset": "d", "metric": "acc", "value": None, "ci_low": None, "ci_high": None,
                "n": 0}]
    assert score_figure([]) is None and score_figure(running) is None  # no empty axes while nothing is scored
    scored = {"model": "b", "dataset": "d", "metric": "acc", "value": 0.75, "ci_low": 0.598, "ci_high": 0.858, "n": 40}
    figure = score_figure([*running, scored])
    assert figure is not None
    unknown, known = figure["data"]
    assert unknown["x"] == [] and unknown["y"] == []  # a gap, never a bar at 0
    assert known["y"] == [0.75]
    assert known["error_y"]["array"] == [pytest.approx(0.858 - 0.75)]
    assert known["error_y"]["arrayminus"] == [pytest.approx(0.75 - 0.598)]
