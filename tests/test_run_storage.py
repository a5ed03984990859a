"""The run writer: rows of runs that start and end together share a transaction, and none is lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, event

from backend.db import db
from backend.inference.models import InferenceRun
from backend.inference.storage import RunWriter


@pytest.fixture
def engine(app: Flask) -> Engine:
    with app.app_context():
        return db.engine


@pytest.fixture
def commits(engine: Engine) -> Iterator[list[float]]:
    """The time of every commit on the engine, from any thread."""
    seen: list[float] = []

    def on_commit(_connection: Any) -> None:
        seen.append(time.monotonic())

    event.listen(engine, "commit", on_commit)
    yield seen
    event.remove(engine, "commit", on_commit)


def run_row(run_id: str) -> dict[str, Any]:
    return {"id": run_id, "created_at": datetime.now(UTC), "status": "running", "prompt": f"prompt {run_id}",
            "system": None, "params": {"max_tokens": 10}, "models": ["sim-fast"]}


def result_rows(run_id: str, output: str = "an answer") -> list[dict[str, Any]]:
    return [{"run_id": run_id, "position": 0, "model": "sim-fast", "display_name": "Sim fast",
             "provider": "simulator", "status": "completed", "output": output, "reasoning": "",
             "error_code": None, "error_message": None, "ttft_ms": 12.5, "latency_ms": 40.0, "input_tokens": 3,
             "output_tokens": 2, "tokens_per_s": 50.0, "token_source": "server", "finish_reason": "stop"}]


def stored(app: Flask, run_id: str) -> dict[str, Any] | None:
    with app.app_context():
        run = db.session.get(InferenceRun, run_id)
        data = run.as_dict() if run else None
        db.session.remove()
        return data


def test_runs_ending_together_share_transactions_and_are_stored_before_finish_returns(
        app: Flask, engine: Engine, commits: list[float]) -> None:
    writer = RunWriter(engine)
    writer.GATHER_S = 0.05  # a busy moment: every run below starts and ends within it
    ids = [f"{n:032x}" for n in range(20)]
    seen_after_finish: dict[str, Any] = {}

    def one_run(run_id: str) -> None:
        writer.start(run_row(run_id))
        writer.finish(run_id, result_rows(run_id, output=f"answer {run_id}"))
        seen_after_finish[run_id] = stored(app, run_id)  # finish has returned: the rows must be there

    threads = [threading.Thread(target=one_run, args=(run_id,)) for run_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for run_id in ids:
        run = seen_after_finish[run_id]
        assert run is not None and run["status"] == "completed" and run["finished_at"] is not None
        assert [r["output"] for r in run["results"]] == [f"answer {run_id}"]
    assert len(commits) < 10, f"{len(commits)} transactions for 20 runs (40 without grouping)"


def test_a_run_that_cannot_be_stored_loses_only_itself(
        app: Flask, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    writer = RunWriter(engine)
    writer.GATHER_S = 0.05
    writer.start(run_row("a" * 32))
    writer.start(run_row("a" * 32))  # the same id twice: this row breaks the group's transaction
    writer.start(run_row("b" * 32))
    finished = []
    thread = threading.Thread(target=lambda: finished.append(writer.finish("b" * 32, result_rows("b" * 32))))
    with caplog.at_level(logging.ERROR, logger="backend.inference.storage"):
        thread.start()
        writer.finish("c" * 32, result_rows("c" * 32))  # results of a run whose row was never written
        thread.join(10)
    assert finished == [True]
    assert stored(app, "a" * 32)["status"] == "running"  # the first of the two rows made it
    run_b = stored(app, "b" * 32)
    assert run_b["status"] == "completed" and [r["output"] for r in run_b["results"]] == ["an answer"]
    assert stored(app, "c" * 32) is None
    failed = {record.getMessage() for record in caplog.records}
    assert failed == {f"could not store run {'a' * 32}", f"could not store run {'c' * 32}"}


def test_the_writer_thread_ends_when_idle_and_comes_back(app: Flask, engine: Engine) -> None:
    writer = RunWriter(engine)
    writer.GATHER_S = 0.0
    writer.IDLE_EXIT_S = 0.1
    writer.start(run_row("d" * 32))
    assert writer.finish("d" * 32, result_rows("d" * 32))
    deadline = time.monotonic() + 5
    while writer._thread is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer._thread is None, "the idle writer thread did not end"
    writer.start(run_row("e" * 32))
    assert writer.finish("e" * 32, result_rows("e" * 32))
    assert stored(app, "e" * 32)["status"] == "completed"


def test_a_large_backlog_is_written_in_bounded_groups(app: Flask, engine: Engine, commits: list[float]) -> None:
    writer = RunWriter(engine)
    writer.GATHER_S = 0.05
    writer.MAX_GROUP = 10
    ids = [f"{n:032x}" for n in range(100, 135)]
    for run_id in ids:
        writer.start(run_row(run_id))
    assert writer.finish(ids[-1], result_rows(ids[-1]))  # queued behind all 35 starts
    assert 4 <= len(commits) <= 6, f"{len(commits)} transactions for 35 starts in groups of at most 10"
    assert all(stored(app, run_id) is not None for run_id in ids)
    assert stored(app, ids[-1])["status"] == "completed"  # its results came after its own row


def test_one_writer_per_app(app: Flask, engine: Engine) -> None:
    assert RunWriter.of(app, engine) is RunWriter.of(app, engine)
