"""``GET /metrics`` (backend/metrics): scraped from gunicorn with two gevent workers in Prometheus
multiprocess mode after known traffic, parsed with prometheus_client's own parser; the counts must equal
the traffic sent, whichever worker answers the scrape. And protected like the API when sign-in is on."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from backend.app import create_app
from tests.conftest import TEST_MODELS
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess
from tests.support.sse import by_name, post_events

MODELS = ["sim-fast", "sim-reasoning"]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[AppServer, SimulatorProcess, Path]]:
    with tempfile.TemporaryDirectory(prefix="pep-metrics-test-") as folder, SimulatorProcess(seed=3) as sim:
        env = {"PROMETHEUS_MULTIPROC_DIR": folder, "PEP_SIMULATOR__PORT": str(sim.port),
               "PEP_CATALOG__MODELS_FILE": TEST_MODELS}
        with AppServer(env=env, workers=2) as app:
            yield app, sim, Path(folder)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_counts_equal_the_traffic_sent_across_two_workers(served: tuple[AppServer, SimulatorProcess, Path]
                                                               ) -> None:
    app, sim, folder = served
    since = time.time()
    before = scrape(app.url)
    for _ in range(30):  # a new connection each call: gunicorn hands them to either worker
        assert requests.get(app.url + "/api/v1/models", timeout=10).status_code == 200
    for _ in range(7):
        assert requests.get(app.url + "/api/v1/stress-tests/nope", timeout=10).status_code == 404
    runs = 3
    for n in range(runs):
        events = post_events(app.url + "/api/v1/multi-inference",
                             {"models": MODELS, "prompt": f"count me {n}", "max_tokens": 24})
        assert len(by_name(events, "model_done")) == len(MODELS)
    # the tokens the simulator itself sent (the catalogue's keys are its model ids here)
    tokens = dict.fromkeys(MODELS, 0)
    for record in sim.requests(since):
        if record["prompt"].startswith("count me"):
            tokens[record["model"]] += record["tokens_emitted"]
    error_events = post_events(app.url + "/api/v1/multi-inference", {"models": ["sim-error"], "prompt": "fail"})
    (failure,) = by_name(error_events, "model_error")
    queued = [requests.post(app.url + "/api/v1/stress-tests", timeout=10, json={
        "model": "sim-fast", "concurrency": [1], "requests": [1], "prompt": "queued"}).json()["id"] for _ in range(2)]
    assert len(queued) == 2  # no job worker runs here: they stay queued

    scrapes = [scrape(app.url) for _ in range(4)]  # answered by either worker: the same sums every time
    for after in scrapes:
        def delta(name: str, after: dict = after, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("pep_http_requests_total", route="/api/v1/models", method="GET", status="200") == 30
        assert delta("pep_http_requests_total", route="/api/v1/stress-tests/<job_id>", method="GET",
                     status="404") == 7
        assert delta("pep_http_requests_total", route="/api/v1/multi-inference", method="POST", status="200") == 4
        assert delta("pep_http_request_duration_seconds_count", route="/api/v1/models", method="GET") == 30
        for model in MODELS:
            assert delta("pep_relayed_answers_total", model=model, provider="simulator", outcome="completed") == runs
            assert delta("pep_relayed_output_tokens_total", model=model, provider="simulator") == tokens[model] > 0
            assert delta("pep_relay_ttft_seconds_count", model=model, provider="simulator") == runs
            assert delta("pep_relay_latency_seconds_count", model=model, provider="simulator") == runs
        assert delta("pep_upstream_errors_total", model="sim-error", code=failure["error"]["code"]) == 1
        assert delta("pep_relayed_answers_total", model="sim-error", provider="simulator", outcome="failed") == 1
        assert value(after, "pep_sse_streams_active", stream="multi_inference") == 0  # every stream has ended
        assert value(after, "pep_jobs_queued", kind="stress") == 2
        assert value(after, "pep_jobs", kind="stress", status="queued") == 2
        assert value(after, "pep_jobs", kind="evaluation", status="completed") == 0
    # both workers counted: each process keeps its own files in the folder, named by its pid
    pids = {re.sub(r"\D", "", path.stem) for path in folder.glob("counter_*.db")}
    assert len(pids) >= 2, sorted(path.name for path in folder.iterdir())


def test_metrics_need_a_token_when_sign_in_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("API_TOKENS", "viewer:scraper-token-51c2")
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": TEST_MODELS}, "auth": {"enabled": True}})
    client = app.test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and "Bearer" in refused.json["error"]["message"]
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scraper-token-51c2"})
    assert allowed.status_code == 200 and b"pep_http_requests_total" in allowed.data


def test_metrics_off_serve_nothing_and_count_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend import metrics

    monkeypatch.setenv("ENVIRONMENT", "test")
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": TEST_MODELS}, "metrics": {"enabled": False}})
    try:
        client = app.test_client()
        before = metrics.HTTP_REQUESTS.labels("/api/v1/models", "GET", "200")._value.get()
        assert client.get("/api/v1/models").status_code == 200
        assert metrics.HTTP_REQUESTS.labels("/api/v1/models", "GET", "200")._value.get() == before
        assert client.get("/metrics").status_code == 404
    finally:
        metrics.ENABLED = True  # as every other app of this process has it


def test_the_grafana_dashboard_queries_only_metrics_the_platform_serves(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("ENVIRONMENT", "test")
    app = create_app({"database": {"path": str(tmp_path / "app.db")}, "logging": {"dir": str(tmp_path / "logs")},
                      "catalog": {"models_file": TEST_MODELS}})
    served = {family.name for family in text_string_to_metric_families(
        app.test_client().get("/metrics").get_data(as_text=True))}
    dashboard = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bpep_[a-z_]+", target["expr"])}
    assert len(queried) >= 12
    for name in queried:
        family = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert family in served, (name, sorted(served))
