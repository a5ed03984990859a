"""A running job's progress never goes backwards: evalscope's progress.json lags (rewritten once a second at
most), and a new level's folder appears before its per-request database, when every earlier level is done.
The worker's progress step is run here on folders written by the test, as evalscope leaves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask import Flask

from backend.db import db
from backend.jobs.kinds import Running
from backend.stress.command import job_paths
from backend.stress.kind import StressKind, StressState
from backend.stress.models import StressJob
from tests.support.stress import offline_app
from tests.support.stress_rows import add_job


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    return offline_app(tmp_path, monkeypatch)


def test_progress_never_goes_back_when_the_next_level_starts(app: Flask) -> None:
    levels, counts = [1, 2], [3, 4]
    job_id = add_job(app, status="running", params={"concurrency": levels, "requests": counts})
    with app.app_context():
        paths = job_paths(app.config["PEP"]["stress"], job_id)
        kind, state = StressKind(), StressState(paths=paths, levels=levels, counts=counts)
        running = Running(kind=kind, job_id=job_id, pid=0, state=state)
        paths.level_dir(1, 3).mkdir(parents=True)

        def step(progress_processed: int) -> int:
            paths.progress_path.write_text(json.dumps({"processed_count": progress_processed, "total_count": 7,
                                                       "percent": 0, "status": "running"}))
            job = db.session.get(StressJob, job_id)
            kind._record_progress(job, running)
            db.session.commit()
            return db.session.get(StressJob, job_id).progress["processed"]

        assert step(2) == 2
        paths.level_dir(2, 4).mkdir(parents=True)  # the second level starts: the first (3 requests) is done
        assert step(2) == 3  # progress.json still says 2
        assert step(1) == 3  # an older progress.json never moves it back
        assert step(5) == 5
        job = db.session.get(StressJob, job_id)
        assert job.progress["percent"] == round(100 * 5 / 7, 2) and job.progress["level"] == 2
