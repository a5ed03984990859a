"""A job's files: listed from its own folder, served only by a name from that list (traversal attempts,
absolute paths and planted symlinks get 404), and removed by the retention command, results kept."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from backend.db import db
from backend.stress.models import StressJob, utcnow
from tests.support.results import add_job, level, ok
from tests.support.simulator import PROJECT_ROOT

SECRET = "top-secret-outside-the-job"


@pytest.fixture
def job_with_files(app: Flask, tmp_path: Path) -> str:
    settings = app.config["PEP"]["stress"]
    settings["outputs_dir"], settings["logs_dir"] = str(tmp_path / "outputs"), str(tmp_path / "stress-logs")
    add_job(app, "files1", [level(1, [ok(100.0)])])
    run = tmp_path / "outputs" / "files1" / "files1"
    (run / "parallel_1_number_1").mkdir(parents=True)
    (run / "benchmark.log").write_text("evalscope says hello\n")
    (run / "parallel_1_number_1" / "benchmark_summary.json").write_text('{"Total Requests": 1}')
    (tmp_path / "stress-logs").mkdir()
    (tmp_path / "stress-logs" / "files1.log").write_text("$ -m backend.stress.evalscope_entry perf\n")
    outside = tmp_path / "secret.txt"
    outside.write_text(SECRET)
    os.symlink(outside, run / "planted-link.txt")
    os.symlink(tmp_path, run / "planted-dir")
    return "files1"


def test_files_are_listed_without_links(client: Any, job_with_files: str) -> None:
    listed = client.get(f"/api/v1/stress-tests/{job_with_files}/files").json
    names = [f["name"] for f in listed["files"]]
    assert names == ["job.log", "files1/benchmark.log", "files1/parallel_1_number_1/benchmark_summary.json"]
    assert listed["files"][1]["bytes"] == len("evalscope says hello\n")
    got = client.get(f"/api/v1/stress-tests/{job_with_files}/files/files1/benchmark.log")
    assert got.status_code == 200 and got.data == b"evalscope says hello\n"
    assert "attachment" in got.headers["Content-Disposition"]
    assert client.get(f"/api/v1/stress-tests/{job_with_files}/files/job.log").data.startswith(b"$ -m backend")


@pytest.mark.parametrize("name", [
    "files1/planted-link.txt", "files1/planted-dir/secret.txt", "../secret.txt", "..%2F..%2Fsecret.txt",
    "%2E%2E/%2E%2E/secret.txt", "files1/../../../secret.txt", "/etc/passwd", "%2Fetc%2Fpasswd",
    "files1%2F..%2F..%2F..%2Fsecret.txt", "files1/benchmark.log%00.txt", "prompt.txt/..", "",
])
def test_nothing_outside_the_list_is_served(client: Any, job_with_files: str, name: str) -> None:
    response = client.get(f"/api/v1/stress-tests/{job_with_files}/files/{name}")
    assert response.status_code in (400, 404, 308), (name, response.status_code)  # 400: a NUL in the path
    assert SECRET.encode() not in response.data


def test_an_unknown_job_has_no_files(client: Any) -> None:
    assert client.get("/api/v1/stress-tests/nope/files").status_code == 404
    assert client.get("/api/v1/stress-tests/..%2F..%2Fetc/files").status_code == 404


def test_cleanup_removes_old_files_and_keeps_results(app: Flask, tmp_path: Path, job_with_files: str,
                                                    client: Any) -> None:
    add_job(app, "fresh1", [level(1, [ok(100.0)])])
    (tmp_path / "outputs" / "fresh1").mkdir()
    with app.app_context():
        old = db.session.get(StressJob, job_with_files)
        old.finished_at = utcnow() - timedelta(days=40)
        db.session.get(StressJob, "fresh1").finished_at = utcnow() - timedelta(days=1)
        db.session.commit()
    env = {**os.environ, "ENVIRONMENT": "test", "PEP_DATABASE__PATH": str(tmp_path / "app.db"),
           "PEP_LOGGING__DIR": str(tmp_path / "logs"), "PEP_STRESS__OUTPUTS_DIR": str(tmp_path / "outputs"),
           "PEP_STRESS__LOGS_DIR": str(tmp_path / "stress-logs")}

    def cleanup(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "backend.stress.artefacts", "cleanup", *extra], cwd=PROJECT_ROOT,
                              env=env, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    dry = cleanup("--dry-run")
    assert "would remove" in dry and "files1" in dry and "fresh1" not in dry and "nothing removed" in dry
    assert (tmp_path / "outputs" / "files1").is_dir()  # a dry run removes nothing
    done = cleanup()
    assert "2 paths" in done
    assert not (tmp_path / "outputs" / "files1").exists() and not (tmp_path / "stress-logs" / "files1.log").exists()
    assert (tmp_path / "outputs" / "fresh1").is_dir() and (tmp_path / "secret.txt").read_text() == SECRET
    assert client.get(f"/api/v1/results/{job_with_files}").status_code == 200  # results come from the rows
    assert client.get(f"/api/v1/stress-tests/{job_with_files}/files").json["files"] == []
