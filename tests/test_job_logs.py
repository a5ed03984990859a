"""A job's log kept in the database as the worker follows it (backend/jobs/logs.py): a real stress test and a
real evaluation (evalscope against the simulator, the worker in a thread) whose output folders and log files
are deleted once they end, after which the log routes still answer the tail; the bound (the tail kept from a
line's start, the dropped bytes counted and shown); appends that add chunks and never rewrite the earlier
ones; a line waits for its end while the process runs; secrets masked; a symlinked log not followed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import select

from backend.db import db
from backend.jobs.logs import JobLog, JobLogChunk, follow_log, mask_secrets, tail_lines
from backend.stress.pages import ANSI_ESCAPE
from tests.support.evaluations import bundled_id, catalogue_with_answerers, make_app
from tests.support.evaluations import create as create_evaluation
from tests.support.evaluations import finished as evaluation_finished
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker
from tests.support.stress import finished as stress_finished

pytestmark = pytest.mark.timeout(120)

STRESS_LOG_MAX = 2048  # small enough that the real stress log outgrows it


def expected_tail(data: bytes, max_bytes: int) -> tuple[bytes, int]:
    """What the database should keep of a log file: the suffix from the first line start whose suffix is at
    most ``max_bytes`` long, and how many bytes came before it."""
    if len(data) <= max_bytes:
        return data, 0
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == 0x0A]
    start = next((s for s in starts if len(data) - s <= max_bytes), len(data))
    return data[start:], start


def lines_of(data: bytes) -> list[str]:
    return [line for line in data.decode("utf-8", "replace").replace("\r", "\n").split("\n") if line.strip()]


def kept_bytes(app: Flask, kind: str, job_id: str) -> tuple[bytes, JobLog, int]:
    with app.app_context():
        chunks = db.session.scalars(select(JobLogChunk.data).where(JobLogChunk.job_kind == kind,
                                                                   JobLogChunk.job_id == job_id)
                                    .order_by(JobLogChunk.id)).all()
        row = db.session.get(JobLog, (kind, job_id))
        assert row is not None
        db.session.expunge(row)
        return b"".join(chunks), row, len(chunks)


@pytest.fixture(scope="module")
def finished_jobs(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess,
                  ) -> Iterator[tuple[Flask, Path, dict[str, Any]]]:
    """One stress test and one evaluation, run side by side by one worker; their log files' bytes as
    evalscope left them, read before the folders are deleted."""
    tmp_path = tmp_path_factory.mktemp("joblogs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVIRONMENT", "test")
        app = make_app(tmp_path, simulator.port, catalogue_with_answerers(tmp_path))
        app.config["PEP"]["stress"].update(level_pause_s=1, poll_interval_s=0.2)
        app.config["PEP"]["storage"]["log_max_bytes"] = STRESS_LOG_MAX
        client = app.test_client()
        worker = ThreadWorker(app)
        try:
            stress = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1, 2],
                                                               "requests": [2, 2], "prompt": "hello"})
            assert stress.status_code == 201, stress.json
            evaluation = create_evaluation(client, models=["sim-answer-a"], datasets=[bundled_id(client, "mcq")],
                                           limit=2)
            stress_job = stress_finished(client, stress.json["id"], timeout=90)
            evaluation_job = evaluation_finished(client, evaluation["id"], timeout=90)
        finally:
            worker.close()
        assert stress_job["status"] == "completed", stress_job
        assert evaluation_job["status"] == "completed", evaluation_job
        files = {"stress": tmp_path / "stress-logs" / f"{stress_job['id']}.log",
                 "evaluation": tmp_path / "eval-logs" / f"{evaluation_job['id']}.log"}
        written = {kind: path.read_bytes() for kind, path in files.items()}
        # the web host cannot see the worker's disk: every output folder and log file goes
        for folder in ("outputs", "stress-logs", "eval-outputs", "eval-logs"):
            shutil.rmtree(tmp_path / folder, ignore_errors=True)
        assert not any(path.exists() for path in files.values())
        yield app, tmp_path, {"stress": stress_job["id"], "evaluation": evaluation_job["id"], "written": written}


def test_a_stress_log_is_served_from_the_database_its_tail_bounded(
        finished_jobs: tuple[Flask, Path, dict[str, Any]]) -> None:
    app, _tmp, jobs = finished_jobs
    client, job_id, written = app.test_client(), jobs["stress"], jobs["written"]["stress"]
    assert len(written) > STRESS_LOG_MAX, "the stress log was expected to outgrow the bound"
    # evalscope's configuration dump has "api_key": null and the like, masked to "api_key": ***
    tail, dropped = expected_tail(mask_secrets(written), STRESS_LOG_MAX)
    stored, row, chunks = kept_bytes(app, "stress", job_id)
    assert stored == tail
    assert (row.dropped_bytes, row.kept_bytes, row.read_offset) == (dropped, len(tail), len(written))
    assert chunks >= 2  # appended a tick at a time, not written once at the end
    expected = [f"… {dropped} bytes dropped", *lines_of(tail)]
    answer = client.get(f"/api/v1/stress-tests/{job_id}/log?lines=5000")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    assert answer.get_data(as_text=True).splitlines() == expected
    assert client.get(f"/api/v1/stress-tests/{job_id}/log?lines=3&format=json").json["lines"] == lines_of(tail)[-3:]
    page = client.get(f"/stress-tests/{job_id}/log")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"… {dropped} bytes dropped" in html
    assert str(escape(ANSI_ESCAPE.sub("", lines_of(tail)[-1]))) in html  # the page drops colour codes


def test_an_evaluation_log_is_served_from_the_database_whole(
        finished_jobs: tuple[Flask, Path, dict[str, Any]]) -> None:
    app, _tmp, jobs = finished_jobs
    client, job_id, written = app.test_client(), jobs["evaluation"], jobs["written"]["evaluation"]
    assert written
    tail, dropped = expected_tail(mask_secrets(written), STRESS_LOG_MAX)
    stored, row, _chunks = kept_bytes(app, "evaluation", job_id)
    assert stored == tail and row.dropped_bytes == dropped and row.read_offset == len(written)
    answer = client.get(f"/api/v1/evaluations/{job_id}/log?lines=5000&format=json")
    assert answer.status_code == 200
    assert answer.json["lines"] == ([f"… {dropped} bytes dropped"] if dropped else []) + lines_of(tail)


def test_deleting_a_stress_job_removes_its_log_rows(finished_jobs: tuple[Flask, Path, dict[str, Any]]) -> None:
    app, _tmp, jobs = finished_jobs
    client = app.test_client()
    assert client.delete(f"/api/v1/stress-tests/{jobs['stress']}").status_code == 204
    with app.app_context():
        assert db.session.get(JobLog, ("stress", jobs["stress"])) is None
        assert db.session.scalars(select(JobLogChunk.id).where(JobLogChunk.job_id == jobs["stress"])).all() == []
        assert tail_lines("evaluation", jobs["evaluation"], 10)  # the other job's log stays


# --- follow_log on files the test writes ----------------------------------------------------------------


@pytest.fixture
def log_file(app: Flask, tmp_path: Path) -> Iterator[Path]:
    with app.app_context():
        yield tmp_path / "job.log"


def chunks_of(job_id: str) -> list[tuple[int, bytes]]:
    return [(c.id, c.data) for c in db.session.scalars(select(JobLogChunk).where(JobLogChunk.job_id == job_id)
                                                       .order_by(JobLogChunk.id))]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def test_appends_add_chunks_and_leave_earlier_ones_alone(log_file: Path) -> None:
    append(log_file, b"one\ntwo\n")
    assert follow_log("stress", "j1", log_file, 4096) == 8
    db.session.commit()
    first = chunks_of("j1")
    append(log_file, b"three\n")
    assert follow_log("stress", "j1", log_file, 4096) == 6
    db.session.commit()
    assert follow_log("stress", "j1", log_file, 4096) == 0  # nothing new: nothing added
    db.session.commit()
    now = chunks_of("j1")
    assert now[:1] == first and [data for _, data in now] == [b"one\ntwo\n", b"three\n"]
    assert tail_lines("stress", "j1", 10) == ["one", "two", "three"]


def test_a_line_waits_for_its_end_until_the_process_has_ended(log_file: Path) -> None:
    append(log_file, b"whole\nhal")
    follow_log("stress", "j2", log_file, 4096)
    db.session.commit()
    assert tail_lines("stress", "j2", 10) == ["whole"]
    assert db.session.get(JobLog, ("stress", "j2")).read_offset == len(b"whole\n")
    append(log_file, b"f and more")
    follow_log("stress", "j2", log_file, 4096, final=True)
    db.session.commit()
    assert tail_lines("stress", "j2", 10) == ["whole", "half and more"]


def test_the_bound_keeps_the_tail_from_a_line_start(log_file: Path) -> None:
    written = b""
    for tick in range(12):  # 12 ticks of 5 lines of 40 bytes: 2,400 bytes through a 1,024-byte bound
        data = b"".join(f"tick {tick:02d} line {n} ".encode().ljust(39, b"x") + b"\n" for n in range(5))
        append(log_file, data)
        written += data
        follow_log("stress", "j3", log_file, 1024)
        db.session.commit()
    tail, dropped = expected_tail(written, 1024)
    assert b"".join(data for _, data in chunks_of("j3")) == tail
    row = db.session.get(JobLog, ("stress", "j3"))
    assert (row.kept_bytes, row.dropped_bytes) == (len(tail), dropped) == (1000, 1400)
    assert tail_lines("stress", "j3", 100) == [f"… {dropped} bytes dropped", *lines_of(tail)]
    assert tail_lines("stress", "j3", 2) == lines_of(tail)[-2:]  # the note only when the lines reach back


def test_more_than_the_bound_in_one_tick_keeps_its_end(log_file: Path) -> None:
    append(log_file, b"early\n")
    follow_log("stress", "j4", log_file, 1024)
    db.session.commit()
    burst = b"".join(f"burst line {n:04d}".encode().ljust(99, b".") + b"\n" for n in range(30))  # 3,000 bytes
    append(log_file, burst)
    follow_log("stress", "j4", log_file, 1024)
    db.session.commit()
    tail, dropped = expected_tail(b"early\n" + burst, 1024)
    assert b"".join(data for _, data in chunks_of("j4")) == tail and len(tail) == 1000
    assert db.session.get(JobLog, ("stress", "j4")).dropped_bytes == dropped


def test_secrets_are_masked_before_they_are_stored(log_file: Path) -> None:
    append(log_file, b"sent with bearer sk-live-0123456789abcdef\napi_key=sk-other-secret\n")
    follow_log("stress", "j5", log_file, 4096, final=True)
    db.session.commit()
    stored = b"".join(data for _, data in chunks_of("j5"))
    assert b"sk-live-0123456789abcdef" not in stored and b"sk-other-secret" not in stored
    assert tail_lines("stress", "j5", 10) == ["sent with bearer ***", "api_key=***"]


def test_a_log_that_is_a_symlink_is_not_followed(log_file: Path, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not the job's\n")
    os.symlink(secret, log_file)
    assert follow_log("stress", "j6", log_file, 4096, final=True) == 0
    db.session.commit()
    assert tail_lines("stress", "j6", 10) == []


def test_a_job_with_no_log_in_the_database_is_read_from_its_file(app: Flask, client: Any, tmp_path: Path) -> None:
    from tests.support.results import add_job, level, ok

    settings = app.config["PEP"]["stress"]
    settings["logs_dir"] = str(tmp_path / "stress-logs")
    add_job(app, "old1", [level(1, [ok(100.0)])])
    (tmp_path / "stress-logs").mkdir()
    (tmp_path / "stress-logs" / "old1.log").write_text("from before the database kept logs\n")
    assert client.get("/api/v1/stress-tests/old1/log").get_data(as_text=True) == \
        "from before the database kept logs\n"
