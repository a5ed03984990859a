"""Disk full while evalscope writes a job's outputs: a stress test's and an evaluation's ``outputs_dir`` on
a tmpfs of a few KB (mounted by the fixture, which runs as root here, and unmounted after). Both jobs
end with a clear status and reason, their pages and API answer, and the app goes on serving."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.evaluations import bundled_id, make_app
from tests.support.evaluations import finished as evaluation_finished
from tests.support.simulator import SimulatorProcess
from tests.support.stress import ThreadWorker
from tests.support.stress import finished as stress_finished

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 12 KB tmpfs (``mount -t tmpfs -o size=12k``), unmounted after the test."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a tmpfs and needs root (it runs as root in CI)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k,mode=0755", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_jobs_writing_to_a_full_disk_end_failed_with_a_reason(tmp_path: Path, full_disk: Path,
                                                              simulator: SimulatorProcess) -> None:
    app = make_app(tmp_path, simulator.port, outputs_dir=str(full_disk / "eval-outputs"))
    app.config["PEP"]["stress"]["outputs_dir"] = str(full_disk / "stress-outputs")
    client = app.test_client()
    stress = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 4,
                                                       "output_tokens": 8, "prompt": "hi " * 2000})
    assert stress.status_code == 201, stress.json
    evaluation = client.post("/api/v1/evaluations", json={"models": ["sim-echo"],
                                                          "datasets": [bundled_id(client, "qa")], "limit": 4})
    assert evaluation.status_code == 201, evaluation.json
    worker = ThreadWorker(app)
    try:
        stress_job = stress_finished(client, stress.json["id"], timeout=120)
        evaluation_job = evaluation_finished(client, evaluation.json["id"], timeout=120)
    finally:
        worker.close()
    for kind, job in (("stress", stress_job), ("evaluation", evaluation_job)):
        assert job["status"] == "failed", (kind, job)
        assert "No space left on device" in (job["error"] or "")[:200], (kind, job["error"])
    assert client.get(f"/stress-tests/{stress.json['id']}").status_code == 200
    assert client.get(f"/evaluations/{evaluation.json['id']}").status_code == 200
    assert client.get(f"/api/v1/stress-tests/{stress.json['id']}/files").status_code == 200
    assert client.get("/").status_code == 200 and client.get("/health").status_code == 200
