"""How fast results are ingested and served, on the scale the results issue sets.

``.venv/bin/python scripts/bench_results.py [--jobs 5] [--levels 10] [--rows 10000] [--repeats 5]``

Builds, in a temporary folder, ``--jobs`` finished stress jobs of ``--levels`` levels, each level an
evalscope-format ``benchmark_data.db`` of ``--rows`` requests (the schema evalscope 1.x writes: start and
completion times, success, latency, first-chunk latency, token counts, TPOT, the inter-token gaps as JSON,
a pickled response), then measures, in-process through the Flask app (server time, no network):

* ingesting one level: reading its file and bulk-inserting its rows (``backend.results.ingest``), against
  evalscope's own ``get_percentile_results`` reading the same file (the baseline, measured in this run);
* the results page ``/results/<id>`` and ``/api/v1/results/<id>`` of one job (median of ``--repeats``);
* the self-contained HTML report of one job: time and size;
* the comparison of all the jobs (``/results/compare``) and its HTML report.

Targets on this machine (the results issue): a level of 10,000 rows ingested in under 1 s; the results
page and the 5-job comparison served in under 300 ms; the comparison's HTML report built in under 2 s
and under 5 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pickle
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchkit import ROOT

sys.path.insert(0, str(ROOT))

RESULT_TABLE = """CREATE TABLE result(request TEXT, start_time REAL, inter_token_latencies TEXT, success INTEGER,
    response_messages TEXT, completed_time REAL, latency REAL, first_chunk_latency REAL, prompt_tokens INTEGER,
    completion_tokens INTEGER, max_gpu_memory_cost REAL, time_per_output_token REAL, request_id TEXT,
    is_stream INTEGER)"""


def write_level_file(path: Path, rows: int, concurrency: int, rng: random.Random) -> None:
    """A level as evalscope writes it: ``concurrency`` requests in flight, 64 output tokens each."""
    empty = base64.b64encode(pickle.dumps([])).decode()
    records = []
    slots = [1000.0] * concurrency
    for i in range(rows):
        slot = i % concurrency
        start = slots[slot]
        ttft = 0.05 + rng.random() * 0.02 * concurrency
        gaps = [0.02 + rng.random() * 0.005 for _ in range(63)]
        latency = ttft + sum(gaps)
        slots[slot] = start + latency
        ok = rng.random() > 0.01
        records.append(("{}", start, json.dumps(gaps) if ok else "[]", int(ok), empty, start + latency,
                        latency if ok else None, ttft if ok else None, 128 if ok else None, 64 if ok else None,
                        0.0, (latency - ttft) / 63 if ok else None, None, 1))
    with sqlite3.connect(path) as connection:
        connection.execute(RESULT_TABLE)
        connection.executemany("INSERT INTO result VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)


def timed(function, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["ENVIRONMENT"] = "test"

    from backend.app import create_app
    from backend.db import db
    from backend.results.ingest import pack_columns, read_level_file, store_requests
    from backend.results.metrics import level_from_requests
    from backend.stress.models import StressJob, StressLevel

    tmp = Path(tempfile.mkdtemp(prefix="bench_results_"))
    app = create_app({"database": {"path": str(tmp / "app.db")}, "logging": {"dir": str(tmp / "logs")}})
    rng = random.Random(7)
    levels = [2 ** i for i in range(args.levels)]
    files = []
    for index, concurrency in enumerate(levels):
        path = tmp / f"level{index}.db"
        write_level_file(path, args.rows, concurrency, rng)
        files.append(path)
    print(f"{args.jobs} jobs x {args.levels} levels x {args.rows:,} requests; files in {tmp}")

    ingest_times = []
    with app.app_context():
        for job_number in range(args.jobs):
            job_id = f"bench{job_number}"
            db.session.add(StressJob(id=job_id, model_key="sim-fast", status="completed", progress={},
                                     target={"kind": "catalog", "key": "sim-fast", "provider": "openai",
                                             "catalog_provider": "emd", "instance_type": "g5.2xlarge"},
                                     params={"concurrency": levels, "requests": [args.rows] * args.levels,
                                             "dataset": "prompt", "output_tokens": 64, "stream": True}))
            db.session.commit()
            for position, (concurrency, path) in enumerate(zip(levels, files, strict=True)):
                started = time.perf_counter()
                read = read_level_file(path)
                assert read is not None
                figures = level_from_requests(read.rows, read.gaps_ms)
                db.session.add(StressLevel(job_id=job_id, position=position, concurrency=concurrency,
                                           requests=figures["requests"], succeeded=figures["succeeded"],
                                           failed=figures["failed"], duration_s=figures["duration_s"],
                                           req_per_s=figures["req_per_s"],
                                           output_tokens_per_s=figures["output_tokens_per_s"],
                                           total_tokens_per_s=figures["total_tokens_per_s"],
                                           avg_input_tokens=figures["avg_input_tokens"],
                                           avg_output_tokens=figures["avg_output_tokens"],
                                           metrics=figures["metrics"], raw_summary={}, raw_percentiles=[],
                                           request_columns=pack_columns(read.rows)))
                store_requests(db.session, job_id, position, read.rows)
                db.session.commit()
                ingest_times.append(time.perf_counter() - started)

    # The baseline: evalscope's own percentile pass over the same file (what its report does per level).
    from evalscope.perf.utils.db_util import get_percentile_results

    baseline, _ = timed(lambda: get_percentile_results(str(files[-1])), args.repeats)
    ingest = statistics.median(ingest_times)

    client = app.test_client()
    page_s, page = timed(lambda: client.get("/results/bench0"), args.repeats)
    api_s, api = timed(lambda: client.get("/api/v1/results/bench0"), args.repeats)
    report_s, report = timed(lambda: client.get("/api/v1/results/bench0/export?format=html"), 3)
    assert page.status_code == 200 and api.status_code == 200 and report.status_code == 200  # type: ignore[union-attr]
    report_mb = len(report.data) / 1e6  # type: ignore[union-attr]
    ids = ",".join(f"bench{i}" for i in range(args.jobs))
    compare_s, compared = timed(lambda: client.get(f"/results/compare?ids={ids}"), args.repeats)
    compare_report_s, compare_report = timed(
        lambda: client.get(f"/api/v1/results/compare/export?ids={ids}&format=html"), 3)
    assert compared.status_code == 200 and compare_report.status_code == 200  # type: ignore[union-attr]
    compare_mb = len(compare_report.data) / 1e6  # type: ignore[union-attr]

    print(f"ingest one level of {args.rows:,} rows: median {ingest * 1000:.0f} ms over {len(ingest_times)} levels "
          f"(max {max(ingest_times) * 1000:.0f} ms); evalscope's own percentile pass over the same file: "
          f"{baseline * 1000:.0f} ms (ratio {ingest / baseline:.2f})")
    print(f"results page of one job ({args.levels * args.rows:,} requests): median {page_s * 1000:.0f} ms; "
          f"its JSON: {api_s * 1000:.0f} ms")
    print(f"HTML report of one job: {report_s * 1000:.0f} ms, {report_mb:.2f} MB")
    print(f"comparison of {args.jobs} jobs: page median {compare_s * 1000:.0f} ms; its HTML report "
          f"{compare_report_s * 1000:.0f} ms, {compare_mb:.2f} MB")
    checks = [(f"ingest a level of {args.rows:,} rows in under 1 s", ingest < 1.0),
              ("results page in under 300 ms", page_s < 0.3),
              (f"comparison of {args.jobs} jobs in under 300 ms", compare_s < 0.3),
              ("HTML report of the comparison in under 2 s", compare_report_s < 2.0),
              ("HTML report of the comparison under 5 MB", compare_mb < 5.0)]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
