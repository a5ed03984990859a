"""The Python client (clients/python/pep_client) against a live platform: gunicorn, the job worker, the
simulator. Every call, typed errors, a stream consumed to its end and one closed early; its types
regenerated from the served OpenAPI document equal the committed ones, and every route it calls is one
the document lists (and every documented route has a call)."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pep_client import BadRequest, Client, Conflict, NotFound, PepConnectionError, Unauthorized
from pep_client import events as ev
from pep_client._codegen import generate
from pep_client.errors import Forbidden, ServerError

from tests.support.app_server import AppServer
from tests.support.live_platform import arithmetic_right, live_platform
from tests.support.simulator import PROJECT_ROOT, SimulatorProcess, free_port

CLIENT_DIR = PROJECT_ROOT / "clients" / "python" / "pep_client"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppServer, SimulatorProcess]]:
    with live_platform(tmp_path_factory.mktemp("client")) as served:
        yield served


@pytest.fixture
def pep(platform: tuple[AppServer, SimulatorProcess]) -> Iterator[Client]:
    with Client(platform[0].url, retries=1) as client:
        yield client


def test_the_types_are_the_ones_the_served_document_generates(pep: Client) -> None:
    assert generate(pep.openapi()) == (CLIENT_DIR / "types.py").read_text()


def client_routes() -> set[tuple[str, str]]:
    """(method, path template) of every call each client class makes, its base classes' calls included
    with its own ``path``, read from client.py's syntax tree."""
    tree = ast.parse((CLIENT_DIR / "client.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def own(node: ast.ClassDef) -> tuple[str | None, set[tuple[str, str]]]:
        prefix, calls = None, set()
        for item in node.body:  # the class's own ``path = "..."``
            if isinstance(item, ast.Assign) and [getattr(t, "id", None) for t in item.targets] == ["path"]:
                prefix = item.value.value  # type: ignore[attr-defined]
        for item in ast.walk(node):
            if (isinstance(item, ast.Call) and isinstance(item.func, ast.Attribute)
                    and item.func.attr in ("json", "request", "events") and len(item.args) >= 2
                    and isinstance(item.args[0], ast.Constant)):
                path = _path_text(item.args[1])
                if path is not None:
                    calls.add((item.args[0].value, path))
        return prefix, calls

    def resolved(name: str) -> tuple[str | None, set[tuple[str, str]]]:
        prefix, calls = own(classes[name])
        for base in classes[name].bases:
            if isinstance(base, ast.Name) and base.id in classes:
                base_prefix, base_calls = resolved(base.id)
                prefix = prefix or base_prefix
                calls |= base_calls
        return prefix, calls

    routes = set()
    for name in classes:
        prefix, calls = resolved(name)
        for method, path in calls:
            if "{self.path}" in path and prefix is None:
                continue  # an abstract base: its subclasses give the path
            routes.add((method, _template(path.replace("{self.path}", prefix or ""))))
    return routes


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def _path_text(node: ast.expr) -> str | None:
    """The path a call names, its placeholders kept; None for a path computed at run time (Analytics.export
    picks one of the paths its sibling methods call)."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.Attribute) and ast.unparse(node) == "self.path":
        return "{self.path}"
    if not isinstance(node, ast.JoinedStr):
        return None
    return "".join(str(part.value) if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
                   for part in node.values)


def test_every_route_the_client_calls_is_documented_and_every_documented_route_is_called(pep: Client) -> None:
    called = client_routes()
    documented = {(method.upper(), _template(path.removeprefix("/api/v1")))
                  for path, operations in pep.openapi()["paths"].items() for method in operations}
    assert called - documented == set(), "the client calls routes the document does not list"
    assert documented - called == set(), "documented routes without a client call"


def test_models_and_one_model(pep: Client) -> None:
    models = pep.models.list()
    keys = [m["key"] for m in models]
    assert {"sim-fast", "sim-reasoning", "sim-answer-a"} <= set(keys)
    assert pep.models.get("sim-fast")["key"] == "sim-fast"
    assert all(m["provider"] == "simulator" for m in pep.models.list(provider="simulator"))
    with pytest.raises(NotFound) as missing:
        pep.models.get("no-such-model")
    assert missing.value.status == 404 and missing.value.code == "not_found"


def test_a_stream_consumed_to_its_end(platform: tuple[AppServer, SimulatorProcess], pep: Client) -> None:
    _, sim = platform
    since = time.time()
    with pep.inference.stream(["sim-fast", "sim-reasoning"], "client stream to the end", max_tokens=12) as stream:
        events = list(stream)
    started, *middle, done = events
    assert isinstance(started, ev.RunStarted) and [t.model for t in started.targets] == ["sim-fast", "sim-reasoning"]
    assert isinstance(done, ev.RunDone) and (done.succeeded, done.failed) == (2, 0)
    finished = {e.model: e for e in middle if isinstance(e, ev.ModelDone)}
    assert set(finished) == {"sim-fast", "sim-reasoning"}
    records = {r["model"]: r for r in sim.requests(since) if r["prompt"] == "client stream to the end"}
    for model in ("sim-fast", "sim-reasoning"):
        deltas = [e for e in middle if isinstance(e, ev.TextDelta | ev.ReasoningDelta) and e.model == model]
        assert len(deltas) == records[model]["tokens_emitted"] == finished[model].metrics["output_tokens"]
        assert finished[model].ttft_ms is not None and finished[model].ttft_ms > 0
    assert any(isinstance(e, ev.ReasoningDelta) for e in middle)  # sim-reasoning thinks first
    run = pep.inference.run(done.run_id)
    stored = {r["model"]: r for r in run["results"]}
    fast_text = "".join(e.text for e in middle if isinstance(e, ev.TextDelta) and e.model == "sim-fast")
    assert stored["sim-fast"]["output"] == fast_text
    assert any(r["id"] == done.run_id for r in pep.inference.runs(limit=50)["runs"])


def test_a_stream_closed_early_stops_the_models(platform: tuple[AppServer, SimulatorProcess], pep: Client) -> None:
    _, sim = platform
    since = time.time()
    stream = pep.inference.stream(["sim-slow"], "client stream cancelled", max_tokens=200)
    run_id = None
    for event in stream:
        if isinstance(event, ev.RunStarted):
            run_id = event.run_id
        if isinstance(event, ev.TextDelta):
            break
    stream.close()
    assert run_id is not None

    def record() -> dict | None:
        found = [r for r in sim.requests(since) if r["prompt"] == "client stream cancelled"]
        return found[0] if found and found[0]["status"] != "running" else None

    deadline = time.monotonic() + 15
    while (ended := record()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ended is not None and ended["status"] == "disconnected" and ended["tokens_emitted"] < 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            result = pep.inference.run(run_id)["results"][0]
            if result.get("error"):
                break
        except NotFound:  # not written yet
            pass
        time.sleep(0.2)
    assert result["error"]["code"] == "cancelled" and result["status"] != "completed"


def test_one_models_whole_answer_and_a_failing_model(pep: Client) -> None:
    answer = pep.inference.complete("sim-fast", "one answer", max_tokens=6)
    assert answer["status"] == "completed" and answer["metrics"]["output_tokens"] == 6
    assert len(answer["output"].split()) == 6  # the simulator's tokens are words
    assert pep.inference.run(answer["run_id"])["results"][0]["output"] == answer["output"]
    with pep.inference.stream(["sim-error"], "fail") as stream:
        failed = [e for e in stream if isinstance(e, ev.ModelFailed)]
    assert len(failed) == 1 and failed[0].model == "sim-error" and failed[0].code and failed[0].message


def test_a_refused_request_names_the_field(pep: Client) -> None:
    with pytest.raises(BadRequest) as refused:
        pep.stress.create(model="sim-fast", concurrency=[0], requests=[1], prompt="x")
    assert refused.value.status == 400 and refused.value.field and refused.value.field.startswith("concurrency")
    with pytest.raises(BadRequest) as refused, pep.inference.stream(["no-such-model"], "x"):
        pass
    assert refused.value.field == "models[0]"
    with pytest.raises(NotFound):
        pep.stress.follow("000000000000")
    with pytest.raises(ValueError):
        pep.stress.get("")


def test_a_stress_test_created_followed_and_read(pep: Client) -> None:
    job = pep.stress.create(model="sim-fast", concurrency=[1, 2], requests=[3, 4], prompt="client stress",
                            output_tokens=8, label="client")
    assert job["status"] == "queued"
    seen: list[ev.JobEvent] = []
    with pep.stress.follow(job["id"]) as events:
        for event in events:
            seen.append(event)
    end = seen[-1]
    assert isinstance(end, ev.JobEnded) and end.status == "completed", end
    levels = [e.level for e in seen if isinstance(e, ev.LevelDone)]
    assert [lv["concurrency"] for lv in levels] == [1, 2] and [lv["requests"] for lv in levels] == [3, 4]
    assert any(isinstance(e, ev.Progress) for e in seen)
    assert [e.status for e in seen if isinstance(e, ev.StatusChanged)][-1] == "completed"

    assert pep.stress.get(job["id"])["status"] == "completed"
    assert any(j["id"] == job["id"] for j in pep.stress.list(model="sim-fast")["jobs"])
    results = pep.results.get(job["id"])
    assert [lv["succeeded"] for lv in results["levels"]] == [3, 4]
    strict = pep.results.get(job["id"], ttft_ms=0.001)
    assert strict["slo"]["ttft_ms"] == 0.001 and all(not lv["slo"]["meets"] for lv in strict["levels"])
    rows = list(csv.DictReader(io.StringIO(pep.results.export(job["id"], "csv").decode())))
    assert [int(r["concurrency"]) for r in rows] == [1, 2]
    requests = list(csv.DictReader(io.StringIO(pep.results.export(job["id"], "requests.csv").decode())))
    assert len(requests) == 7
    assert json.loads(pep.results.export(job["id"], "json"))["job"]["id"] == job["id"]
    assert pep.results.export(job["id"], "html").lstrip().lower().startswith(b"<!doctype html")
    assert any(r["id"] == job["id"] for r in pep.results.list(limit=100)["results"])
    files = pep.stress.files(job["id"])["files"]
    assert files and pep.stress.file(job["id"], files[0]["name"])
    assert pep.stress.log(job["id"], lines=50)
    assert pep.stress.wait(job["id"], timeout=5)["status"] == "completed"

    again = pep.stress.create(model="sim-fast", concurrency=[1], requests=[2], prompt="client stress", output_tokens=8)
    pep.stress.follow_to_end(again["id"])
    comparison = pep.results.compare([job["id"], again["id"]])
    assert comparison["baseline"] == job["id"] and comparison["ids"] == [job["id"], again["id"]]
    compared = list(csv.DictReader(io.StringIO(pep.results.export_comparison([job["id"], again["id"]], "csv")
                                               .decode())))
    assert compared
    pep.stress.delete(again["id"])
    with pytest.raises(NotFound):
        pep.stress.get(again["id"])


def test_a_stress_test_cancelled(pep: Client) -> None:
    job = pep.stress.create(model="sim-slow", concurrency=[2], requests=[20], prompt="client cancel", output_tokens=50)
    deadline = time.monotonic() + 60
    while pep.stress.get(job["id"])["status"] not in ("running",) and time.monotonic() < deadline:
        time.sleep(0.2)
    with pytest.raises(Conflict) as running:
        pep.stress.delete(job["id"])
    assert running.value.status == 409
    cancelled = pep.stress.cancel(job["id"])
    assert cancelled["status"] in ("cancelling", "cancelled")
    assert pep.stress.wait(job["id"], timeout=60, poll_s=0.3)["status"] == "cancelled"


def test_stress_presets_datasets_and_an_upload(pep: Client) -> None:
    assert pep.stress.presets()["presets"]
    formats = pep.stress.datasets()["formats"]
    assert "line_by_line" in formats
    uploaded = pep.stress.upload_dataset(b"first prompt\nsecond prompt\n", format="line_by_line")
    assert uploaded["records"] == 2
    assert any(d["id"] == uploaded["id"] for d in pep.stress.datasets()["datasets"])
    with pytest.raises(BadRequest) as refused:
        pep.stress.upload_dataset(b"x\n", format="nope")
    assert refused.value.field == "format"


def test_a_capacity_search_created_listed_and_cancelled(pep: Client) -> None:
    search = pep.capacity.create(model="sim-fast", prompt="client search", output_tokens=8, max_concurrency=4,
                                 requests=4)
    assert pep.capacity.get(search["id"])["id"] == search["id"]
    assert any(s["id"] == search["id"] for s in pep.capacity.list()["searches"])
    pep.capacity.cancel(search["id"])
    assert pep.capacity.wait(search["id"], timeout=90, poll_s=0.5)["status"] in ("cancelled", "completed")


def test_an_evaluation_followed_reviewed_and_on_the_leaderboard(pep: Client) -> None:
    limit = 8
    arithmetic = next(d for d in pep.datasets.list()["datasets"] if d["name"].startswith("Arithmetic"))
    assert pep.datasets.get(arithmetic["id"])["items"] == 40
    assert pep.datasets.preview(arithmetic["id"], rows=3)
    job = pep.evaluations.create(models=["sim-answer-a", "sim-answer-b"], datasets=[arithmetic["id"]], limit=limit)
    cells_seen = []
    final = pep.evaluations.follow_to_end(job["id"], lambda e: cells_seen.append(e)
                                          if isinstance(e, ev.CellUpdate) else None)
    assert final["status"] == "completed", final.get("error")
    assert cells_seen
    for cell in final["cells"]:
        right, n = arithmetic_right(cell["model"], limit)
        assert cell["metrics"]["acc"]["n"] == n and cell["metrics"]["acc"]["score"] == pytest.approx(right / n)
        wrong = list(pep.evaluations.all_samples(job["id"], wrong=True, cell=cell["id"], limit=3))
        assert len(wrong) == n - right and all(s["correct"] is False for s in wrong)
    assert any(j["id"] == job["id"] for j in pep.evaluations.list()["jobs"])
    a, b = (cell["id"] for cell in final["cells"])
    pairs = pep.evaluations.side_by_side(a, b)
    assert pairs["matched"] == limit
    rows = list(csv.DictReader(io.StringIO(pep.evaluations.export(job["id"], "csv").decode())))
    assert len(rows) == 2
    assert len(json.loads(pep.evaluations.export(job["id"], "json", what="samples"))["samples"]) == 2 * limit
    assert pep.evaluations.log(job["id"])
    board = pep.leaderboard()
    assert {r["model"] for r in board["rows"]} >= {"sim-answer-a", "sim-answer-b"}
    paired = pep.analytics.compare(models="sim-answer-a,sim-answer-b", dataset=arithmetic["id"])
    assert paired and json.dumps(paired).count("sim-answer-a") >= 1
    for call in (pep.analytics.trends, pep.analytics.correlations, pep.analytics.quality_cost):
        assert isinstance(call(), dict)
    assert pep.analytics.overview()
    assert b"sim-answer-a" in pep.analytics.export("leaderboard", "csv")


def test_an_uploaded_dataset_and_a_cancelled_evaluation(pep: Client) -> None:
    items = b'{"id": "q1", "question": "2+2?", "answer": "4"}\n{"id": "q2", "question": "3+3?", "answer": "6"}\n'
    stored = pep.datasets.upload("qa", "client qa", items)
    assert stored["items"] == 2 and stored["created"] is True
    assert pep.datasets.upload("qa", "client qa", items)["created"] is False
    job = pep.evaluations.create(models=["sim-slow"], datasets=[stored["id"]])
    pep.evaluations.cancel(job["id"])
    assert pep.evaluations.wait(job["id"], timeout=90, poll_s=0.3)["status"] == "cancelled"
    with pytest.raises(BadRequest) as refused:
        pep.datasets.upload("nope", "x", items)
    assert refused.value.field == "kind"


def test_workers_are_listed(pep: Client) -> None:
    workers = pep.workers()["workers"]
    assert workers and any(w["alive"] for w in workers)


# --- retries and connection errors, against a local server that misbehaves on purpose ----------------


class _Flaky(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        status = type(self).answers.pop(0) if type(self).answers else 200
        body = (json.dumps({"error": {"code": "unavailable", "message": "busy", "details": {}}}) if status >= 400
                else json.dumps({"models": [{"key": "k"}]})).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.answers, _Flaky.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_read_is_retried_and_a_post_is_not(flaky: str) -> None:
    with Client(flaky, retries=2) as client:
        _Flaky.answers = [503, 502]
        assert client.models.list() == [{"key": "k"}]
        assert _Flaky.seen == ["GET /api/v1/models"] * 3
        _Flaky.answers, _Flaky.seen = [503], []
        with pytest.raises(ServerError) as failed:
            client.stress.create(model="m", concurrency=[1], requests=[1])
        assert failed.value.status == 503 and failed.value.code == "unavailable"
        assert _Flaky.seen == ["POST /api/v1/stress-tests"]
        _Flaky.answers, _Flaky.seen = [503, 503, 503], []
        with pytest.raises(ServerError) as failed:
            client.models.list()
        assert failed.value.status == 503 and len(_Flaky.seen) == 3


def test_nothing_listening_is_a_connection_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=0) as client, pytest.raises(PepConnectionError) as failed:
        client.models.list()
    assert "cannot connect" in str(failed.value)


# --- sign-in on: the token -------------------------------------------------------------------------


def test_the_token_from_the_argument_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = "viewer:viewer-token-0123456789abcdef,operator:operator-token-0123456789abcdef"
    env = {"PEP_AUTH__ENABLED": "true", "API_TOKENS": tokens, "SECRET_KEY": "client-test-secret-key-0123456789"}
    with AppServer(env=env) as server:
        with Client(server.url, token="") as anonymous, pytest.raises(Unauthorized):
            anonymous.models.list()
        monkeypatch.setenv("PEP_API_TOKEN", "viewer-token-0123456789abcdef")
        with Client(server.url) as viewer:
            assert viewer.models.list()
            with pytest.raises(Forbidden):
                viewer.stress.create(model="sim-fast", concurrency=[1], requests=[1], prompt="x")
        with Client(server.url, token="operator-token-0123456789abcdef") as operator, pytest.raises(BadRequest):
            operator.stress.create(model="sim-fast", concurrency=[0], requests=[1], prompt="x")


# --- installable on its own --------------------------------------------------------------------------


def test_the_client_builds_as_a_package_of_its_own(tmp_path: Path) -> None:
    """``pip install ./clients/python``: a wheel with pep_client and the pep command, needing only its own
    dependencies, and importing nothing of the platform."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"  # a copy: the build writes its build/ and egg-info beside the sources
    shutil.copytree(CLIENT_DIR.parent, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=240)
    (wheel,) = tmp_path.glob("pep_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {name.split("/")[0] for name in names} == {"pep_client", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    assert "pep_client/types.py" in names and "pep_client/cli/__init__.py" in names
    required = {line.split(":", 1)[1].split(">")[0].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")}
    assert required == {"httpx", "httpx-sse", "typing-extensions", "typer", "rich"}
    assert "pep = pep_client.cli:main" in entry_points
    probe = ("import sys; import pep_client.cli, pep_client; from pep_client import Client; "
             "print(pep_client.__file__); print(any(m == 'backend' or m.startswith('backend.') for m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
                           cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert shown == [f"{wheel}/pep_client/__init__.py", "False"]
