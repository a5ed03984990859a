"""Security headers on every response; the offline report's policy allows exactly its own scripts; CORS."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from backend.app import create_app
from tests.conftest import TEST_MODELS

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
EXPECTED_CSP = {
    "default-src": ["'self'"], "script-src": ["'self'"], "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:", "blob:"], "connect-src": ["'self'"], "frame-ancestors": ["'none'"],
    "base-uri": ["'self'"], "form-action": ["'self'"],
}


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


PATHS = ["/", "/stress-tests", "/playground", "/leaderboard", "/api/v1/models", "/api/v1/stress-tests/nope",
         "/no-such-page", "/health", "/static/css/app.css"]


def test_every_response_carries_the_headers(client: FlaskClient) -> None:
    for path in PATHS:
        _check_headers(client, path)


def _check_headers(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    csp = directives(response.headers["Content-Security-Policy"])
    for name, values in EXPECTED_CSP.items():
        assert csp[name] == values, (path, name)
    assert "'unsafe-eval'" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Access-Control-Allow-Origin" not in response.headers  # CORS is off unless configured


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._in: bool = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self._in = tag == "script" and "src" not in names and names.get("type") != "application/json"
        if self._in:
            self.inline.append("")

    def handle_data(self, data: str) -> None:
        if self._in:
            self.inline[-1] += data

    def handle_endtag(self, tag: str) -> None:
        self._in = False


def test_the_offline_report_may_run_exactly_its_own_scripts(client: FlaskClient) -> None:
    response = client.get("/api/v1/leaderboard?format=html")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    parser = _Scripts()
    parser.feed(response.get_data(as_text=True))
    assert len(parser.inline) == 2  # plotly.js and the drawing script
    expected = sorted(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in parser.inline)
    script_src = directives(response.headers["Content-Security-Policy"])["script-src"]
    assert sorted(script_src) == sorted(["'self'", *expected])
    assert "'unsafe-inline'" not in script_src


def test_no_template_runs_inline_script_and_htmx_never_evaluates() -> None:
    offenders = []
    for path in TEMPLATES.rglob("*.html"):
        if path.name.startswith("report") or path.name == "_report_base.html":
            continue  # the offline reports: a download whose scripts are allowed by hash (see above)
        source = path.read_text()
        for match in re.finditer(r"<script(?P<attrs>[^>]*)>", source):
            if "src=" not in match.group("attrs") and 'type="application/json"' not in match.group("attrs"):
                offenders.append(f"{path.name}: {match.group(0)}")
        offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"\son[a-z]+\s*=", source)]
        offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"hx-on[:-]|hx-vals='js:|javascript:", source)]
    assert offenders == []
    base = (TEMPLATES / "base.html").read_text()
    assert '"allowEval":false' in base and '"includeIndicatorStyles":false' in base


def test_cors_answers_only_the_configured_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    app: Flask = create_app({"database": {"path": str(tmp_path / "a.db")}, "logging": {"dir": str(tmp_path)},
                             "catalog": {"models_file": TEST_MODELS},
                             "security": {"cors_origins": ["https://dash.example:8443"]}})
    client = app.test_client()
    allowed = client.get("/api/v1/models", headers={"Origin": "https://dash.example:8443"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dash.example:8443"
    assert "Origin" in allowed.headers["Vary"]
    preflight = client.options("/api/v1/stress-tests", headers={
        "Origin": "https://dash.example:8443", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.get("/api/v1/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Origin" not in client.get("/", headers={"Origin": "https://dash.example:8443"}).headers
