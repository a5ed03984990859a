"""Concurrency of state (issue 13, item 10): two gunicorn workers and the job worker writing at once lose
no update.

One platform as scripts/start.sh runs it (gunicorn with two gevent workers, ``python -m backend.jobs.worker``
beside it, the real simulator, the real evalscope for the stress jobs), and at the same time:

* stress jobs, capacity searches and an evaluation are created, then cancelled (twice each, from fresh connections, so
  that both web workers answer some) at random moments while the worker claims them, writes their
  progress, advances the searches (queuing probe jobs), updates the evaluation's cells and ends them;
* readers poll every job and search, each reader recording the statuses it saw in order;
* inference runs are stored from both web workers at once.

Then: each reader's sequence of statuses only moves the way the state machine allows (``ALLOWED``,
written again below), never back; a job whose cancel was accepted ends ``cancelled`` with
``cancel_requested`` still set (the worker's progress writes never undo a cancel); a 409 only names a job
that ended otherwise; nothing is left queued or running (a cancelled search queues no probe after its
cancel); every inference run answered is stored exactly once, counted independently of the API's total.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.conftest import NO_AWS_CREDENTIALS
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess

# The job state machine as backend/jobs/models.ALLOWED states it, written again here: a change of it must
# be a decision, and a reader must never see a row move outside it.
MOVES = {
    "queued": {"running", "cancelled", "failed"},
    "running": {"cancelling", "completed", "failed", "interrupted"},
    "cancelling": {"cancelled", "completed", "failed", "interrupted"},
}
FINISHED = {"completed", "failed", "cancelled", "interrupted"}
JOBS, SEARCHES, RUNS, RUN_THREADS = 6, 3, 60, 6
STRESS_BODY = {"model": "sim-fast", "concurrency": [1], "requests": 2, "output_tokens": 20, "prompt": "Race me."}
SEARCH_BODY = {"model": "sim-fast", "prompt": "x", "output_tokens": 20, "requests": 3,
               "slo": {"tpot_ms": 30, "percentile": 95}}


def reachable(origin: str) -> set[str]:
    """Every status a row in ``origin`` may reach in one or more moves."""
    seen, todo = set(), [origin]
    while todo:
        for nxt in MOVES.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    root = tmp_path_factory.mktemp("concurrency")
    with SimulatorProcess(seed=5) as sim:
        # The default catalogue: sim-fast for the stress jobs, the answering profiles for the evaluation.
        env = {"SIMULATOR_PORT": str(sim.port), "PEP_CATALOG__MODELS_FILE": "config/models.yaml",
               "AWS_ENDPOINT_URL_CLOUDFORMATION": "http://127.0.0.1:9", **NO_AWS_CREDENTIALS,
               "PEP_EVALUATIONS__DATASETS_DIR": str(root / "datasets"),
               "PEP_EVALUATIONS__OUTPUTS_DIR": str(root / "outputs"), "PEP_EVALUATIONS__LOGS_DIR": str(root / "logs"),
               "PEP_STRESS__LEVEL_PAUSE_S": "0", "PEP_STRESS__POLL_INTERVAL_S": "0.1",
               "PEP_STRESS__KILL_GRACE_S": "2", "PEP_STRESS__WORKER_STALE_S": "5"}
        with AppServer(env=env, workers=2, stress_worker=True) as server:
            deadline = time.monotonic() + 60
            while not requests.get(server.url + "/api/v1/stress-tests?limit=1", timeout=10).json()["worker"]["alive"]:
                assert time.monotonic() < deadline, server.worker_output()[-2000:]
                time.sleep(0.2)
            yield server


def fresh(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request on a new connection (``Connection: close``), so the kernel may hand it to either worker."""
    return requests.request(method, url, headers={"Connection": "close"}, timeout=30, **kwargs)


def test_cancels_reads_and_stored_runs_race_the_worker_without_losing_an_update(platform: AppServer) -> None:
    base = platform.url
    rng = random.Random(13)
    before_runs = fresh("GET", base + "/api/v1/inference/runs?limit=1").json()["total"]
    jobs = []
    for _ in range(JOBS):
        created = fresh("POST", base + "/api/v1/stress-tests", json=STRESS_BODY)
        assert created.status_code == 201, created.text
        jobs.append(created.json()["id"])
    searches = []
    for _ in range(SEARCHES):
        created = fresh("POST", base + "/api/v1/capacity-searches", json=SEARCH_BODY)
        assert created.status_code == 201, created.text
        searches.append(created.json()["id"])
    datasets = fresh("GET", base + "/api/v1/datasets").json()["datasets"]
    mcq = next(row["id"] for row in datasets if row["bundled"] and row["kind"] == "mcq")
    created = fresh("POST", base + "/api/v1/evaluations",
                    json={"models": ["sim-answer-a", "sim-answer-b"], "datasets": [mcq], "batch_size": 1})
    assert created.status_code == 201, created.text
    evaluation = created.json()["id"]
    routes = {**{j: f"/api/v1/stress-tests/{j}" for j in jobs},
              **{s: f"/api/v1/capacity-searches/{s}" for s in searches},
              evaluation: f"/api/v1/evaluations/{evaluation}"}

    stop = threading.Event()
    seen: list[dict[str, list[str]]] = []  # per reader: the statuses it saw of each row, in order
    cancels: dict[str, list[tuple[float, int, str]]] = {row: [] for row in routes}  # (time, HTTP status, status)
    stored: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def reader() -> None:
        mine: dict[str, list[str]] = {row: [] for row in routes}
        seen.append(mine)
        while not stop.is_set():
            for row, path in routes.items():
                answer = fresh("GET", base + path)
                if answer.status_code != 200:
                    failures.append(f"GET {path}: {answer.status_code} {answer.text[:200]}")
                    continue
                status = answer.json()["status"]
                if not mine[row] or mine[row][-1] != status:
                    mine[row].append(status)

    def canceller(row: str, when_running: bool) -> None:
        # Half the rows at a random moment (queued, claimed or running), half once the worker runs them.
        if when_running:
            end = time.monotonic() + 40
            while fresh("GET", base + routes[row]).json()["status"] == "queued" and time.monotonic() < end:
                time.sleep(0.1)
            time.sleep(rng.uniform(0, 1.5))
        else:
            time.sleep(rng.uniform(0, 3))
        for _ in range(2):
            answer = fresh("POST", base + routes[row] + "/cancel")
            body = answer.json()
            status = body.get("status") or body.get("error", {}).get("message", "")
            with lock:
                cancels[row].append((time.monotonic(), answer.status_code, status))

    def inferer(count: int) -> None:
        for k in range(count):
            answer = fresh("POST", base + "/api/v1/inference",
                           json={"model": "sim-fast", "text": f"race {k}", "max_tokens": 8})
            if answer.status_code != 200:
                failures.append(f"inference: {answer.status_code} {answer.text[:200]}")
                continue
            with lock:
                stored.append(answer.json()["run_id"])

    readers = [threading.Thread(target=reader) for _ in range(3)]
    cancellers = [threading.Thread(target=canceller, args=(row, k % 2 == 0 or row == evaluation))
                  for k, row in enumerate(routes)]
    inferers = [threading.Thread(target=inferer, args=(RUNS // RUN_THREADS,)) for _ in range(RUN_THREADS)]
    for thread in [*readers, *cancellers, *inferers]:
        thread.start()
    for thread in [*cancellers, *inferers]:
        thread.join(timeout=90)
    deadline = time.monotonic() + 40
    finals: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        finals = {row: fresh("GET", base + path).json() for row, path in routes.items()}
        if all(final["status"] in FINISHED for final in finals.values()):
            break
        time.sleep(0.3)
    stop.set()
    for thread in readers:
        thread.join(timeout=30)

    assert not failures, failures[:5]
    unfinished = {row: final["status"] for row, final in finals.items() if final["status"] not in FINISHED}
    assert not unfinished, (unfinished, platform.worker_output()[-3000:])
    for mine in seen:
        for row, statuses in mine.items():
            for earlier, later in itertools.pairwise(statuses):
                assert later in reachable(earlier), f"{row} went {earlier} -> {later} (seen {statuses})"
            assert statuses, f"a reader never saw {row}"
    # The race was real: some job, some search and the evaluation were cancelled while the worker ran them
    # (their cancel answered "cancelling", not "cancelled" at once as for a queued row).
    went_through = {row for row, answers in cancels.items()
                    if any(a[2] == "cancelling" for a in answers) and finals[row]["status"] == "cancelled"}
    assert went_through & set(jobs) and went_through & set(searches) and evaluation in went_through, (
        went_through, [mine[evaluation] for mine in seen], finals[evaluation], cancels[evaluation])
    for row, answers in cancels.items():
        assert len(answers) == 2, (row, answers)
        accepted = [a for a in answers if a[1] in (200, 202)]
        refused = [a for a in answers if a[1] not in (200, 202)]
        final = finals[row]
        assert all(a[1] == 409 for a in refused), (row, answers)
        if accepted:
            assert all(a[2] in ("cancelled", "cancelling") for a in accepted), (row, answers)
            assert final["status"] == "cancelled", (row, answers, final["status"], final.get("error"))
            if row in jobs:
                assert final["cancel_requested"] is True, (row, final)
        else:  # both refused: the row ended otherwise before the first cancel, and says how
            assert final["status"] in {"completed", "failed"}, (row, answers, final)
            assert all(final["status"] in a[2] for a in refused), (row, answers, final)

    # The evaluation's cells all ended too, none completed after a cancelled one (they run in order).
    cells = [cell["status"] for cell in finals[evaluation]["cells"]]
    assert cells and all(status in FINISHED for status in cells), cells
    assert "completed" not in cells[cells.index("cancelled"):] if "cancelled" in cells else True, cells

    # No probe job of a search, nor any stress job at all, is left behind its search's cancel.
    listed = fresh("GET", base + "/api/v1/stress-tests?limit=200").json()
    left = [(job["id"], job["status"]) for job in listed["jobs"] if job["status"] not in FINISHED]
    assert not left, left

    # Every run answered is stored exactly once; counted here, not taken from the API's answer.
    assert len(stored) == RUNS and len(set(stored)) == RUNS
    for run_id in stored:
        run = fresh("GET", base + f"/api/v1/inference/runs/{run_id}")
        assert run.status_code == 200, (run_id, run.text)
        assert run.json()["id"] == run_id
    after_runs = fresh("GET", base + "/api/v1/inference/runs?limit=1").json()["total"]
    assert after_runs == before_runs + RUNS
    logs = platform.log_text() + platform.worker_output() + platform.output()
    assert "database is locked" not in logs
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 500:][:3000]
