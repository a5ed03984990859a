"""Authentication on: bearer tokens with roles on every /api/v1 route, page login, who started what."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from backend.app import create_app
from backend.config import ConfigError
from backend.db import db
from tests.conftest import TEST_MODELS
from tests.support.evaluations import bundled_id
from tests.support.simulator import SimulatorProcess

VIEWER = "viewer-token-7f3a9c"
OPERATOR = "operator-token-2b8e41"
ALICE = "alice-token-c0ffee99"
PASSWORD = "correct horse battery"
TOKENS = f"viewer:{VIEWER}, operator:{OPERATOR},alice:operator:{ALICE}"
SECRETS = (VIEWER, OPERATOR, ALICE, PASSWORD)


def _make_app(tmp: Path, simulator_port: int, environ: dict[str, str], **overrides: Any) -> Flask:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENVIRONMENT", "test")
        for name, value in environ.items():
            patch.setenv(name, value)
        return create_app({"database": {"path": str(tmp / "app.db")}, "logging": {"dir": str(tmp / "logs")},
                           "catalog": {"models_file": TEST_MODELS}, "simulator": {"port": simulator_port},
                           "auth": {"enabled": True},
                           "stress": {"datasets_dir": str(tmp / "datasets"), "outputs_dir": str(tmp / "out")},
                           **overrides})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, simulator: SimulatorProcess) -> Iterator[Flask]:
    yield _make_app(tmp_path_factory.mktemp("secured"), simulator.port,
                    {"API_TOKENS": TOKENS, "AUTH_PASSWORD": PASSWORD})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _concrete(rule: Any) -> str:
    """A path for a rule, each variable filled with a value of its converter's kind."""
    return re.sub(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>",
                  lambda m: "1" if m.group(1) in ("int", "float") else "abc123", rule.rule)


def test_every_api_rule_answers_401_without_a_token_and_names_the_header(secured: Flask) -> None:
    client = secured.test_client()
    rules = [rule for rule in secured.url_map.iter_rules() if rule.rule.startswith("/api/v1")]
    assert len(rules) >= 30  # the walk covers the whole API, not a few routes
    checked = 0
    for rule in rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(_concrete(rule), method=method)
            assert response.status_code == 401, (method, rule.rule, response.status_code)
            error = response.json["error"]
            assert error["code"] == "unauthorized"
            assert error["details"]["missing"] == "Authorization: Bearer <token>"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= len(rules)


def test_a_wrong_token_is_refused_without_being_echoed(secured: Flask) -> None:
    client = secured.test_client()
    wrong = "not-a-token-5a5a5a5a"
    for headers in (bearer(wrong), {"Authorization": f"Basic {wrong}"}, bearer(VIEWER[:-1])):
        response = client.get("/api/v1/stress-tests", headers=headers)
        assert response.status_code == 401
        assert wrong not in response.get_data(as_text=True) and VIEWER not in response.get_data(as_text=True)
    assert client.get("/api/v1/stress-tests", headers=bearer(VIEWER)).status_code == 200


def test_open_paths_answer_without_a_token(secured: Flask) -> None:
    client = secured.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code in (200, 503)  # open: ready or not, never a sign-in answer
    assert client.get("/static/css/app.css").status_code == 200
    assert client.get("/login").status_code == 200


def test_a_viewer_reads_but_an_operator_is_needed_to_change(secured: Flask) -> None:
    client = secured.test_client()
    assert client.get("/api/v1/models", headers=bearer(VIEWER)).status_code == 200
    refused = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "prompt": "x", "concurrency": [1],
                                                         "requests": [1]}, headers=bearer(VIEWER))
    assert refused.status_code == 403 and refused.json["error"]["details"]["needs"] == "operator"
    for path in ("/api/v1/multi-inference", "/api/v1/stress-tests/datasets", "/api/v1/evaluations/abc/cancel"):
        assert client.post(path, json={}, headers=bearer(VIEWER)).status_code == 403, path
    with secured.app_context():
        assert db.session.execute(text("select count(*) from stress_jobs")).scalar() == 0
    # The operator gets past the check to the validation of the body itself.
    bad = client.post("/api/v1/stress-tests", json={"model": "sim-fast"}, headers=bearer(OPERATOR))
    assert bad.status_code == 400


def test_pages_redirect_to_login_and_htmx_gets_hx_redirect(secured: Flask) -> None:
    client = secured.test_client()
    page = client.get("/stress-tests?status=queued")
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login?next=")
    assert "stress-tests" in page.headers["Location"]
    fragment = client.get("/stress-tests", headers={"HX-Request": "true"})
    assert fragment.headers["HX-Redirect"] == "/login"
    assert client.post("/stress-tests/new", data={"target": "sim-fast"}).status_code == 302
    docs = client.get("/api/docs")  # the API's docs are a page: signed out, it sends to the login
    assert docs.status_code == 302 and docs.headers["Location"].startswith("/login?next=")
    assert client.get("/api/v1/openapi.json").status_code == 401  # the document itself is the API


def test_password_login_sets_a_safe_cookie_and_logout_ends_it(secured: Flask) -> None:
    client = secured.test_client()
    wrong = client.post("/login", data={"secret": "guess-guess-guess"})
    assert wrong.status_code == 401 and "guess-guess-guess" not in wrong.get_data(as_text=True)
    login = client.post("/login", data={"secret": PASSWORD, "next": "/stress-tests"})
    assert login.status_code == 303 and login.headers["Location"] == "/stress-tests"
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # not production
    assert PASSWORD not in cookie
    page = client.get("/stress-tests")
    assert page.status_code == 200
    assert re.search(r"operator \(operator\)</span>\s*<button type=\"submit\" class=\"link\">Sign out", page.text)
    assert client.get("/api/v1/stress-tests").status_code == 200  # the pages' own API calls ride the session
    assert client.post("/logout").status_code == 303
    assert client.get("/stress-tests").status_code == 302


def test_a_viewer_token_signs_in_as_a_viewer_and_an_open_redirect_is_refused(secured: Flask) -> None:
    client = secured.test_client()
    login = client.post("/login", data={"secret": VIEWER, "next": "//evil.example/x"})
    assert login.headers["Location"] == "/"
    assert "viewer (viewer)" in client.get("/").text
    assert client.post("/stress-tests/new", data={"target": "sim-fast"}).status_code == 403


def test_repeated_failed_sign_ins_from_one_address_are_throttled(tmp_path: Path,
                                                                 simulator: SimulatorProcess) -> None:
    max_failures, window_s = 3, 300
    app = _make_app(tmp_path, simulator.port, {"API_TOKENS": TOKENS, "AUTH_PASSWORD": PASSWORD},
                    auth={"enabled": True, "login_max_failures": max_failures, "login_window_s": window_s})
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    neighbour = app.test_client()
    neighbour.environ_base["REMOTE_ADDR"] = "192.0.2.8"
    # a correct sign-in clears what came before: max_failures - 1 wrong, one right, then counting restarts
    for _ in range(max_failures - 1):
        assert guesser.post("/login", data={"secret": "wrong-guess-1"}).status_code == 401
    assert guesser.get("/api/v1/stress-tests", headers=bearer(VIEWER)).status_code == 200
    for attempt in range(max_failures):
        headers = bearer(f"wrong-token-{attempt:08d}")
        assert guesser.get("/api/v1/stress-tests", headers=headers).status_code == 401, attempt
    # the next attempt, even with a valid credential, waits: pages and the API alike, with Retry-After
    api = guesser.get("/api/v1/stress-tests", headers=bearer(OPERATOR))
    assert api.status_code == 429 and api.json["error"]["code"] == "too_many_requests"
    wait = int(api.headers["Retry-After"])
    assert 0 < wait <= window_s and api.json["error"]["details"]["retry_after_s"] == wait
    assert f"{max_failures} within {window_s} s" in api.json["error"]["message"]
    page = guesser.post("/login", data={"secret": PASSWORD})
    assert page.status_code == 429 and 0 < int(page.headers["Retry-After"]) <= window_s
    assert "too many failed sign-ins" in page.text and PASSWORD not in page.text
    assert "Set-Cookie" not in page.headers
    # another address is not held back, and nor is the session the guesser's neighbour already has
    assert neighbour.post("/login", data={"secret": PASSWORD}).status_code == 303
    assert neighbour.get("/api/v1/stress-tests").status_code == 200


def test_failed_sign_ins_leave_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.security.throttle import FailureThrottle

    now = [1000.0]
    throttle = FailureThrottle(2, 60, clock=lambda: now[0])
    throttle.failed("a")
    now[0] += 30
    throttle.failed("a")
    assert throttle.retry_after("a") == 30  # the first failure leaves the window 60 s after it happened
    assert throttle.retry_after("b") is None
    now[0] += 29.5
    assert throttle.retry_after("a") == 1
    now[0] += 0.5
    assert throttle.retry_after("a") is None  # one failure left in the window: it may try again
    throttle.failed("a")
    assert throttle.retry_after("a") == 30
    throttle.succeeded("a")
    assert throttle.retry_after("a") is None


def test_a_throttle_setting_that_is_not_a_positive_number_fails_at_start(tmp_path: Path,
                                                                        simulator: SimulatorProcess) -> None:
    for key, value in (("login_max_failures", 0), ("login_window_s", "5m"), ("login_max_failures", 2.5)):
        with pytest.raises(ConfigError, match=f"auth.{key} must be a positive number"):
            _make_app(tmp_path, simulator.port, {"API_TOKENS": TOKENS}, auth={"enabled": True, key: value})


def test_who_started_it_is_recorded_by_name_never_the_token(secured: Flask) -> None:
    client = secured.test_client()
    job = client.post("/api/v1/stress-tests", json={"model": "sim-fast", "prompt": "x", "concurrency": [1],
                                                     "requests": [1]}, headers=bearer(ALICE))
    assert job.status_code == 201, job.json
    assert job.json["created_by"] == "alice"
    search = client.post("/api/v1/capacity-searches", headers=bearer(OPERATOR), json={
        "model": "sim-fast", "prompt": "x", "output_tokens": 4, "requests": 2, "max_concurrency": 4,
        "slo": {"percentile": 95, "tpot_ms": 50}})
    assert search.status_code == 201, search.json
    assert search.json["created_by"] == "operator"  # an unnamed token is recorded by its role
    run = client.post("/api/v1/inference", json={"model": "sim-fast", "text": "hi", "max_tokens": 4},
                      headers=bearer(ALICE))
    assert run.status_code == 200, run.json
    stored_run = client.get(f"/api/v1/inference/runs/{run.json['run_id']}", headers=bearer(VIEWER)).json
    assert stored_run["created_by"] == "alice"
    evaluation = client.post("/api/v1/evaluations", headers=bearer(ALICE), json={
        "models": ["sim-fast"], "datasets": [bundled_id(_Authed(client, VIEWER), "mcq")], "limit": 1})
    assert evaluation.status_code == 201, evaluation.json
    assert evaluation.json["created_by"] == "alice"
    client.post("/login", data={"secret": VIEWER})
    job_page = client.get(f"/stress-tests/{job.json['id']}").text
    assert re.search(r"Started by</dt><dd class=\"created-by\">alice<", job_page)
    assert 'class="created-by">alice<' in client.get(f"/evaluations/{evaluation.json['id']}").text
    assert 'class="created-by">alice<' in client.get(f"/history/{run.json['run_id']}").text
    with secured.app_context():
        rows = db.session.execute(text(
            "select created_by from stress_jobs union all select created_by from capacity_searches "
            "union all select created_by from evaluation_jobs union all select created_by from inference_runs"))
        names = sorted(row[0] for row in rows)
        dump = "\n".join(db.session.connection().connection.iterdump())
    assert names == ["alice", "alice", "alice", "operator"]
    assert not [secret for secret in SECRETS if secret in dump]


class _Authed:
    """A test client whose GETs carry a bearer token (for helpers that take a client)."""

    def __init__(self, client: Any, token: str) -> None:
        self._client, self._token = client, token

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.get(*args, headers=bearer(self._token), **kwargs)


def test_production_forces_auth_on_and_needs_a_credential(tmp_path: Path, simulator: SimulatorProcess) -> None:
    with pytest.raises(ConfigError, match="API_TOKENS"):
        _make_app(tmp_path, simulator.port, {"API_TOKENS": "", "ENVIRONMENT": "production"},
                  auth={"enabled": False}, server={"secret_key": "s" * 32})
    app = _make_app(tmp_path, simulator.port, {"API_TOKENS": f"viewer:{VIEWER}", "ENVIRONMENT": "production"},
                    auth={"enabled": False}, server={"secret_key": "s" * 32})
    assert app.config["PEP"]["auth"]["enabled"] is True
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.test_client().get("/api/v1/models").status_code == 401


@pytest.mark.parametrize("entry", ["admin:long-enough-token", "viewer:short", "bob:root:long-enough-token"])
def test_an_unreadable_token_entry_fails_at_start_without_showing_the_token(
        tmp_path: Path, simulator: SimulatorProcess, entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _make_app(tmp_path, simulator.port, {"API_TOKENS": f"operator:{OPERATOR},{entry}"})
    assert "entry 2" in str(caught.value)
    assert entry.rsplit(":", 1)[1] not in str(caught.value) and OPERATOR not in str(caught.value)
