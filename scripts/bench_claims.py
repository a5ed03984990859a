"""How fast workers claim queued jobs, and that no job is claimed twice: PostgreSQL against SQLite.

``.venv/bin/python scripts/bench_claims.py [--jobs 1000] [--workers 4] [--repeats 3] [--mode both|limit|finish]``

For each database, each mode and each repeat: a fresh database (PostgreSQL: one more database on a
throwaway server, scripts/benchkit.py's ``ThrowawayPostgres``; SQLite: a new file), migrated, with
``--jobs`` queued rows of a tiny kind (``ClaimKind``: a kind on the ``evaluation_jobs`` table that is only
claimed, never launched: this measures claiming). Then ``--workers`` processes, each its own app and
engine and one ``backend.jobs.worker.Worker``, start together and call ``Worker.claim(kind)`` in a loop until
no job is queued, each recording what it claimed. The cluster-wide limit (``evaluations.max_concurrent``)
is part of every claim (a count in the same conditional UPDATE; on PostgreSQL under the kind's advisory
lock). Two ways to keep it from stopping the claims:

* ``limit``: ``max_concurrent`` and ``worker.capacity`` set to the number of jobs, claimed jobs stay
  ``running`` (the count the claim makes grows to ``--jobs``);
* ``finish``: ``max_concurrent`` stays at its default (1) and each claimed job is moved to ``completed``
  at once, so every claim waits for the limit to free up (claims are serial across workers by design).

Figures: claims/s over all workers (jobs / wall time from the common start to the last worker's end) and
per worker, the spread over workers (fewest and most claims), the claim's latency (p50/p99 per call),
misses (a call that returned nothing while jobs were still queued: the limit, or another worker took
the candidate first) and errors (an exception from the database, rolled back, counted). Duplicates must
be 0: a job id reported by two workers, a row whose ``worker_id`` is not the worker that reported it, a
row claimed but reported by nobody, or a job left queued. The SQLite run is the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchkit import PYTHON, ROOT, ThrowawayPostgres, median, pct

KIND_NAME = "claimbench"
START_DELAY_S = 0.5  # between the last worker's "ready" and the common start, so all begin together
DEADLINE_S = 300.0  # a worker gives up after this long (a claim that never ends would be a finding)


# --- the app and the kind (imported in the processes that need them) --------------------------------


def make_app(database: dict[str, str], logs_dir: str, jobs: int, mode: str) -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from backend.app import create_app

    limit = jobs if mode == "limit" else 1
    return create_app({
        "database": database,
        "logging": {"dir": logs_dir},
        "evaluations": {"max_concurrent": limit},
        "worker": {"capacity": {KIND_NAME: limit}},
    })


class ClaimKind:
    """Only what ``Worker.claim`` reads of a kind: its name (the advisory lock's key), table and section. A
    job of this kind is never launched, so the other methods of ``backend.jobs.kinds.Kind`` are absent."""

    name = KIND_NAME
    section = "evaluations"

    def __init__(self) -> None:
        from backend.evaluations.models import EvaluationJob

        self.model = EvaluationJob


def fill(app: Any, jobs: int) -> None:
    """``jobs`` queued rows of the kind, in one transaction."""
    from backend.db import db
    from backend.evaluations.models import EvaluationJob

    with app.app_context():
        db.session.add_all([EvaluationJob(model_key=KIND_NAME, target={}, params={"n": n}, progress={})
                            for n in range(jobs)])
        db.session.commit()
        db.engine.dispose()


# --- one claiming worker (runs in its own process) ---------------------------------------------------


def claimer_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    app = make_app(spec["database"], spec["logs_dir"], spec["jobs"], spec["mode"])
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from backend.db import db
    from backend.jobs.models import JobStatus, transition
    from backend.jobs.worker import Worker

    kind = ClaimKind()
    model = kind.model
    worker = Worker(app, worker_id=spec["worker_id"], kinds=[kind], hooks=[])
    claimed: list[str] = []
    latencies: list[float] = []  # every call
    claim_latencies: list[float] = []  # the calls that claimed a job, in order
    misses = 0
    errors: list[str] = []
    with app.app_context():
        queued = select(func.count()).select_from(model).where(model.status == JobStatus.QUEUED.value)
        db.session.scalar(queued)  # the first connection, outside the measurement
        db.session.commit()
        print("ready", flush=True)
        start_at = float(sys.stdin.readline())
        time.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        while time.perf_counter() - started < DEADLINE_S and len(errors) < 100:
            before = time.perf_counter()
            try:
                job = worker.claim(kind)
                if job is not None and spec["mode"] == "finish":
                    transition(model, job.id, JobStatus.COMPLETED)
                    db.session.commit()
            except SQLAlchemyError as exc:
                db.session.rollback()
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            latencies.append(time.perf_counter() - before)
            if job is not None:
                claimed.append(job.id)
                claim_latencies.append(latencies[-1])
                continue
            left = db.session.scalar(queued)
            db.session.commit()
            if not left:
                break
            misses += 1
        wall = time.perf_counter() - started
        ended_at = time.time()
    print(json.dumps({"worker_id": worker.id, "claimed": claimed, "misses": misses, "errors": errors,
                      "wall_s": wall, "ended_at": ended_at, "start_at": start_at,
                      "latency_p50_ms": pct(latencies, 50) * 1000, "latency_p99_ms": pct(latencies, 99) * 1000,
                      # a claim reads up to CANDIDATES queued rows: early claims see a long queue, late ones a short
                      "early_p50_ms": pct(claim_latencies[:len(claim_latencies) // 2], 50) * 1000,
                      "late_p50_ms": pct(claim_latencies[len(claim_latencies) // 2:], 50) * 1000}))
    return 0


EXPLANATION = """\
limit: max_concurrent = worker.capacity = the number of jobs, claimed jobs stay running; finish: max_concurrent 1,
  each claimed job completed at once (the next claim waits for that). per worker/s: a worker's claims / its wall.
fewest/most: claims of the least and most busy worker over all runs.
call p50/p99: every Worker.claim call (a miss included), ms. claim 1st/2nd half: p50 of the calls that claimed,
  over each worker's first and second half of its claims: the queue long, then short (a claim reads up to
  backend/jobs/worker.py CANDIDATES = 500 queued rows).
misses: calls that returned nothing while jobs were queued (the limit, or another worker took the candidate).
dup: reported twice + row's worker_id not the reporter + claimed row reported by nobody; queued: left queued;
  status: rows not running (limit) / not completed (finish)."""


# --- one run: a fresh database, the jobs, the workers, the checks ------------------------------------


def run_once(database: dict[str, str], tmp: Path, jobs: int, workers: int, mode: str) -> dict[str, Any]:
    logs_dir = str(tmp / "logs")
    app = make_app(database, logs_dir, jobs, mode)  # migrates the fresh database
    fill(app, jobs)
    procs = []
    for n in range(workers):
        spec = {"database": database, "logs_dir": logs_dir, "jobs": jobs, "mode": mode, "worker_id": f"bench-{n}"}
        procs.append(subprocess.Popen([str(PYTHON), __file__, "--claimer", json.dumps(spec)], cwd=ROOT,
                                      env={**os.environ, "ENVIRONMENT": "test"}, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a claiming worker did not start: {line!r} {proc.stderr.read()[-2000:]}")
    start_at = time.time() + START_DELAY_S
    for proc in procs:
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=DEADLINE_S + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a claiming worker failed ({proc.returncode}): {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return {**check(app, reports, jobs, mode), "reports": reports,
            "wall_s": max(r["ended_at"] for r in reports) - start_at}


def check(app: Any, reports: list[dict[str, Any]], jobs: int, mode: str) -> dict[str, Any]:
    """Duplicates, from what the workers reported and from the rows."""
    from backend.db import db
    from backend.evaluations.models import EvaluationJob

    reported = Counter(job_id for r in reports for job_id in r["claimed"])
    by_reporter = {job_id: r["worker_id"] for r in reports for job_id in r["claimed"]}
    with app.app_context():
        rows = db.session.execute(db.select(EvaluationJob.id, EvaluationJob.worker_id, EvaluationJob.status)).all()
        db.engine.dispose()
    expected_status = "completed" if mode == "finish" else "running"
    return {
        "claims": sum(reported.values()),
        "reported_twice": sum(1 for count in reported.values() if count > 1),
        "row_other_worker": sum(1 for job_id, worker_id, _ in rows
                                if job_id in by_reporter and by_reporter[job_id] != worker_id),
        "row_unreported": sum(1 for job_id, worker_id, _ in rows if worker_id and job_id not in by_reporter),
        "left_queued": sum(1 for _, _, status in rows if status == "queued"),
        "wrong_status": sum(1 for _, _, status in rows if status != expected_status),
        "rows": len(rows),
        "jobs": jobs,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_worker = [len(r["claimed"]) / r["wall_s"] for run in runs for r in run["reports"]]
    counts = [len(r["claimed"]) for run in runs for r in run["reports"]]
    return {
        "runs": len(runs),
        "claims_s": median([run["claims"] / run["wall_s"] for run in runs]),
        "claims_s_all": [run["claims"] / run["wall_s"] for run in runs],
        "per_worker_s": median(per_worker),
        "fewest": min(counts), "most": max(counts),
        "lat50": median([r["latency_p50_ms"] for run in runs for r in run["reports"]]),
        "lat99": median([r["latency_p99_ms"] for run in runs for r in run["reports"]]),
        "early50": median([r["early_p50_ms"] for run in runs for r in run["reports"]]),
        "late50": median([r["late_p50_ms"] for run in runs for r in run["reports"]]),
        "misses": sum(r["misses"] for run in runs for r in run["reports"]),
        "errors": sum(len(r["errors"]) for run in runs for r in run["reports"]),
        "error_samples": sorted({e for run in runs for r in run["reports"] for e in r["errors"]})[:3],
        "duplicates": sum(run["reported_twice"] + run["row_other_worker"] + run["row_unreported"] for run in runs),
        "left_queued": sum(run["left_queued"] for run in runs),
        "wrong_status": sum(run["wrong_status"] for run in runs),
        "claims": sum(run["claims"] for run in runs),
        "jobs": sum(run["jobs"] for run in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=("both", "limit", "finish"), default="both")
    parser.add_argument("--claimer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.claimer:
        return claimer_main(args.claimer)

    os.environ["ENVIRONMENT"] = "test"  # no secret key or tokens needed: nothing here serves HTTP
    modes = ["limit", "finish"] if args.mode == "both" else [args.mode]
    tmp = Path(tempfile.mkdtemp(prefix="bench_claims_"))
    postgres = ThrowawayPostgres("bench_claims_pg_")
    t0 = time.monotonic()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        postgres.start()
        for mode in modes:
            for repeat in range(args.repeats):
                # alternate which database goes first, as the machine's load drifts
                order = ["sqlite", "postgresql"] if repeat % 2 == 0 else ["postgresql", "sqlite"]
                for name in order:
                    database = ({"url": postgres.database()} if name == "postgresql"
                                else {"path": str(tmp / f"{mode}-{repeat}.db")})
                    run = run_once(database, tmp, args.jobs, args.workers, mode)
                    rows.setdefault((name, mode), {"runs": []})["runs"].append(run)
                    print(f"  {name:>10} {mode:>6} #{repeat + 1}: {run['claims']} claims in {run['wall_s']:.2f} s "
                          f"({run['claims'] / run['wall_s']:.0f}/s), per worker "
                          f"{[len(r['claimed']) for r in run['reports']]}, misses "
                          f"{sum(r['misses'] for r in run['reports'])}, errors "
                          f"{sum(len(r['errors']) for r in run['reports'])} "
                          f"({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{args.jobs} queued jobs, {args.workers} claiming processes (each its own app, engine and Worker), "
          f"{args.repeats} repeats; medians over repeats (latency: over workers x repeats)")
    header = (f"{'database':>10} {'mode':>6} | {'claims/s':>8} {'per worker/s':>12} | {'fewest/most':>11} | "
              f"{'call p50/p99 ms':>16} {'claim 1st/2nd half':>18} | {'misses':>6} {'errors':>6} | "
              f"{'dup':>3} {'queued':>6} {'status':>6}")
    print(header)
    print("-" * len(header))
    for (name, mode), row in rows.items():
        s = row["summary"] = summarise(row["runs"])
        print(f"{name:>10} {mode:>6} | {s['claims_s']:>8.0f} {s['per_worker_s']:>12.0f} | "
              f"{s['fewest']:>5}/{s['most']:<5} | {s['lat50']:>7.2f}/{s['lat99']:<8.2f} "
              f"{s['early50']:>8.2f}/{s['late50']:<9.2f} | "
              f"{s['misses']:>6} {s['errors']:>6} | {s['duplicates']:>3} {s['left_queued']:>6} {s['wrong_status']:>6}")
    print()
    print(EXPLANATION)
    for mode in modes:
        pg, lite = rows[("postgresql", mode)]["summary"], rows[("sqlite", mode)]["summary"]
        print(f"{mode}: PostgreSQL / SQLite claims/s = {pg['claims_s'] / lite['claims_s']:.2f}")
    print()
    failed = 0
    for (name, mode), row in rows.items():
        s = row["summary"]
        ok = (s["duplicates"] == 0 and s["left_queued"] == 0 and s["wrong_status"] == 0
              and s["claims"] == s["jobs"] and s["errors"] == 0)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name} {mode}: {s['claims']}/{s['jobs']} jobs claimed once each, "
              f"{s['duplicates']} duplicates, {s['left_queued']} left queued, {s['errors']} errors"
              + (f" e.g. {s['error_samples']}" if s["errors"] else ""))
    print(f"total {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
