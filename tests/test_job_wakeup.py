"""Workers woken by PostgreSQL's LISTEN/NOTIFY (backend/jobs/wakeup.py): a cancel posted to a web host
reaches the job's worker at once, not a poll later; a job queued wakes an idle worker; on SQLite, and
when the listening connection is lost, the worker polls. These run on a real PostgreSQL server whatever
``--database`` says (the server fixture starts one when scripts/test.sh has not)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from backend.app import create_app
from backend.db import db
from backend.evaluations.models import EvaluationJob
from backend.jobs import service as job_service
from backend.jobs.wakeup import Wakeup
from backend.jobs.worker import Worker
from tests.conftest import TEST_MODELS
from tests.support import postgres
from tests.support.stress import wait_for
from tests.test_jobs_worker import ScriptKind, add_script_job, row

POLL_S = 8.0  # long, so that anything sooner than this was a notification


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str | None) -> Flask:
    monkeypatch.setenv("ENVIRONMENT", "test")
    if url is None:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("DATABASE_URL", url)
    return create_app({
        "database": {"path": str(tmp_path / "app.db")},
        "logging": {"dir": str(tmp_path / "logs")},
        "catalog": {"models_file": TEST_MODELS},
        "stress": {"outputs_dir": str(tmp_path / "outputs"), "poll_interval_s": POLL_S, "kill_grace_s": 1,
                   "worker_stale_s": 30},
        "evaluations": {"max_concurrent": 2, "max_job_s": 60},
    })


@pytest.fixture
def pg_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_server_url: str) -> Iterator[Flask]:
    url, name = postgres.create_database(postgres_server_url)
    yield _app(tmp_path, monkeypatch, url)
    postgres.drop_database(postgres_server_url, name)


@pytest.fixture
def kind(tmp_path: Path) -> ScriptKind:
    (tmp_path / "scripts").mkdir()
    return ScriptKind(tmp_path / "scripts")


def test_a_cancel_and_a_queued_job_wake_the_worker_at_once(pg_app: Flask, kind: ScriptKind) -> None:
    worker = Worker(pg_app, "listening", kinds=[kind], hooks=[])
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with pg_app.app_context():
            wait_for(lambda: worker.wakeup._connection is not None, 10, "the worker to LISTEN")
            time.sleep(0.5)  # the worker is now in its first long wait
            queued_at = time.monotonic()
            job_id = add_script_job(sleep=60)
            # add_script_job adds the row without the service's notify: a job queued through the API does
            job_service_notify(job_id)
            wait_for(lambda: row(EvaluationJob, job_id).pid is not None, POLL_S - 2, "a claim before the poll")
            claimed_after = time.monotonic() - queued_at
            cancelled_at = time.monotonic()
            job_service.cancel_job(EvaluationJob, job_id)
            wait_for(lambda: row(EvaluationJob, job_id).is_finished, POLL_S - 2, "the cancel before the poll")
            ended_after = time.monotonic() - cancelled_at
            assert row(EvaluationJob, job_id).status == "cancelled"
        assert worker.wakeup.received >= 2
        assert claimed_after < POLL_S / 2 and ended_after < POLL_S / 2, (claimed_after, ended_after)
    finally:
        stop.set()
        thread.join(timeout=30)


def job_service_notify(job_id: str) -> None:
    from backend.jobs import wakeup

    wakeup.notify("queued", "script", job_id)
    db.session.commit()


def test_a_notification_is_sent_on_commit_only_and_a_lost_connection_falls_back_to_polling(pg_app: Flask) -> None:
    with pg_app.app_context():
        wakeup = Wakeup()
        wakeup.open()
        stop = threading.Event()
        try:
            from backend.jobs import wakeup as module

            module.notify("queued", "script", "rolled-back")
            db.session.rollback()  # never committed: never delivered
            assert wakeup.wait(stop, 0.5) is False
            module.notify("queued", "script", "committed")
            db.session.commit()
            assert wakeup.wait(stop, 5.0) is True
            # the server drops the listening connection: the next wait polls, and says it was not woken
            pid = wakeup._connection.info.backend_pid
            db.session.execute(db.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            db.session.commit()
            started = time.monotonic()
            assert wakeup.wait(stop, 0.3) is False
            assert wakeup._connection is None and time.monotonic() - started >= 0.3
        finally:
            wakeup.close()


def test_on_sqlite_the_worker_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(tmp_path, monkeypatch, None)
    with app.app_context():
        assert db.engine.dialect.name == "sqlite"
        wakeup = Wakeup()
        wakeup.open()
        add_script_job()
        started = time.monotonic()
        assert wakeup.wait(threading.Event(), 0.3) is False
        assert time.monotonic() - started >= 0.3
        stop = threading.Event()
        stop.set()
        assert wakeup.wait(stop, 5.0) is False  # a stop asked for ends the wait at once
