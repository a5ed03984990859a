"""How fast the leaderboard and a paired comparison are served, on the scale the analytics issue sets.

``.venv/bin/python scripts/bench_leaderboard.py [--models 50] [--datasets 30] [--samples 500] [--repeats 5]``

Builds, in a temporary SQLite database, one finished evaluation run per dataset with one cell per model
(``--models`` x ``--datasets`` cells), each with ``--samples`` scored right/wrong samples (bulk inserts, the
way the evaluation ingestion writes them) and its metric with a Wilson interval, then measures, in-process
through the Flask app (server time, no network; each figure the median of ``--repeats``):

* ``GET /api/v1/leaderboard`` (every cell: columns, best, ties, mean rank) and the ``/leaderboard`` page;
* ``GET /api/v1/analytics/compare?models=a,b&dataset=d`` (two models' samples matched by id, exact McNemar,
  the paired bootstrap interval of the difference, the disagreements) and its page;
* for information (no target): trends, correlations (without stress results) and the overview.

Targets (the issue): the leaderboard under 300 ms; a paired comparison of two models under 500 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchkit import ROOT

sys.path.insert(0, str(ROOT))


def timed(call, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        response = call()
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, response.data[:500]
    return statistics.median(times)


def build(app, models: int, datasets: int, samples: int) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    from backend.db import db
    from backend.evaluations.models import EvaluationCell, EvaluationJob, EvaluationSample
    from backend.evaluations.scoring import wilson

    rng = random.Random(12)
    skill = [0.3 + 0.6 * rng.random() for _ in range(models)]
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with app.app_context():
        for d in range(datasets):
            job_id = f"bench{d:03d}"
            when = t0 + timedelta(hours=d)
            db.session.add(EvaluationJob(id=job_id, status="completed", model_key="bench", target={}, params={},
                                         progress={}, created_at=when, finished_at=when))
            db.session.flush()
            cells = []
            for m in range(models):
                cell = EvaluationCell(job_id=job_id, position=m, model_key=f"model-{m:02d}",
                                      target={"name": f"Model {m:02d}", "provider": "openai"},
                                      dataset_id=f"ds{d:02d}", dataset_hash=f"{d:064x}",
                                      dataset_name=f"Dataset {d:02d}",
                                      dataset_kind="mcq", benchmark="general_mcq", status="completed", done=samples,
                                      total=samples, primary_metric="acc", metrics={}, finished_at=when)
                db.session.add(cell)
                cells.append(cell)
            db.session.flush()
            rows = []
            for m, cell in enumerate(cells):
                right = [rng.random() < skill[m] for _ in range(samples)]
                estimate = wilson(sum(right), samples)
                cell.metrics = {"acc": {"score": estimate.value, "n": samples, "ci_low": estimate.low,
                                        "ci_high": estimate.high, "method": "wilson"}}
                rows += [{"cell_id": cell.id, "sample_index": i, "sample_id": f"q{i}", "subset": "default",
                          "input_messages": [{"role": "user", "content": f"question {i}"}], "prediction": "B",
                          "extracted": "B", "reference": "A" if ok else "B", "score": 1.0 if ok else 0.0,
                          "correct": ok, "scores": {"acc": 1.0 if ok else 0.0}, "repeat_scores": [1.0 if ok else 0.0],
                          "meta": {}} for i, ok in enumerate(right)]
            db.session.execute(insert(EvaluationSample), rows)
            db.session.commit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--datasets", type=int, default=30)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["ENVIRONMENT"] = "test"
    from backend.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-leaderboard-"))
    app = create_app({"database": {"path": str(tmp / "app.db")}, "logging": {"dir": str(tmp / "logs")}})
    start = time.perf_counter()
    build(app, args.models, args.datasets, args.samples)
    print(f"built {args.models} models x {args.datasets} datasets x {args.samples} samples "
          f"({args.models * args.datasets * args.samples:,} sample rows) in {time.perf_counter() - start:.0f} s")
    client = app.test_client()
    compare = "models=model-00,model-01&dataset=ds07"
    figures = [
        ("GET /api/v1/leaderboard", "/api/v1/leaderboard", 0.300),
        ("GET /leaderboard (page)", "/leaderboard", 0.300),
        ("GET /api/v1/analytics/compare (2 models)", f"/api/v1/analytics/compare?{compare}", 0.500),
        ("GET /analytics/compare (page)", f"/analytics/compare?{compare}", 0.500),
        ("GET /api/v1/analytics/trends", "/api/v1/analytics/trends", None),
        ("GET /api/v1/analytics/correlations", "/api/v1/analytics/correlations", None),
        ("GET /api/v1/stats/overview", "/api/v1/stats/overview", None),
    ]
    client.get("/api/v1/leaderboard")  # warm: templates compiled, the first connection opened
    failed = False
    for name, path, target in figures:
        seconds = timed(lambda path=path: client.get(path), args.repeats)
        verdict = "" if target is None else \
            f" (target < {target * 1000:.0f} ms: {'met' if seconds < target else 'MISSED'})"
        failed |= target is not None and seconds >= target
        print(f"{name}: median of {args.repeats} {seconds * 1000:.0f} ms{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
