"""How fast evaluation samples are ingested and reviewed, on the scale the evaluations issue sets.

``.venv/bin/python scripts/bench_evaluations.py [--samples 10000] [--repeats 5]``

Builds, in a temporary folder, two finished evaluation runs of one multiple-choice cell each (two models
on the same dataset content), each cell's ``reviews/model/general_mcq_default.jsonl`` written in the shape
``evalscope eval`` writes (one line per sample: the messages, the target, ``sample_score`` with the
accuracy, the prediction and the extracted letter), then measures, in-process through the Flask app
(server time, no network):

* ingesting one cell of ``--samples`` review lines through the evaluation ingestion
  (``backend.evaluations.ingest.ingest_cell``: read the file, group repeats, score, Wilson interval,
  bulk insert) and committing it;
* the run page ``/evaluations/<id>?wrong=1`` (the review filtered to wrong answers, first page), the
  same deep in the run (a keyset cursor near the end), a full-text search, and the JSON
  ``/api/v1/evaluations/<id>/samples?wrong=1``;
* the side by side of the two runs' cells, ``/evaluations/side-by-side?a=&b=`` and its JSON;
* for information (no target), the samples exports of one run as CSV, JSON and XLSX (median of 3).

Each figure is the median of ``--repeats``. Targets (the issue): ingest in under 2 s; each page in under
300 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import ROOT

sys.path.insert(0, str(ROOT))

LETTERS = "ABCD"


def write_reviews(cell_dir: Path, samples: int, accuracy: float, rng: random.Random) -> int:
    """A cell's reviews file as evalscope 1.x writes it for ``general_mcq``; returns how many are right."""
    folder = cell_dir / "reviews" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    right = 0
    with (folder / "general_mcq_default.jsonl").open("w", encoding="utf-8") as out:
        for index in range(samples):
            answer = LETTERS[index % 4]
            ok = rng.random() < accuracy
            right += ok
            letter = answer if ok else LETTERS[(index + 1) % 4]
            question = (f"Question {index}: what is {index} + {index % 7}? "
                        + " ".join(f"{c}) {index + i}" for i, c in enumerate(LETTERS)))
            record = {
                "index": index, "target": answer,
                "messages": [{"role": "system", "content": "Answer with the letter of the right choice."},
                             {"role": "user", "content": question},
                             {"role": "assistant", "content": f"The answer is {letter}."}],
                "sample_score": {
                    "group_id": index, "generation_index": 0, "sample_id": index,
                    "sample_metadata": {"id": f"item-{index}"},
                    "score": {"value": {"accuracy": 1.0 if ok else 0.0}, "main_score_name": "accuracy",
                              "prediction": f"The answer is {letter}.", "extracted_prediction": letter},
                },
            }
            out.write(json.dumps(record) + "\n")
    return right


def timed(function, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["ENVIRONMENT"] = "test"

    from backend.app import create_app
    from backend.db import db
    from backend.evaluations.ingest import ingest_cell
    from backend.evaluations.models import EvaluationCell, EvaluationJob, EvaluationSample

    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluations_"))
    app = create_app({"database": {"path": str(tmp / "app.db")}, "logging": {"dir": str(tmp / "logs")}})
    rng = random.Random(11)
    digest = "f" * 64
    runs = [("benchA", "sim-a", 0.7), ("benchB", "sim-b", 0.6)]
    ingest_times, cell_ids, right = [], [], {}
    print(f"2 runs x 1 cell x {args.samples:,} samples; files in {tmp}")
    with app.app_context():
        for job_id, model, accuracy in runs:
            cell_dir = tmp / job_id / "cell_0"
            right[job_id] = write_reviews(cell_dir, args.samples, accuracy, rng)
            db.session.add(EvaluationJob(id=job_id, status="completed", model_key=model, target={}, params={},
                                         progress={}))
            cell = EvaluationCell(job_id=job_id, position=0, model_key=model, target={"name": model},
                                  dataset_id="bench", dataset_hash=digest, dataset_name="Bench MCQ",
                                  dataset_kind="mcq", benchmark="general_mcq", status="completed",
                                  done=args.samples, total=args.samples, primary_metric="acc", metrics={})
            db.session.add(cell)
            db.session.commit()
            started = time.perf_counter()
            result = ingest_cell(db.session, cell, cell_dir, ["acc"], seed=0)
            cell.metrics = result.metrics
            db.session.commit()
            ingest_times.append(time.perf_counter() - started)
            cell_ids.append(cell.id)
            stored = db.session.scalar(db.select(db.func.count()).select_from(EvaluationSample)
                                       .where(EvaluationSample.cell_id == cell.id))
            assert stored == args.samples, stored
            assert result.metrics["acc"]["n"] == args.samples
            assert abs(result.metrics["acc"]["score"] - right[job_id] / args.samples) < 1e-12
            db.session.remove()

        # A cursor near the end of run A's wrong answers: "page N" costs what page 1 does.
        s = EvaluationSample
        deep = db.session.execute(db.select(s.cell_id, s.sample_index).where(s.cell_id == cell_ids[0],
                                                                            s.correct.is_(False))
                                  .order_by(s.sample_index.desc()).limit(1).offset(30)).one()
        deep_cursor = f"{deep.cell_id}.{deep.sample_index}"
        db.session.remove()

    client = app.test_client()
    pages = {
        "run page, wrong answers (first page)": "/evaluations/benchA?wrong=1",
        "run page, wrong answers (a page near the end)": f"/evaluations/benchA?wrong=1&after={deep_cursor}",
        "run page, search 'Question 99'": "/evaluations/benchA?q=Question%2099",
        "samples JSON, wrong answers": "/api/v1/evaluations/benchA/samples?wrong=1",
        "side by side page (two 10,000-sample runs)": f"/evaluations/side-by-side?a={cell_ids[0]}&b={cell_ids[1]}",
        "side by side JSON": f"/api/v1/evaluations/side-by-side?a={cell_ids[0]}&b={cell_ids[1]}",
    }
    exports = {f"{kind.upper()} export of the samples": f"/api/v1/evaluations/benchA/export?format={kind}&what=samples"
               for kind in ("csv", "json", "xlsx")}
    figures = {}
    for name, url in pages.items():
        client.get(url)  # warm: templates compiled, SQLite pages cached, as a running server has them
        seconds, response = timed(lambda url=url: client.get(url), args.repeats)
        assert response.status_code == 200, (url, response.status_code)  # type: ignore[union-attr]
        figures[name] = seconds
    export_figures = {}
    for name, url in exports.items():
        seconds, response = timed(lambda url=url: client.get(url), 3)
        assert response.status_code == 200, (url, response.status_code)  # type: ignore[union-attr]
        export_figures[name] = (seconds, len(response.data) / 1e6)  # type: ignore[union-attr]
    wrong_a = args.samples - right["benchA"]
    page = client.get("/api/v1/evaluations/benchA/samples?wrong=1").get_json()
    assert page["total"] == wrong_a, (page["total"], wrong_a)
    comparison = client.get(f"/api/v1/evaluations/side-by-side?a={cell_ids[0]}&b={cell_ids[1]}").get_json()
    assert comparison["matched"] == args.samples

    ingest = max(ingest_times)
    print(f"ingest one cell of {args.samples:,} review lines (ingest_cell + commit): "
          f"{', '.join(f'{t * 1000:.0f} ms' for t in ingest_times)}")
    for name, seconds in figures.items():
        print(f"{name}: median {seconds * 1000:.1f} ms")
    for name, (seconds, mb) in export_figures.items():
        print(f"{name} ({args.samples:,} rows): median of 3 {seconds * 1000:.0f} ms, {mb:.1f} MB (no target)")
    print(f"run A: {wrong_a:,} wrong of {args.samples:,}; side by side: {comparison['counts']}")
    checks = [(f"ingest {args.samples:,} samples in under 2 s", ingest < 2.0)]
    checks += [(f"{name} in under 300 ms", seconds < 0.3) for name, seconds in figures.items()]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
