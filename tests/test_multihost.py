"""Web hosts and job workers on several hosts that share nothing but a PostgreSQL database and the network.

Two worker hosts are network namespaces (tests/support/hosts.py), each with its own PID namespace, its
own output folders and its own simulator on its own loopback (the catalogue's ``sim-fast`` URL, the same
on both, reaches each host's own one); they reach the database over their veth link. Two web hosts are
two gunicorn servers (tests/support/app_server.py) on the same database. Labels ``net-1`` and ``net-2``
steer a job to one host when a test needs to know where it runs.

- a burst of 200 queued jobs (each refused at once by its worker: the endpoint's port is closed) is
  spread over both workers and every job is taken exactly once;
- a cancel posted to one web host stops a job running on the worker host the other web host's job went to;
- a stress test spread over both worker hosts (``spread: "hosts"``) against one simulator that both reach
  (on our side of host 1's link; host 2 is routed to it): a shard on each host, each level started together
  through the database, the merged figures checked against the simulator's own records. The namespaces
  share this machine's clock, as NTP-synchronised hosts nearly do: the wall-clock merge is exercised, not
  a clock offset;
- a SIGKILL of a whole worker host mid-job (its worker and evalscope at once) ends that job as
  interrupted within the lease, by the other host's worker, with its finished level kept.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.results.metrics import percentile
from tests.conftest import TEST_MODELS
from tests.support import hosts, postgres
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess, free_port
from tests.support.stress import SLOW_SIM_ARGS, wait_for

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not hosts.available(), reason="needs root and iproute2 for network namespaces")]

LEASE_S = 3.0


@dataclass
class Cluster:
    web: list[AppServer]
    workers: list[hosts.NetnsHost]
    folder: Path
    shared_sim: SimulatorProcess  # reachable from both worker hosts

    def worker_log(self, number: int) -> str:
        """What host ``number``'s worker logged (its log files, and what it wrote to its output)."""
        files = sorted((self.folder / f"host-{number}" / "logs").glob("*.log*"))
        return "\n".join([self.workers[number - 1].log("worker"), *(f.read_text(errors="replace") for f in files)])

    def api(self, web: int, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.web[web].url + path, timeout=30, **kwargs)

    def job(self, job_id: str, web: int = 0) -> dict[str, Any]:
        response = self.api(web, "GET", f"/api/v1/stress-tests/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="pep-multihost-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        machines = []
        for number in (1, 2):
            machines.append(hosts.NetnsHost(number, folder).start())
            stack.callback(machines[-1].stop)
        pg_folder = Path(tempfile.mkdtemp(prefix="pep-multihost-pg-"))  # its own: the postgres user enters it
        stack.callback(shutil.rmtree, pg_folder, ignore_errors=True)
        server = postgres.PostgresServer(pg_folder, listen=("127.0.0.1", *(m.gateway for m in machines)),
                                         clients=tuple(m.network for m in machines)).start()
        stack.callback(server.stop)
        _, name = postgres.create_database(server.url)
        sim_port = free_port()
        common = {"ENVIRONMENT": "test", "PEP_CATALOG__MODELS_FILE": TEST_MODELS, "PEP_SIMULATOR__PORT": str(sim_port),
                  "PEP_STRESS__WORKER_STALE_S": str(LEASE_S), "PEP_STRESS__POLL_INTERVAL_S": "0.2",
                  "PEP_STRESS__KILL_GRACE_S": "2", "PEP_STRESS__MAX_CONCURRENT": "8",
                  "PEP_STRESS__LEVEL_PAUSE_S": "1", "PYTHONUNBUFFERED": "1"}
        web = []
        for workers in (2, 1):  # the first migrates the database; the second finds it migrated
            web.append(AppServer(env={**common, "DATABASE_URL": postgres.database_url(server.url, name)},
                                 workers=workers).start())
            stack.callback(web[-1].stop)
        for machine in machines:
            root = folder / f"host-{machine.number}"
            env = {"PATH": "/usr/bin:/bin", "HOME": str(root), **common,
                   "DATABASE_URL": postgres.database_url(server.url_on(machine.gateway), name),
                   "PEP_WORKER__HOST": f"host-{machine.number}", "PEP_WORKER__LABELS": f"net-{machine.number}",
                   "PEP_LOGGING__DIR": str(root / "logs"), "PEP_STRESS__OUTPUTS_DIR": str(root / "outputs"),
                   "PEP_STRESS__LOGS_DIR": str(root / "stress-logs"), "PEP_STRESS__DATASETS_DIR": str(root / "data")}
            machine.spawn("simulator", [sys.executable, "-m", "backend.simulator", "--host", "127.0.0.1", "--port",
                                        str(sim_port), "--profile", "sim-fast:decode_base_ms=20"], env)
            machine.spawn("worker", [sys.executable, "-m", "backend.jobs.worker"], env)
        shared_sim = SimulatorProcess(seed=9, extra_args=SLOW_SIM_ARGS, host=machines[0].gateway).start()
        stack.callback(shared_sim.stop)
        machines[1].reach(machines[0].gateway)
        cluster = Cluster(web, machines, folder, shared_sim)
        wait_for(lambda: {w["host"] for w in cluster.api(0, "GET", "/api/v1/workers").json().get("workers", [])
                          if w["alive"]} == {"host-1", "host-2"}, 60, "both worker hosts to report")
        yield cluster


def _stress(cluster: Cluster, web: int, **fields: Any) -> str:
    body = {"concurrency": [1], "requests": 1, "prompt": "hi", "output_tokens": 16, **fields}
    if "manual_config" not in body:
        body["model"] = "sim-fast"
    response = cluster.api(web, "POST", "/api/v1/stress-tests", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_burst_of_200_jobs_is_spread_over_both_hosts_and_each_taken_once(cluster: Cluster) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there on either host: refused at launch
    ids = [_stress(cluster, n % 2, manual_config={"base_url": closed, "model_name": "m"}) for n in range(200)]

    def all_ended() -> bool:
        listed = cluster.api(0, "GET", "/api/v1/stress-tests", params={"status": "queued,running", "limit": 1})
        return listed.json()["total"] == 0

    wait_for(all_ended, 120, "the 200 jobs to be taken and end")
    jobs = [cluster.job(job_id, web=1) for job_id in ids]
    assert all(job["status"] == "failed" and "connect" in job["error"] for job in jobs), jobs[0]
    by_host = {host: sum(1 for job in jobs if job["worker_host"] == host) for host in ("host-1", "host-2")}
    assert sum(by_host.values()) == 200 and min(by_host.values()) >= 20, by_host  # both took a share
    # each job's launch was tried by exactly one worker: its "failed" line is in one host's log, once
    logs = {machine.number: cluster.worker_log(machine.number) for machine in cluster.workers}
    for job in jobs:
        found = [n for n, text in logs.items() for _ in re.finditer(rf"stress job {job['id']} failed", text)]
        assert found == [int(job["worker_host"][-1])], (job["id"], found)


def test_a_cancel_posted_to_one_web_host_stops_a_job_on_the_other_host(cluster: Cluster) -> None:
    job_id = _stress(cluster, 0, labels=["net-2"], requests=200, output_tokens=64)
    wait_for(lambda: cluster.job(job_id)["progress"].get("processed", 0) >= 1, 60, "the job to be under way")
    assert cluster.job(job_id)["worker_host"] == "host-2"
    cancelled_at = time.monotonic()
    response = cluster.api(1, "POST", f"/api/v1/stress-tests/{job_id}/cancel")
    assert response.status_code in (200, 202), response.text
    job = wait_for(lambda: (j := cluster.job(job_id, web=1))["is_finished"] and j, 30, "the cancel to end the job")
    took = time.monotonic() - cancelled_at
    assert job["status"] == "cancelled", job
    assert took < 2 + 2 + 5, took  # a notification, then SIGTERM, then at most the grace (2 s) and evalscope's exit
    assert re.search(rf"stress job {job_id}: SIGTERM to process group", cluster.worker_log(2))
    assert f"stress job {job_id}" not in cluster.worker_log(1)  # never seen by the other host


def test_a_stress_test_spread_over_both_hosts_merges_to_the_simulators_truth(cluster: Cluster) -> None:
    prompt = f"spread over hosts {time.time()!r}"
    since = time.time()
    job_id = _stress(cluster, 0, manual_config={"base_url": cluster.shared_sim.base_url, "model_name": "sim-fast"},
                     concurrency=[2, 4], requests=[4, 8], prompt=prompt, output_tokens=20, shards=2, spread="hosts")
    job = wait_for(lambda: (j := cluster.job(job_id, web=1))["is_finished"] and j, 120, "the spread job to end")
    assert job["status"] == "completed", (job, cluster.worker_log(1)[-3000:], cluster.worker_log(2)[-3000:])
    assert sorted(shard["worker_host"] for shard in job["shard_jobs"]) == ["host-1", "host-2"]  # one on each
    assert job["worker_host"] == "host-1, host-2"
    # the shards are on their job's page, not in the lists
    listed = {j["id"] for j in cluster.api(0, "GET", "/api/v1/stress-tests", params={"limit": 500}).json()["jobs"]}
    assert job_id in listed and not listed & {shard["id"] for shard in job["shard_jobs"]}
    results = {r["id"] for r in cluster.api(0, "GET", "/api/v1/results", params={"limit": 500}).json()["results"]}
    assert job_id in results and not results & {shard["id"] for shard in job["shard_jobs"]}
    assert [(lv["concurrency"], lv["requests"], lv["succeeded"], lv["complete"]) for lv in job["levels"]] == [
        (2, 4, 4, True), (4, 8, 8, True)]

    records = sorted((r for r in cluster.shared_sim.requests(since) if r["prompt"] == prompt
                      and r["status"] == "completed"), key=lambda r: r["arrival"])
    assert len(records) == 12
    by_level = [records[:4], records[4:]]
    assert max(r["last_token_at"] for r in by_level[0]) < min(r["arrival"] for r in by_level[1])
    results = cluster.api(1, "GET", f"/api/v1/results/{job_id}").json()
    for position, truth in enumerate(by_level):
        true_ttft = [(r["first_token_at"] - r["arrival"]) * 1000.0 for r in truth]
        level = results["levels"][position]
        ttft = level["metrics"]["ttft_ms"]
        # as in tests/test_stress_spread.py; a request crosses a veth link here, which adds well under a ms
        assert ttft["p50"] == pytest.approx(percentile(true_ttft, 50), abs=15.0)
        assert ttft["avg"] == pytest.approx(statistics.fmean(true_ttft), abs=15.0 + 60.0 / len(truth))
        assert ttft["p99"] == pytest.approx(percentile(true_ttft, 99), abs=60.0)
        # throughput over the window both hosts ran: the simulator's tokens over its own span of the level
        true_rate = sum(r["tokens_emitted"] for r in truth) / (
            max(r["last_token_at"] for r in truth) - min(r["arrival"] for r in truth))
        assert level["output_tokens_per_s"] == pytest.approx(true_rate, rel=0.10)
        assert sorted(shard["host"] for shard in level["client"]["shards"]) == ["host-1", "host-2"]
        # the inter-token gaps of both hosts' requests (stored with each shard's level): 40 ms steps
        assert level["metrics"]["itl_ms"]["p50"] == pytest.approx(40.0, abs=15.0)
        for shard in job["shard_jobs"]:  # each host ran half of the level
            rows = cluster.api(1, "GET", f"/api/v1/results/{shard['id']}").json()["levels"][position]
            assert rows["requests"] == len(truth) // 2
        # one common start: the level's first wave (every slot of both hosts) reached the simulator together.
        # Without the barrier each host starts when its own evalscope is ready, seconds apart; the bound is
        # that of the one-host shards (tests/test_stress_shards.py), which leaves room for a loaded machine.
        concurrency = job["levels"][position]["concurrency"]
        first_wave = sorted(r["arrival"] for r in truth)[:concurrency]
        assert first_wave[-1] - first_wave[0] < 0.25, first_wave


def test_a_worker_host_killed_mid_job_ends_it_interrupted_within_the_lease(cluster: Cluster) -> None:
    job_id = _stress(cluster, 1, labels=["net-1"], concurrency=[1, 2], requests=[2, 200], output_tokens=32)
    wait_for(lambda: len(cluster.job(job_id)["levels"]) == 1, 90, "the first level to be stored")
    assert cluster.job(job_id)["worker_host"] == "host-1" and cluster.job(job_id)["status"] == "running"
    cluster.workers[0].kill()  # every process of host 1: its worker, evalscope, its simulator
    killed_at = time.monotonic()
    job = wait_for(lambda: (j := cluster.job(job_id))["is_finished"] and j, 30, "the job to be ended elsewhere")
    took = time.monotonic() - killed_at
    assert job["status"] == "interrupted", job
    assert "on host host-1 stopped renewing its lease" in job["error"] and "host-2" in job["error"], job["error"]
    # the lease (3 s) runs out, then the other worker's next recovery pass (every 3 s) ends it
    assert took <= 2 * LEASE_S + 3, took
    assert [(level["concurrency"], level["succeeded"], level["complete"]) for level in job["levels"]] == [(1, 2, True)]
    workers = {w["host"]: w for w in cluster.api(0, "GET", "/api/v1/workers").json()["workers"]}
    assert workers["host-1"]["alive"] is False and workers["host-2"]["alive"] is True
