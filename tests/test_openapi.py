"""The OpenAPI 3.1 document at /api/v1/openapi.json and the offline docs page at /api/docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask, Request
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from werkzeug.datastructures import ImmutableMultiDict

from backend.openapi.document import build
from backend.stress.params import StressParams
from tests.support.analytics import add_run, pattern
from tests.support.results import add_job as add_stress_job
from tests.support.results import failed, level, ok

ROOT = Path(__file__).resolve().parent.parent
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def document(client) -> dict:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.json


def _api_routes(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every /api/v1 rule, spelled from the url_map (not from the document)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
            routes |= {(method, path) for method in rule.methods - IGNORED_METHODS}
    return routes


def test_every_api_route_is_documented_and_every_documented_route_exists(app: Flask, document: dict) -> None:
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    routes = _api_routes(app)
    assert len(routes) > 40  # the url_map was read: stress, inference, results, evaluations, analytics...
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "documented operations with no route"
    assert ("GET", "/api/v1/stress-tests/{job_id}/files/{name}") in documented  # a <path:...> converter too


def test_every_api_view_records_its_models(app: Flask) -> None:
    """Each /api/v1 view carries @documented, so no operation falls back to "some JSON" unnoticed."""
    bare = sorted(rule.endpoint for rule in app.url_map.iter_rules()
                  if rule.rule.startswith("/api/v1") and not hasattr(app.view_functions[rule.endpoint], "__openapi__"))
    assert bare == []


def test_document_is_valid_openapi_3_1_with_the_request_models(document: dict) -> None:
    validate(document)  # raises on anything OpenAPI 3.1 does not allow
    assert document["openapi"] == "3.1.0"
    create = document["paths"]["/api/v1/stress-tests"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/StressParams"}
    stress = document["components"]["schemas"]["StressParams"]
    assert set(stress["properties"]) == set(StressParams.model_fields)  # generated from the model itself
    assert stress.get("additionalProperties") is False  # STRICT: unknown fields refused, as the route does
    error = document["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["error"]
    assert set(document["components"]["schemas"]["ErrorDetail"]["required"]) == {"code", "message", "details"}
    for name in ("InferenceBody", "EvaluationParams", "CapacitySearchBody", "EvaluationDatasetUpload"):
        assert name in document["components"]["schemas"]


def test_document_says_tokens_are_required_only_when_authentication_is_on(app: Flask, document: dict) -> None:
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert app.config["PEP"]["auth"]["enabled"] is False and {} in document["security"]  # off outside production
    app.config["PEP"]["auth"]["enabled"] = True
    assert build(app)["security"] == [{"bearer": []}]


def test_document_reads_query_arguments_from_the_code(document: dict) -> None:
    params = {p["name"]: p for p in document["paths"]["/api/v1/stress-tests"]["get"]["parameters"]}
    # backend/stress/api.py list_jobs: int_arg("limit", 50, 1, 500), int_arg("offset", 0, 0, MAX_OFFSET)
    assert params["limit"]["schema"] == {"type": "integer", "default": 50, "minimum": 1, "maximum": 500}
    assert params["offset"]["schema"]["maximum"] == 10**9
    assert params["status"]["schema"] == {"type": "string"}
    assert all(p["in"] == "query" and not p["required"] for p in params.values())


def test_capacity_body_is_the_search_fields_with_a_workload_but_no_concurrency(document: dict) -> None:
    body = document["components"]["schemas"]["CapacitySearchBody"]["properties"]
    assert "concurrency" not in body
    assert {"start", "max_concurrency", "model", "manual_config", "requests"} <= set(body)


def test_streams_uploads_and_downloads_say_their_media_types(document: dict) -> None:
    paths = document["paths"]
    for path in ("/api/v1/stress-tests/{job_id}/events", "/api/v1/evaluations/{job_id}/events"):
        assert set(paths[path]["get"]["responses"]["200"]["content"]) == {"text/event-stream"}
    assert "text/event-stream" in paths["/api/v1/multi-inference"]["post"]["responses"]["200"]["content"]
    upload = paths["/api/v1/datasets"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]
    log = paths["/api/v1/stress-tests/{job_id}/log"]["get"]["responses"]["200"]["content"]
    assert set(log) == {"text/plain", "application/json"}


def test_refusals_match_the_documented_error_shape(client, document: dict) -> None:  # type: ignore[no-untyped-def]
    refused = client.post("/api/v1/stress-tests", json={"concurrency": "10"})
    assert refused.status_code == 400
    assert set(refused.json) == {"error"} and set(refused.json["error"]) == {"code", "message", "details"}
    assert "4XX" in document["paths"]["/api/v1/stress-tests"]["post"]["responses"]


def test_docs_page_works_offline_with_no_inline_script(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert len(scripts) == 2 and all('src="/static/' in attrs and body.strip() == "" for attrs, body in scripts)
    assert not re.search(r"""(src|href)=["']https?://""", html)  # nothing from a CDN
    assert 'data-spec-url="/api/v1/openapi.json"' in html
    for asset in re.findall(r"""(?:src|href)="(/static/[^"]+)""", html):
        served = client.get(asset)
        assert served.status_code == 200, asset
        served.close()
    initializer = (ROOT / "static/vendor/swagger-ui/pep-initializer.js").read_text()
    assert "validatorUrl: null" in initializer  # Swagger UI would otherwise send the document to a remote validator
    assert (ROOT / "static/vendor/swagger-ui/LICENSE").is_file()
    directives = dict(part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";"))
    assert directives["script-src"] == "'self'"  # the page runs under the strict policy, nothing added for it


# --- query arguments: the document against what the views read at run time --------------------------------


class _RecordingArgs(ImmutableMultiDict):
    """The request's query (and form) mapping, noting every name a view looks up."""

    reads: set[str] = set()

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        _RecordingArgs.reads.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        _RecordingArgs.reads.add(str(key))
        return super().__contains__(key)

    def get(self, key, default=None, type=None):  # type: ignore[no-untyped-def]
        _RecordingArgs.reads.add(key)
        return super().get(key, default, type)

    def getlist(self, key, type=None):  # type: ignore[no-untyped-def]
        _RecordingArgs.reads.add(key)
        return super().getlist(key, type)


class _RecordingRequest(Request):
    parameter_storage_class = _RecordingArgs


@pytest.fixture
def rows(app: Flask, client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A real row for every route that takes an id: a finished stress job with per-request rows, a finished
    evaluation of two models on one dataset (cells with samples), a stored inference run, a bundled dataset."""
    add_stress_job(app, "st1", [level(1, [ok(100.0), ok(200.0), failed()]), level(2, [ok(150.0), ok(250.0)])])
    cells = add_run(app, "ev1", [{"model": "m-a", "dataset": "arith", "right": pattern(20, 15)},
                                 {"model": "m-b", "dataset": "arith", "right": pattern(20, 10)}])
    run = client.post("/api/v1/inference", json={"model": "sim-fast", "prompt": "hi", "max_tokens": 8})
    assert run.status_code == 200, run.get_data(as_text=True)
    dataset = client.get("/api/v1/datasets").json["datasets"][0]["id"]
    return {"job_id": "st1", "evaluation": "ev1", "run_id": run.json["run_id"], "dataset_id": dataset,
            "key": "sim-fast", "search_id": "none", "name": "none", "cell_a": str(cells[0]), "cell_b": str(cells[1])}


def _get_operations(document: dict) -> list[tuple[str, dict]]:
    return [(path, item["get"]) for path, item in document["paths"].items()
            if "get" in item and not path.endswith("/events")]  # the streams would follow a job until it ends


def _url(path: str, rows: dict[str, str]) -> str:
    if path.startswith("/api/v1/evaluations/{job_id}"):
        path = path.replace("{job_id}", rows["evaluation"])
    return re.sub(r"\{(\w+)\}", lambda m: rows[m[1]], path)


def _valid_query(operation: dict, rows: dict[str, str]) -> dict[str, str]:
    """Every documented argument at a value the document says is valid (and the real cells for a comparison)."""
    query = {}
    for parameter in operation.get("parameters", []):
        schema = parameter["schema"]
        if parameter["in"] != "query":
            continue
        if "enum" in schema:
            query[parameter["name"]] = next(v for v in schema["enum"] if v not in ("html", ""))
        elif schema["type"] == "integer":
            query[parameter["name"]] = str(schema.get("default", schema.get("minimum", 1)))
        elif schema["type"] == "number":
            query[parameter["name"]] = "1"
    for name, value in (("a", rows["cell_a"]), ("b", rows["cell_b"]), ("models", "m-a,m-b"), ("dataset", "arith"),
                        ("ids", "st1")):
        if any(p["name"] == name for p in operation.get("parameters", [])):
            query[name] = value
    return query


def _documented_query(operation: dict) -> set[str]:
    return {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}


def _assert_matches_document(document: dict, operation: dict, answer: object, path: str) -> None:
    """A 200 JSON answer against the schema the document gives it (JSON Schema 2020-12, as OpenAPI 3.1)."""
    schema = operation["responses"]["200"]["content"]["application/json"].get("schema")
    if schema is not None:
        validator = Draft202012Validator({**schema, "components": document["components"]})
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(answer)]
        assert errors == [], (path, errors[:5])


def test_views_read_no_query_argument_the_document_leaves_out(app: Flask, client, document: dict,  # type: ignore[no-untyped-def]
                                                               rows: dict[str, str]) -> None:
    """Every GET route, with no arguments and with every documented one: each name a view (or a helper it
    hands the query to) looks up in request.args at run time is a documented query parameter."""
    app.request_class = _RecordingRequest
    undocumented, read_somewhere, answered = {}, {}, set()
    for path, operation in _get_operations(document):
        reads: set[str] = set()
        for query in ({}, _valid_query(operation, rows)):
            _RecordingArgs.reads = set()
            response = client.get(_url(path, rows), query_string=query)
            assert response.status_code < 500, (path, query, response.get_data(as_text=True)[:300])
            if response.status_code == 200 and response.mimetype == "application/json":
                _assert_matches_document(document, operation, response.json, path)
                answered.add(path)
            response.close()
            reads |= _RecordingArgs.reads
        if reads - _documented_query(operation):
            undocumented[path] = sorted(reads - _documented_query(operation))
        read_somewhere[path] = reads
    assert undocumented == {}
    assert {"/api/v1/evaluations/{job_id}/samples", "/api/v1/evaluations/side-by-side", "/api/v1/results/{job_id}",
            "/api/v1/stress-tests/{job_id}/files", "/api/v1/datasets/{dataset_id}", "/api/v1/leaderboard"} <= answered
    # The recorder saw the reads of shared helpers (which the views' own source does not spell):
    slo = {"ttft_ms", "tpot_ms", "latency_s", "error_rate", "percentile"}  # backend/results/slo_args.py
    assert slo <= read_somewhere["/api/v1/results/{job_id}"]
    assert slo <= read_somewhere["/api/v1/analytics/quality-cost"]
    assert {"pick", "group", "models", "provider", "since", "until", "runs"} <= read_somewhere["/api/v1/leaderboard"]
    # ... and each documented argument of these routes is one the views read (the document claims none extra).
    for path in ("/api/v1/results/{job_id}/export", "/api/v1/leaderboard", "/api/v1/evaluations/{job_id}/samples",
                 "/api/v1/analytics/correlations", "/api/v1/evaluations/side-by-side"):
        assert _documented_query(document["paths"][path]["get"]) == read_somewhere[path], path


def _query_schema(document: dict, path: str, name: str) -> dict:
    return next(p["schema"] for p in document["paths"][path]["get"]["parameters"] if p["name"] == name)


def test_enumerated_arguments_list_what_the_views_accept(document: dict) -> None:
    """The enums come from the constants the views validate with (spelled here from the routes' docs)."""
    tables = ["csv", "json", "xlsx"]
    expected = {
        ("/api/v1/results/{job_id}/export", "format"): ["csv", "json", "requests.csv", "html"],
        ("/api/v1/results/compare/export", "format"): ["csv", "json", "html"],
        ("/api/v1/evaluations/{job_id}/export", "format"): tables,
        ("/api/v1/evaluations/{job_id}/export", "what"): ["scores", "samples"],
        ("/api/v1/leaderboard", "format"): [*tables, "html"],
        ("/api/v1/analytics/compare", "format"): [*tables, "html"],
        ("/api/v1/analytics/trends", "format"): tables,
        ("/api/v1/analytics/correlations", "format"): tables,
        ("/api/v1/analytics/quality-cost", "format"): tables,
        ("/api/v1/leaderboard", "pick"): ["latest", "best"],
        ("/api/v1/leaderboard", "group"): ["mcq", "qa", "builtin"],
        ("/api/v1/evaluations/side-by-side", "outcome"): ["only_a", "only_b", "both_wrong", "both_right"],
        ("/api/v1/models", "capability"): ["streaming", "images", "video", "reasoning"],
    }
    for (path, name), values in expected.items():
        assert _query_schema(document, path, name) == {"type": "string", "enum": values}, (path, name)
    assert _query_schema(document, "/api/v1/results/{job_id}", "ttft_ms")["type"] == "number"  # read by number()
    samples = "/api/v1/evaluations/{job_id}/samples"
    assert _query_schema(document, samples, "limit") == {"type": "integer", "default": 25, "minimum": 1,
                                                         "maximum": 500}  # review.PAGE_SIZE, MAX_PAGE_SIZE
    assert {"true", "false", "1", "0"} <= set(_query_schema(document, samples, "wrong")["enum"])


def test_every_enum_is_exactly_what_the_view_accepts(client, document: dict,  # type: ignore[no-untyped-def]
                                                     rows: dict[str, str]) -> None:
    """Run every GET route: each member of a documented enum is accepted, a value outside it is refused naming
    the argument, and no argument without an enum is refused as "must be one of" (an enum the document missed)."""
    checked = 0
    for path, operation in _get_operations(document):
        valid = _valid_query(operation, rows)
        for parameter in operation.get("parameters", []):
            name, schema = parameter["name"], parameter["schema"]
            if parameter["in"] != "query" or schema["type"] != "string":
                continue
            tries = [(value, True) for value in schema.get("enum", [])] + [("zz-not-a-choice", "enum" not in schema)]
            for value, accepted in tries:
                response = client.get(_url(path, rows), query_string={**valid, name: value})
                body = response.get_json(silent=True) if response.mimetype == "application/json" else None
                response.close()
                error = (body or {}).get("error") or {}
                refused = response.status_code == 400 and error.get("details", {}).get("field") == name
                if "enum" in schema:
                    assert refused != accepted, (path, name, value, response.status_code, error)
                else:
                    assert not (refused and "must be one of" in error["message"]), (path, name, error)
                checked += 1
    assert checked > 60
