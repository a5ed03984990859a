"""Cross-site posts are refused with authentication off (development, where the issue found them) and on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from backend.app import create_app
from backend.db import db
from tests.conftest import TEST_MODELS
from tests.support.simulator import SimulatorProcess

EVIL = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
OPERATOR = "operator-token-9d1f77"
FORM = {"target": "sim-fast", "concurrency": "1", "requests": "1", "dataset": "prompt", "prompt": "x",
        "submitted": "1"}


@pytest.fixture(scope="module")
def dev_app(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Iterator[Flask]:
    tmp = tmp_path_factory.mktemp("csrf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVIRONMENT", "test")
        patch.setenv("API_TOKENS", OPERATOR)
        app = create_app({"database": {"path": str(tmp / "app.db")}, "logging": {"dir": str(tmp / "logs")},
                          "catalog": {"models_file": TEST_MODELS}, "simulator": {"port": simulator.port},
                          "stress": {"datasets_dir": str(tmp / "datasets")},
                          "evaluations": {"datasets_dir": str(tmp / "eval_datasets")}})
    assert app.config["PEP"]["auth"]["enabled"] is False
    yield app


def count(app: Flask, table: str) -> int:
    with app.app_context():
        return int(db.session.execute(text(f"select count(*) from {table}")).scalar() or 0)


def new_job(client: FlaskClient) -> str:
    response = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "prompt": "x", "concurrency": [1],
                                                         "requests": [1]})
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def test_a_cross_origin_form_post_starts_no_stress_test(dev_app: Flask) -> None:
    client = dev_app.test_client()
    before = count(dev_app, "stress_jobs")
    for headers in (EVIL, {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}, {"Referer": "http://evil.example/page.html"},
                    {"Origin": "http://localhost:5001"}):  # another port is another origin
        response = client.post("/stress-tests/new", data=FORM, headers=headers)
        assert response.status_code == 403, headers
        assert "Cross-site request refused" in response.text
    assert count(dev_app, "stress_jobs") == before
    same = client.post("/stress-tests/new", data=FORM, headers={"Origin": "http://localhost",
                                                                "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303, same.text
    assert count(dev_app, "stress_jobs") == before + 1


def test_a_cross_origin_cancel_changes_nothing(dev_app: Flask) -> None:
    client = dev_app.test_client()
    job_id = new_job(client)
    response = client.post(f"/api/v1/stress-tests/{job_id}/cancel", headers=EVIL)
    assert response.status_code == 403
    assert response.json["error"]["code"] == "cross_site_refused"
    page = client.post(f"/stress-tests/{job_id}/cancel", headers={"Referer": "https://evil.example/"})
    assert page.status_code == 403
    with dev_app.app_context():
        status, cancel = db.session.execute(text("select status, cancel_requested from stress_jobs where id = :id"),
                                            {"id": job_id}).one()
    assert (status, bool(cancel)) == ("queued", False)
    ok = client.post(f"/api/v1/stress-tests/{job_id}/cancel", headers={"Referer": f"http://localhost/stress-tests/{job_id}"})
    assert ok.status_code in (200, 202), ok.json
    with dev_app.app_context():
        assert db.session.execute(text("select status from stress_jobs where id = :id"),
                                  {"id": job_id}).scalar() == "cancelled"


def test_a_cross_origin_dataset_upload_is_not_stored(dev_app: Flask, tmp_path: Path) -> None:
    client = dev_app.test_client()
    stress_before, eval_before = count(dev_app, "stress_datasets"), count(dev_app, "eval_datasets")
    upload = client.post("/api/v1/stress-tests/datasets", headers=EVIL, content_type="multipart/form-data",
                         data={"format": "line_by_line", "file": (io.BytesIO(b"one\ntwo\n"), "q.txt")})
    assert upload.status_code == 403
    mcq = b"id,question,A,B,C,D,answer\nq1,What is 2 + 2?,3,4,5,6,B\n"
    for path in ("/datasets", "/api/v1/datasets"):
        response = client.post(path, headers=EVIL, content_type="multipart/form-data",
                               data={"kind": "mcq", "name": "Sums", "file": (io.BytesIO(mcq), "items.csv")})
        assert response.status_code == 403, path
    assert (count(dev_app, "stress_datasets"), count(dev_app, "eval_datasets")) == (stress_before, eval_before)


def test_bearer_calls_without_cookies_are_not_csrf_prone(dev_app: Flask) -> None:
    client = dev_app.test_client()
    job_id = new_job(client)
    client.get("/")  # no cookie is set by reading a page
    assert not client.get_cookie("session")
    response = client.post(f"/api/v1/stress-tests/{job_id}/cancel",
                           headers={"Origin": "http://evil.example", "Authorization": f"Bearer {OPERATOR}"})
    assert response.status_code in (200, 202), response.json
    client.set_cookie("session", "anything")  # the same call riding a cookie is refused again
    other = new_job(client)
    refused = client.post(f"/api/v1/stress-tests/{other}/cancel",
                          headers={"Origin": "http://evil.example", "Authorization": f"Bearer {OPERATOR}"})
    assert refused.status_code == 403
