"""Exports of an evaluation run (backend/evaluations/export.py via /api/v1/evaluations/<id>/export): CSV, JSON
and XLSX read back (csv, json, openpyxl) give the rows the test wrote; unknown stays unknown, model text
that looks like a formula stays text."""

from __future__ import annotations

import csv
import io
import json

import pytest
from flask import Flask
from openpyxl import load_workbook

from tests.test_evaluations_review import add_run

TRICKY = "=HYPERLINK(\"http://x\",\"click\")"
SAMPLES = [
    {"sample_id": "q0", "correct": True, "score": 1.0, "input": "What is 2+2?", "prediction": "The answer is B",
     "extracted": "B", "reference": "B"},
    {"sample_id": "q1", "correct": False, "score": 0.0, "input": "Café, naïve, 日本語", "prediction": TRICKY,
     "extracted": None, "reference": "C", "judge_explanation": "line one\nline two, \"quoted\""},
    {"sample_id": "q2", "correct": None, "score": None, "input": "bell\x07 here", "prediction": "ok\x01",
     "reference": "D"},
]
METRICS = {"acc": {"score": 0.5, "n": 2, "ci_low": 0.0945, "ci_high": 0.9055, "method": "wilson"}}


@pytest.fixture
def run(app: Flask) -> list[int]:
    return add_run(app, "exp1", [
        {"model": "sim-a", "samples": [dict(s) for s in SAMPLES], "metrics": METRICS},
        {"model": "sim-b", "samples": [dict(SAMPLES[0])], "metrics": {}, "status": "failed",
         "error": "acc: no scored sample"},
    ])


def _get(client, **args):  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/evaluations/exp1/export", query_string=args)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_scores_csv_and_json_round_trip(client, run) -> None:  # type: ignore[no-untyped-def]
    a, b = run
    response = _get(client, format="csv")
    assert response.headers["Content-Disposition"] == 'attachment; filename="evaluation-exp1-scores.csv"'
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(r["cell_id"], r["model"], r["metric"]) for r in rows] == \
        [(str(a), "sim-a", "acc"), (str(b), "sim-b", "acc")]
    assert (float(rows[0]["value"]), int(rows[0]["n"]), float(rows[0]["ci_low"]), float(rows[0]["ci_high"])) == \
        (0.5, 2, 0.0945, 0.9055)
    # The failed cell's score is unknown: an empty cell with its reason, never 0.
    assert rows[1]["value"] == "" and rows[1]["n"] == "" and rows[1]["error"] == "acc: no scored sample"
    body = json.loads(_get(client, format="json", what="scores").get_data(as_text=True))
    assert body["job"]["id"] == "exp1" and body["scores"][1]["value"] is None
    assert body["scores"][0]["ci_method"] == "wilson"


def test_samples_csv_json_and_xlsx_round_trip(client, run) -> None:  # type: ignore[no-untyped-def]
    a, _ = run
    text = _get(client, format="csv", what="samples").get_data(as_text=True)
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["cell_id"] == str(a)]
    assert [r["sample_id"] for r in rows] == ["q0", "q1", "q2"]
    assert rows[1]["prediction"] == TRICKY and rows[1]["judge_explanation"] == SAMPLES[1]["judge_explanation"]
    assert rows[1]["input"] == "user: Café, naïve, 日本語" and rows[1]["correct"] == "false"
    assert rows[2]["score"] == "" and rows[2]["correct"] == "" and rows[0]["repeats"] == "1"

    body = json.loads(_get(client, format="json", what="samples").get_data(as_text=True))
    mine = [s for s in body["samples"] if s["cell_id"] == a]
    assert [s["prediction"] for s in mine] == [s["prediction"] for s in SAMPLES]
    assert mine[2]["score"] is None and mine[0]["correct"] is True

    response = _get(client, format="xlsx", what="samples")
    assert response.content_type.startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(response.data)).active
    table = [list(row) for row in sheet.iter_rows(values_only=True)]
    header, data = table[0], [dict(zip(table[0], row, strict=True)) for row in table[1:]]
    assert header[:6] == ["job_id", "cell_id", "model", "dataset", "subset", "sample_id"]
    mine = [row for row in data if row["cell_id"] == a]
    assert [row["sample_id"] for row in mine] == ["q0", "q1", "q2"]
    assert mine[0]["score"] == 1.0 and mine[0]["correct"] is True and mine[2]["score"] is None
    assert mine[1]["prediction"] == TRICKY  # text, not a formula
    assert mine[2]["prediction"] == "ok" and mine[2]["input"] == "user: bell here"  # control characters dropped
    cell = next(c for row in sheet.iter_rows(min_row=3, max_row=3) for c in row if c.value == TRICKY)
    assert cell.data_type == "s"


def test_scores_xlsx_round_trip(client, run) -> None:  # type: ignore[no-untyped-def]
    sheet = load_workbook(io.BytesIO(_get(client, format="xlsx").data)).active
    table = list(sheet.iter_rows(values_only=True))
    rows = [dict(zip(table[0], row, strict=True)) for row in table[1:]]
    assert [(r["model"], r["value"], r["n"]) for r in rows] == [("sim-a", 0.5, 2), ("sim-b", None, None)]


@pytest.mark.parametrize(("args", "field"), [({}, "format"), ({"format": "pdf"}, "format"),
                                              ({"format": "csv", "what": "everything"}, "what")])
def test_bad_export_arguments_are_400_naming_the_argument(client, run, args, field) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/evaluations/exp1/export", query_string=args)
    assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == field
