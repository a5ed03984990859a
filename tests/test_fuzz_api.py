"""Schemathesis against /api/v1/openapi.json through the WSGI app: no 5xx and answers that match the document,
on every operation, with authentication off (the default outside production).

Valid and invalid input (schemathesis' positive and negative modes). Bounded: ``MAX_EXAMPLES`` per operation
and mode, derandomised (the same cases every run), and a time budget for the whole fuzz (no per-case
deadline: a busy CI machine would make one flaky).
Offline and with no real work: the catalogue's simulator and Bedrock endpoints are a closed loopback port,
no job worker runs (stress tests, evaluations and capacity searches stay queued), and a manual endpoint's
URL in a generated body is pointed at the same closed port before the call (``_offline``), so an inference
fails fast with a per-model error event instead of reaching whatever host the generator spelled.
No operation is excluded.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from backend.app import create_app

TEST_MODELS = str(Path(__file__).parent / "data" / "models.yaml")
MAX_EXAMPLES = int(os.environ.get("PEP_FUZZ_EXAMPLES", "15"))  # per operation and mode; more for a deeper run
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)  # valid input, and input the document refuses
BUDGET_S = 6 * MAX_EXAMPLES  # 90 s for 15 (about 35 s here): room for a busy CI machine
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def closed_url() -> str:
    return f"http://127.0.0.1:{_closed_port()}"


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, closed_url: str):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVIRONMENT", "test")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "API_TOKENS"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "AKIDFUZZFUZZFUZZ")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "fuzz-secret")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", closed_url)
        patch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", closed_url)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        app = create_app({
            "database": {"path": str(root / "app.db")},
            "logging": {"dir": str(root / "logs")},
            "catalog": {"models_file": TEST_MODELS},
            "simulator": {"port": int(closed_url.rsplit(":", 1)[1])},
            "inference": {"model_timeout_s": 2},
            "stress": {"outputs_dir": str(root / "stress-outputs"), "datasets_dir": str(root / "stress-datasets")},
        })
        yield app


def _offline(body: Any, url: str) -> None:
    """Point every manual endpoint of a generated body at the closed port."""
    if isinstance(body, dict):
        config = body.get("manual_config")
        if isinstance(config, dict):
            for key in ("base_url", "api_url"):
                if isinstance(config.get(key), str):
                    config[key] = url + "/v1"
        for value in body.values():
            if isinstance(value, dict | list) and value is not config:
                _offline(value, url)
    elif isinstance(body, list):
        for value in body:
            _offline(value, url)


def _can_be_invalid(paths: dict[str, Any], label: str) -> bool:
    """Whether the document lets any input be invalid: a body, or a parameter that is not free text.
    An operation whose every input is a string of any content (``GET /stress-tests/{job_id}``) or that takes
    none has no invalid input to generate (schemathesis would search for one for seconds, then give up);
    its valid cases still run."""
    method, path = label.split(" ", 1)
    operation = paths[path][method.lower()]
    return "requestBody" in operation or any(
        parameter["schema"].get("type") != "string" for parameter in operation.get("parameters", []))


def test_api_answers_within_its_contract(fuzz_app, closed_url: str) -> None:  # type: ignore[no-untyped-def]
    api = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    operations = [result.ok() for result in api.get_all_operations()]
    paths = fuzz_app.test_client().get("/api/v1/openapi.json").json["paths"]
    documented = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    # Schemathesis leaves out the document's own URL (GET /api/v1/openapi.json, which takes no input);
    # tests/test_openapi.py checks that answer against the OpenAPI 3.1 schema. Nothing else is left out.
    assert documented - {operation.label for operation in operations} == {"GET /api/v1/openapi.json"}
    failures: list[str] = []
    spent: dict[str, float] = {}
    started = time.monotonic()
    runs = [(operation, mode) for operation, mode in itertools.product(operations, MODES)
            if mode is GenerationMode.POSITIVE or _can_be_invalid(paths, operation.label)]
    assert len(runs) > len(operations) * 1.3  # most operations get invalid input too
    for operation, mode in runs:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            _offline(case.body, closed_url)
            case.call_and_validate(checks=CHECKS)

        begun = time.monotonic()
        try:
            fuzz()
        except Exception as exc:  # every operation's failure is collected, then all reported
            failures.append(f"{operation.label} ({mode.value}): {str(exc)[:1500]}")
        spent[f"{operation.label} ({mode.value})"] = time.monotonic() - begun
    elapsed = time.monotonic() - started
    assert not failures, "\n\n".join(failures)
    slowest = sorted(spent.items(), key=lambda item: -item[1])[:5]
    assert elapsed < BUDGET_S, f"the fuzz took {elapsed:.0f} s (budget {BUDGET_S} s); slowest: {slowest}"


def test_routes_of_real_rows_answer_within_their_contract(fuzz_app) -> None:  # type: ignore[no-untyped-def]
    """The fuzz mostly meets 404s on routes that take an id: here each one gets a real row (a stress test, an
    evaluation and a capacity search, cancelled while queued so their event streams end, a dataset, an
    inference run against the closed port), and its answer is checked against the document."""
    client = fuzz_app.test_client()
    stress = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "concurrency": [1], "requests": 2,
                                                       "output_tokens": 8, "prompt": "hi"})
    datasets = client.get("/api/v1/datasets").json["datasets"]  # the bundled ones
    evaluation = client.post("/api/v1/evaluations", json={"models": ["sim-fast"], "datasets": [datasets[0]["id"]],
                                                          "limit": 2})
    search = client.post("/api/v1/capacity-searches", json={"model": "sim-fast", "prompt": "x", "output_tokens": 8,
                                                            "max_concurrency": 4})
    run = client.post("/api/v1/inference", json={"model": "sim-fast", "prompt": "hi"})
    assert (stress.status_code, evaluation.status_code, search.status_code) == (201, 201, 201), (
        stress.json, evaluation.json, search.json)
    runs = client.get("/api/v1/inference/runs").json["runs"]
    assert runs, run.get_data(as_text=True)  # the failed answer is stored as a run too
    ids = {"/api/v1/stress-tests": stress.json["id"], "/api/v1/evaluations": evaluation.json["id"],
           "/api/v1/capacity-searches": search.json["id"], "/api/v1/datasets": datasets[0]["id"],
           "/api/v1/inference/runs": runs[0]["id"], "/api/v1/results": stress.json["id"],
           "/api/v1/models": "sim-fast"}
    api = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    operations = sorted((result.ok() for result in api.get_all_operations() if "{" in result.ok().path),
                        # cancels first (then the event streams end), the delete last
                        key=lambda operation: ("/cancel" not in operation.path) + (operation.method == "delete"))
    checked = []
    for operation in operations:
        prefix, name = next((prefix, operation.path[len(prefix) + 2:].split("}")[0]) for prefix in
                            sorted(ids, key=len, reverse=True) if operation.path.startswith(prefix + "/{"))
        path_parameters = {name: ids[prefix]}
        if "{name}" in operation.path:  # a stress test's file: none exist while it is queued (a 404 to check)
            path_parameters["name"] = "evalscope.log"
        query = {"format": "json"} if operation.path.endswith("/export") else None
        response = operation.Case(path_parameters=path_parameters, query=query).call_and_validate(checks=CHECKS)
        checked.append((operation.label, response.status_code))
    assert len(checked) == len(operations) >= 19
    refused = {label: status for label, status in checked if status >= 300}
    assert refused == {"GET /api/v1/stress-tests/{job_id}/files/{name}": 404}, checked  # real rows, not 404s
