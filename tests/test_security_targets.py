"""Outbound targets (backend/security/targets.py): the rules through the three APIs that take a manual
endpoint, a name resolving to a refused address, the platform's own port, and upstream bodies not echoed."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from backend.app import create_app
from backend.config import ConfigError, load_config
from backend.security import targets
from backend.stress.kind import connection_problem
from tests.conftest import TEST_MODELS
from tests.support.app_server import AppServer
from tests.support.simulator import SimulatorProcess, free_port


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Flask:
    root = tmp_path_factory.mktemp("targets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVIRONMENT", "test")
        return create_app({
            "database": {"path": str(root / "app.db")},
            "logging": {"dir": str(root / "logs")},
            "catalog": {"models_file": TEST_MODELS},
            "simulator": {"port": simulator.port},
            "stress": {"outputs_dir": str(root / "out"), "logs_dir": str(root / "slogs"),
                       "datasets_dir": str(root / "datasets")},
        })


@pytest.fixture
def rules(app: Flask, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The app's ``targets`` section, restored after each test."""
    section = {"allow": [], "deny": [], "allow_private": True}
    monkeypatch.setitem(app.config["PEP"], "targets", section)
    return section


def _body(api: str, url: str) -> tuple[str, dict[str, Any]]:
    manual = {"api_url": url, "model_name": "sim-echo"}
    if api == "inference":
        return "/api/v1/inference", {"manual_config": manual, "text": "hi", "stream": False, "max_tokens": 4}
    if api == "stress":
        return "/api/v1/stress-tests", {"manual_config": manual, "concurrency": [1], "requests": [1],
                                        "prompt": "hi"}
    return "/api/v1/evaluations", {"manual_config": manual, "datasets": ["no-such-dataset"]}


def _refusal(app: Flask, api: str, url: str) -> dict[str, Any]:
    path, body = _body(api, url)
    response = app.test_client().post(path, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    return response.get_json()["error"]


APIS = ["inference", "stress", "evaluation"]
CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(("url", "message"), [
    ("http://169.254.169.254/latest/meta-data" + CHAT,
     "169.254.169.254 is a link-local address (targets.deny default: metadata)"),
    ("http://[fd00:ec2::254]" + CHAT, "fd00:ec2::254 is a link-local address (targets.deny default: metadata)"),
    ("http://metadata.google.internal" + CHAT,
     "metadata.google.internal is a cloud metadata service (targets.deny default: metadata)"),
    ("http://127.0.0.1:5000" + CHAT,  # server.port: the platform's own port on this machine
     "127.0.0.1 is this machine, and port 5000 is the platform's own (targets.deny default: own port)"),
    ("http://0.0.0.0:7000" + CHAT, "0.0.0.0 is the unspecified address, this machine (targets.deny default: own port)"),
])
def test_default_rules_refuse_through_every_api(app: Flask, rules: dict[str, Any], api: str, url: str,
                                                message: str) -> None:
    error = _refusal(app, api, url)
    assert error["message"] == f"manual_config.api_url: {message}"
    assert error["details"]["field"] == "manual_config.api_url"
    assert error["code"] == "target_refused"
    assert error["details"]["rule"] == message.rpartition("(")[2].rstrip(")")


@pytest.mark.parametrize("api", APIS)
def test_a_non_http_scheme_is_refused_naming_the_field(app: Flask, rules: dict[str, Any], api: str) -> None:
    error = _refusal(app, api, "gopher://127.0.0.1:70" + CHAT)
    assert error["details"]["field"] == "manual_config.api_url" and "http" in error["message"]
    # The rule itself, below the request schema (which refuses it first):
    with pytest.raises(targets.TargetRefused, match=r"'gopher' is not allowed \(targets default: http and https"):
        targets.check_url("gopher://127.0.0.1:70/", targets.Policy.from_config(app.config["PEP"]))


@pytest.mark.parametrize("api", APIS)
def test_private_addresses_are_refused_when_not_allowed(app: Flask, rules: dict[str, Any], api: str,
                                                        simulator: SimulatorProcess) -> None:
    rules["allow_private"] = False
    error = _refusal(app, api, simulator.base_url + "/chat/completions")
    assert error["message"] == ("manual_config.api_url: 127.0.0.1 is a loopback address "
                                "(targets.allow_private is false)")


@pytest.mark.parametrize("api", APIS)
def test_the_allow_list_is_exclusive_and_lifts_the_private_rule(app: Flask, rules: dict[str, Any], api: str,
                                                                simulator: SimulatorProcess) -> None:
    rules.update(allow=[f"127.0.0.1:{simulator.port}"], allow_private=False)
    other = free_port()
    error = _refusal(app, api, f"http://127.0.0.1:{other}" + CHAT)
    assert error["message"] == f"manual_config.api_url: 127.0.0.1:{other} is not in targets.allow"
    assert error["details"]["rule"] == "targets.allow"
    # The listed one passes the target check: the request goes on to the next thing it is judged by.
    path, body = _body(api, simulator.base_url + "/chat/completions")
    response = app.test_client().post(path, json=body)
    if api == "inference":
        assert response.status_code == 200 and response.get_json()["error"] is None
    elif api == "stress":
        assert response.status_code == 201, response.get_data(as_text=True)
    else:  # the unknown dataset is refused after the target was accepted
        assert response.status_code == 400 and response.get_json()["error"]["details"]["field"] == "datasets[0]"


@pytest.mark.parametrize("api", APIS)
def test_a_name_resolving_to_a_denied_address_is_refused(app: Flask, rules: dict[str, Any], api: str,
                                                         simulator: SimulatorProcess) -> None:
    # localhost resolves (the system resolver knows it) to 127.0.0.1, inside the denied network.
    rules["deny"] = ["127.0.0.0/8"]
    error = _refusal(app, api, f"http://localhost:{simulator.port}" + CHAT)
    assert error["message"] == ("manual_config.api_url: localhost resolves to 127.0.0.1, which is denied "
                                "(targets.deny: 127.0.0.0/8)")


def test_a_name_resolving_to_metadata_is_refused(app: Flask, rules: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = targets.resolve
    monkeypatch.setattr(targets, "resolve", lambda host, port: (
        [ipaddress.ip_address("169.254.169.254")] if host == "models.example" else real(host, port)))
    error = _refusal(app, "inference", "http://models.example" + CHAT)
    assert error["message"] == ("manual_config.api_url: models.example resolves to 169.254.169.254, which is "
                                "a link-local address (targets.deny default: metadata)")


def test_inference_connects_to_the_checked_address(app: Flask, rules: dict[str, Any], simulator: SimulatorProcess,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay connects to what was checked, not to a second resolution (DNS rebinding): a name no real
    resolver knows reaches the simulator because the checked address is the one used."""
    real = targets.resolve
    monkeypatch.setattr(targets, "resolve", lambda host, port: (
        [ipaddress.ip_address("127.0.0.1")] if host == "pinned.invalid" else real(host, port)))
    path, body = _body("inference", f"http://pinned.invalid:{simulator.port}" + CHAT)
    response = app.test_client().post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["error"] is None and "hi" in response.get_json()["output"]


def test_the_platform_reached_by_its_own_host_header_is_refused(app: Flask, rules: dict[str, Any]) -> None:
    # Behind a port mapping server.port is not the port clients use: the request's own host counts too.
    path, body = _body("inference", "http://platform.example:8123" + CHAT)
    response = app.test_client().post(path, json=body, base_url="http://platform.example:8123")
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == (
        "manual_config.api_url: platform.example:8123 is this platform itself (targets.deny default: own port)")


def test_the_platform_own_history_page_is_not_reachable(live_app: AppServer, simulator: SimulatorProcess) -> None:
    """The finding: a manual endpoint at the platform's own /history answered 502 with that page."""
    response = requests.post(live_app.url + "/api/v1/inference", timeout=10, json={
        "manual_config": {"api_url": live_app.url + "/history", "model_name": "m"}, "text": "hi", "stream": False})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"manual_config.api_url: 127.0.0.1:{live_app.port} is this platform itself (targets.deny default: own port)")
    # The simulator, on its own port of the same machine, stays allowed.
    response = requests.post(live_app.url + "/api/v1/inference", timeout=10, json={
        "manual_config": {"base_url": simulator.base_url, "model_name": "sim-echo"}, "text": "hi", "stream": False,
        "max_tokens": 4})
    assert response.status_code == 200 and response.json()["error"] is None


# --- what comes back from an upstream ----------------------------------------------------------------

MARKER = "PAGE-MARKER-7f3c"
LONG_MESSAGE = "<b>bad</b>\nrequest " + "x" * 1000


class _Upstream(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/html"):
            body, kind = f"<html><body><h1>History</h1><p>{MARKER}</p></body></html>".encode(), "text/html"
        else:
            import json
            body, kind = json.dumps({"error": {"message": LONG_MESSAGE}}).encode(), "application/json"
        self.send_response(500)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _inference_error(app: Flask, url: str) -> dict[str, Any]:
    path, body = _body("inference", url)
    response = app.test_client().post(path, json=body)
    assert response.status_code == 502, response.get_data(as_text=True)
    return response.get_json()["error"]


def test_an_html_error_page_is_never_echoed(app: Flask, rules: dict[str, Any], upstream: str) -> None:
    error = _inference_error(app, upstream + "/html/v1/chat/completions")
    assert MARKER not in error["message"] and "<" not in error["message"]
    assert error["message"] == ("HTTP 500: Internal Server Error (the response body is not a JSON error; "
                                "not shown)")


def test_a_json_error_message_is_kept_short_and_escaped(app: Flask, rules: dict[str, Any], upstream: str) -> None:
    message = _inference_error(app, upstream + "/json/v1/chat/completions")["message"]
    shown = LONG_MESSAGE.replace("\n", "\\n")[:200] + "…"
    assert message == "HTTP 500: " + shown
    assert "\n" not in message


def test_a_refused_port_and_an_unknown_host_read_the_same(app: Flask, rules: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there now
    real = targets.resolve
    monkeypatch.setattr(targets, "resolve", lambda host, p: [] if host == "nowhere.invalid" else real(host, p))
    refused = _inference_error(app, f"http://127.0.0.1:{port}" + CHAT)
    unknown = _inference_error(app, f"http://nowhere.invalid:{port}" + CHAT)
    assert refused["message"] == f"cannot connect to http://127.0.0.1:{port}{CHAT}"
    assert unknown["message"] == f"cannot connect to http://nowhere.invalid:{port}{CHAT}"
    assert refused["code"] == unknown["code"] == "upstream"
    # The job worker's connection test (stress tests and evaluations) gives the same shape too.
    assert connection_problem(f"http://127.0.0.1:{port}/v1", 2) == f"cannot connect to http://127.0.0.1:{port}"
    assert connection_problem(f"http://nowhere.invalid:{port}/v1", 2) == f"cannot connect to http://nowhere.invalid:{port}"


def test_the_worker_checks_again_before_a_launch(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolved to an allowed address at creation and to metadata at launch is refused then."""
    answers = iter([[ipaddress.ip_address("10.1.2.3")], [ipaddress.ip_address("169.254.169.254")]])
    monkeypatch.setattr(targets, "resolve", lambda host, port: next(answers))
    config = app.config["PEP"]
    assert targets.launch_problem("http://rebind.example/v1", config) is None
    assert targets.launch_problem("http://rebind.example/v1", config) == (
        "the target is refused: rebind.example resolves to 169.254.169.254, which is a link-local address "
        "(targets.deny default: metadata)")


def test_configuration_rules_are_checked_at_start_up(tmp_path: Path) -> None:
    assert load_config("production", environ={"PEP_SERVER__SECRET_KEY": "k"})["targets"]["allow_private"] is False
    assert load_config("development", environ={})["targets"]["allow_private"] is True
    loaded = load_config("development", environ={"PEP_TARGETS__ALLOW": "10.0.0.0/8, vllm.internal:8000"})
    assert loaded["targets"]["allow"] == ["10.0.0.0/8", "vllm.internal:8000"]
    with pytest.raises(ConfigError, match=r"targets.deny: 'not a host!' is not a host name"):
        load_config("development", environ={}, overrides={"targets": {"deny": ["not a host!"]}})
    with pytest.raises(ConfigError, match=r"targets.allow: 'h:99999' has no valid port"):
        load_config("development", environ={}, overrides={"targets": {"allow": ["h:99999"]}})
