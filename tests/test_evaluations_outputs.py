"""Live progress from a cell's growing files: only complete lines count, each line once, and the accuracy
so far is computed the way ingestion scores (evalscope's value for MCQ, our exact match for QA)."""

from __future__ import annotations

import json
from pathlib import Path

from backend.evaluations.kind import live_value
from backend.evaluations.outputs import CellFiles, follow_cell, subset_of


def _review(index: int, value: dict[str, float], target: str, prediction: str) -> str:
    return json.dumps({"index": index, "target": [target], "sample_score": {
        "group_id": index, "score": {"value": value, "prediction": prediction, "extracted_prediction": prediction}}})


def test_growing_files_are_read_once_and_a_partial_line_waits(tmp_path: Path) -> None:
    predictions = tmp_path / "predictions" / "model" / "general_mcq_default.jsonl"
    reviews = tmp_path / "reviews" / "model" / "general_mcq_default.jsonl"
    predictions.parent.mkdir(parents=True)
    reviews.parent.mkdir(parents=True)
    lines = [_review(i, {"accuracy": float(i % 3 == 0)}, "A", "A") for i in range(5)]
    predictions.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # the fourth is being written
    reviews.write_text("\n".join(lines[:2]) + "\n")
    files = follow_cell(tmp_path, CellFiles(), live_value("acc"))
    assert (files.answered, files.reviewed, files.scored, files.score_sum) == (3, 2, 2, 1.0)

    with predictions.open("a") as out:
        out.write(lines[3][20:] + "\n" + lines[4] + "\n")
    with reviews.open("a") as out:
        out.write("\n".join(lines[2:]) + "\n")
    files = follow_cell(tmp_path, files, live_value("acc"))
    # 0 and 3 are right of 0..4: 2 of 5, each line counted once
    assert (files.answered, files.reviewed, files.scored, files.score_sum) == (5, 5, 5, 2.0)
    assert subset_of(reviews, "general_mcq") == "default"


def test_live_exact_match_normalises_like_ingestion() -> None:
    exact = live_value("exact_match")
    assert exact(json.loads(_review(0, {}, "Paris", " paris. "))) == 1.0
    assert exact(json.loads(_review(1, {}, "Paris", "I do not know."))) == 0.0
    rouge = live_value("rouge_l")
    assert rouge(json.loads(_review(2, {"Rouge-L-F": 0.5}, "a b", "a"))) == 0.5
    assert rouge(json.loads(_review(3, {}, "a b", "a"))) is None  # no value: not counted, never 0
