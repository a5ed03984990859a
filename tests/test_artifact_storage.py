"""A finished job's files copied to ``storage.artifacts`` (backend/jobs/storage.py) and served from there: a
real stress test (evalscope against the simulator, the worker in a thread) with an S3 store (moto's server
mode on a loopback port, boto3 with dummy credentials from the environment) and with a folder store. Once
the job has ended its outputs and log are deleted from the worker's disk: the files route lists what it
wrote and every download equals the bytes evalscope wrote; the objects are where the location says;
traversal attempts 404; deleting the job removes its stored copies."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask import Flask
from moto.server import ThreadedMotoServer

from backend.config import ConfigError
from backend.db import db
from backend.jobs.storage import FolderStore, JobArtifacts, S3Store, configured_store, safe_name
from tests.support.simulator import SimulatorProcess, free_port
from tests.support.stress import ThreadWorker, finished, make_app

pytestmark = pytest.mark.timeout(120)

BUCKET = "pep-artifacts"
SECRET = b"outside-the-job-secret"
HOSTILE = ["../secret.txt", "..%2Fsecret.txt", "%2E%2E/secret.txt", "../../secret.txt", "/etc/passwd",
           "%2Fetc%2Fpasswd", "JOB/../secret.txt", "JOB/../../secret.txt", "secret.txt", "job.log%00.txt",
           "JOB/./benchmark.log", "JOB//benchmark.log", "."]


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[tuple[str, Any]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        url = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        try:
            yield url, client
        finally:
            server.stop()


def run_job(tmp_path: Path, simulator: SimulatorProcess, storage: dict[str, Any],
            wipe: bool = True) -> tuple[Flask, str, dict[str, bytes]]:
    """A real two-level stress test whose files go to ``storage``; the bytes of every file it left on the
    worker's disk (by the files route's names), read before the disk is wiped."""
    app = make_app(tmp_path, simulator.port)
    app.config["PEP"]["storage"].update(storage)
    client = app.test_client()
    worker = ThreadWorker(app)
    try:
        created = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1, 2],
                                                            "requests": [2, 2], "prompt": "hello"})
        assert created.status_code == 201, created.json
        job = finished(client, created.json["id"], timeout=90)
    finally:
        worker.close()
    assert job["status"] == "completed", job
    job_id = job["id"]
    on_disk = {"job.log": (tmp_path / "stress-logs" / f"{job_id}.log").read_bytes()}
    root = tmp_path / "outputs" / job_id
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            on_disk[path.relative_to(root).as_posix()] = path.read_bytes()
    if wipe:
        shutil.rmtree(tmp_path / "outputs")
        shutil.rmtree(tmp_path / "stress-logs")
    return app, job_id, on_disk


def check_served(client: Any, job_id: str, on_disk: dict[str, bytes]) -> None:
    listed = client.get(f"/api/v1/stress-tests/{job_id}/files")
    assert listed.status_code == 200
    files = {f["name"]: f["bytes"] for f in listed.json["files"]}
    assert files == {name: len(data) for name, data in on_disk.items()}
    assert any(name.endswith("benchmark_summary.json") for name in files)  # evalscope's own outputs are there
    for name, data in on_disk.items():
        got = client.get(f"/api/v1/stress-tests/{job_id}/files/{name}")
        assert got.status_code == 200, name
        assert got.data == data, name
        assert got.headers["Content-Disposition"].startswith("attachment")
        assert Path(name).name in got.headers["Content-Disposition"]


def check_refused(client: Any, job_id: str) -> None:
    for name in HOSTILE:
        response = client.get(f"/api/v1/stress-tests/{job_id}/files/{name.replace('JOB', job_id)}")
        assert response.status_code in (400, 404, 308), (name, response.status_code)  # 400: a NUL
        assert SECRET not in response.data


def location_of(app: Flask, job_id: str) -> str | None:
    with app.app_context():
        record = db.session.get(JobArtifacts, ("stress", job_id))
        return record.location if record else None


def test_an_s3_store(tmp_path: Path, simulator: SimulatorProcess, moto_s3: tuple[str, Any]) -> None:
    url, s3 = moto_s3
    s3.put_object(Bucket=BUCKET, Key="runs/stress/secret.txt", Body=SECRET)  # beside the job's prefix
    s3.put_object(Bucket=BUCKET, Key="runs/secret.txt", Body=SECRET)
    app, job_id, on_disk = run_job(tmp_path, simulator, {"artifacts": f"s3://{BUCKET}/runs/",
                                                         "s3_endpoint_url": url})
    assert location_of(app, job_id) == f"s3://{BUCKET}/runs/stress/{job_id}"
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/stress/{job_id}/")["Contents"]
    assert {item["Key"]: item["Size"] for item in objects} == {
        f"runs/stress/{job_id}/{name}": len(data) for name, data in on_disk.items()}
    log_object = s3.get_object(Bucket=BUCKET, Key=f"runs/stress/{job_id}/job.log")["Body"].read()
    assert log_object == on_disk["job.log"]
    client = app.test_client()
    check_served(client, job_id, on_disk)
    check_refused(client, job_id)
    assert client.delete(f"/api/v1/stress-tests/{job_id}").status_code == 204
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/stress/{job_id}/")
    assert s3.get_object(Bucket=BUCKET, Key="runs/stress/secret.txt")["Body"].read() == SECRET  # not the job's
    assert location_of(app, job_id) is None


def test_a_folder_store(tmp_path: Path, simulator: SimulatorProcess) -> None:
    store = tmp_path / "store"
    (store / "stress").mkdir(parents=True)
    (store / "stress" / "secret.txt").write_bytes(SECRET)
    (store / "secret.txt").write_bytes(SECRET)
    app, job_id, on_disk = run_job(tmp_path, simulator, {"artifacts": str(store)})
    assert location_of(app, job_id) == str(store / "stress" / job_id)
    copied = {path.relative_to(store / "stress" / job_id).as_posix(): path.read_bytes()
              for path in (store / "stress" / job_id).rglob("*") if path.is_file()}
    assert copied == on_disk
    client = app.test_client()
    check_served(client, job_id, on_disk)
    check_refused(client, job_id)
    assert client.delete(f"/api/v1/stress-tests/{job_id}").status_code == 204
    assert not (store / "stress" / job_id).exists() and (store / "stress" / "secret.txt").exists()


def test_an_unreachable_store_leaves_the_files_on_the_disk(tmp_path: Path, simulator: SimulatorProcess,
                                                           moto_s3: tuple[str, Any]) -> None:
    """S3 refusing connections: the job still completes, nothing is recorded, the disk serves its files."""
    app, job_id, on_disk = run_job(tmp_path, simulator, {"artifacts": f"s3://{BUCKET}/runs",
                                                         "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"},
                                   wipe=False)
    assert location_of(app, job_id) is None
    check_served(app.test_client(), job_id, on_disk)


def test_the_store_from_the_configuration(tmp_path: Path) -> None:
    assert configured_store({"storage": {"artifacts": None}}) is None
    assert configured_store({"storage": {"artifacts": ""}}) is None
    assert configured_store({"storage": {"artifacts": str(tmp_path)}}) == FolderStore(tmp_path.resolve())
    s3 = configured_store({"storage": {"artifacts": "s3://bucket/a/b/", "s3_endpoint_url": "http://127.0.0.1:1"},
                           "aws": {"region": "eu-west-1"}})
    assert s3 == S3Store("bucket", "a/b", "http://127.0.0.1:1", "eu-west-1")
    assert s3.location("stress", "abc123") == "s3://bucket/a/b/stress/abc123"
    for bad in ("s3://", "s3:///prefix", "ftp://host/x"):
        with pytest.raises(ConfigError, match=r"storage\.artifacts"):
            configured_store({"storage": {"artifacts": bad}})
    with pytest.raises(ValueError):
        FolderStore(tmp_path).location("stress", "../x")


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "..", "a//b", "./a", "a\\b", "a\0b", "a/"])
def test_names_that_could_leave_the_job_folder_are_not_plain(name: str) -> None:
    assert not safe_name(name)


def test_a_plain_name_is(tmp_path: Path) -> None:
    assert safe_name("job.log") and safe_name("abc/parallel_1_number_2/benchmark_summary.json")
