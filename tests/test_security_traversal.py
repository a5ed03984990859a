"""Path traversal on every route that touches a file: job logs and artefacts (stress tests, evaluations),
dataset uploads and previews (stress and evaluation datasets), exports, static and vendored files. Each
hostile id or name, plain, percent-encoded, double-encoded, absolute or through a planted symlink, gets a
4xx (never a 5xx), and the bytes of a file placed outside every served folder never appear in an answer.
The stress artefact list itself is tested in tests/test_stress_artefacts.py."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.results import add_job, level, ok

SECRET = "outside-every-served-folder-0451"

HOSTILE_IDS = [
    "..", "%2e%2e", "%252e%252e", "..%2F..%2F..%2Fsecret", "..%252F..%252Fsecret", "%2Fetc%2Fpasswd",
    "....%2F%2Fsecret", "..%5C..%5Csecret", "a%00b", "secret.txt", "%2e%2e%2fsecret.txt",
]

HOSTILE_NAMES = [
    "../secret.txt", "..%2Fsecret.txt", "%2e%2e%2Fsecret.txt", "%252e%252e%252Fsecret.txt", "/etc/passwd",
    "%2Fetc%2Fpasswd", "//etc/passwd", "job1/../../secret.txt", "..\\secret.txt", "job1/link.txt",
    "job1/linkdir/secret.txt", "job.log/../../secret.txt",
]


@pytest.fixture
def planted(app: Flask, tmp_path: Path) -> Path:
    """Every folder the app serves from under tmp_path/served, a secret file beside them, and links to it
    planted in a stress job's output folder."""
    served = tmp_path / "served"
    stress, evaluations = app.config["PEP"]["stress"], app.config["PEP"]["evaluations"]
    for settings, prefix in ((stress, "stress"), (evaluations, "eval")):
        for key in ("outputs_dir", "logs_dir", "datasets_dir"):
            settings[key] = str(served / f"{prefix}-{key}")
    (tmp_path / "secret.txt").write_text(SECRET)
    add_job(app, "job1", [level(1, [ok(100.0)])])
    run = served / "stress-outputs_dir" / "job1" / "job1"
    run.mkdir(parents=True)
    (run / "benchmark.log").write_text("fine\n")
    os.symlink(tmp_path / "secret.txt", run / "link.txt")
    os.symlink(tmp_path, run / "linkdir")
    (served / "stress-logs_dir").mkdir()
    os.symlink(tmp_path / "secret.txt", served / "stress-logs_dir" / "job1.log")  # a log that is a link
    return tmp_path


def refused(response: Any, what: str) -> None:
    assert 400 <= response.status_code < 500, (what, response.status_code, response.get_data(as_text=True)[:300])
    assert SECRET.encode() not in response.data, what


FILE_ROUTES = ("/api/v1/stress-tests/{}/log", "/api/v1/stress-tests/{}/log?format=json",
               "/api/v1/stress-tests/{}/files", "/api/v1/stress-tests/{}/files/job.log",
               "/stress-tests/{}/log", "/api/v1/evaluations/{}/log", "/api/v1/evaluations/{}/export",
               "/api/v1/results/{}/export", "/api/v1/datasets/{}/preview", "/api/v1/datasets/{}",
               "/datasets/{}", "/results/{}", "/evaluations/{}", "/stress-tests/{}")


def test_hostile_job_ids_on_file_routes(client: Any, planted: Path) -> None:
    for job_id, route in itertools.product(HOSTILE_IDS, FILE_ROUTES):
        refused(client.get(route.format(job_id)), route.format(job_id))


def test_hostile_artefact_names(client: Any, planted: Path) -> None:
    for name in HOSTILE_NAMES:
        response = client.get(f"/api/v1/stress-tests/job1/files/{name}")
        assert response.status_code in (404, 308), (name, response.status_code)
        assert SECRET.encode() not in response.data
    assert client.get("/api/v1/stress-tests/job1/files/job1/benchmark.log").data == b"fine\n"


def test_a_log_that_is_a_symlink_is_not_followed(client: Any, planted: Path) -> None:
    """The job's log replaced by a link to a file elsewhere: neither the log routes nor the list serve it."""
    for route in ("/api/v1/stress-tests/job1/log", "/api/v1/stress-tests/job1/log?format=json",
                  "/stress-tests/job1/log", "/api/v1/stress-tests/job1/files/job.log"):
        response = client.get(route)
        assert response.status_code < 500 and SECRET.encode() not in response.data, route
    names = [f["name"] for f in client.get("/api/v1/stress-tests/job1/files").json["files"]]
    assert names == ["job1/benchmark.log"]


def test_stress_dataset_upload_names_are_display_text(client: Any, planted: Path) -> None:
    names = ["../../../escaped.txt", "/tmp/escaped.txt", "..\\..\\escaped.txt", "%2e%2e%2fescaped.txt",
             "sub/../../escaped.txt"]
    for number, filename in enumerate(names):
        content = f"hello {number}\n".encode()
        response = client.post("/api/v1/stress-tests/datasets", content_type="multipart/form-data",
                               data={"format": "line_by_line", "file": (io.BytesIO(content), filename)})
        assert response.status_code == 201, response.json
        assert "/" not in response.json["filename"], response.json
        written = [p for p in (planted / "served").rglob("*") if p.is_file() and p.read_bytes() == content]
        assert [p.parent for p in written] == [planted / "served" / "stress-datasets_dir"], filename
    assert not list(planted.rglob("escaped.txt")) and not Path("/tmp/escaped.txt").exists()


def test_evaluation_dataset_upload_names_with_folders_are_refused(client: Any, planted: Path) -> None:
    content = b'{"id": "1", "question": "q?", "answer": "a"}\n'
    for filename in ["../../escaped.jsonl", "/tmp/escaped.jsonl", "..", "a\x00b.jsonl", "sub/x.jsonl"]:
        response = client.post("/api/v1/datasets", content_type="multipart/form-data",
                               data={"kind": "qa", "name": "n", "file": (io.BytesIO(content), filename)})
        assert response.status_code == 400, (filename, response.json)
        assert response.json["error"]["details"]["field"] == "file"
    assert not list(planted.rglob("escaped.jsonl")) and not Path("/tmp/escaped.jsonl").exists()
    assert not any(p.is_file() and p.read_bytes() == content for p in planted.rglob("*"))


STATIC_ESCAPES = ["/static/../config/default.yaml", "/static/%2e%2e/config/default.yaml",
                                  "/static/..%2Fconfig%2Fdefault.yaml", "/static//etc/passwd",
                                  "/static/%2Fetc%2Fpasswd", "/static/vendor/../../backend/app.py",
                                  "/vendor/plotly.min.js/../../backend/app.py"]


def test_static_files_stay_in_static(client: Any) -> None:
    for path in STATIC_ESCAPES:
        response = client.get(path)
        assert response.status_code in (404, 308), (path, response.status_code)
        assert b"create_app" not in response.data and b"root:" not in response.data
