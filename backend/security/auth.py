"""Who is asking: bearer tokens for the API, a session for pages, two roles, checked centrally.

Tokens come from ``API_TOKENS`` (comma-separated) and the ``auth.tokens`` config key. Each entry is
``role:token``, ``name:role:token`` or a bare ``token`` (an operator); a role is ``viewer`` (reads:
GET and HEAD) or ``operator`` (also POST, PUT, PATCH and DELETE: starts, cancels, deletes, uploads, and
the playground's inference, which spends the endpoints' money). Only a keyed SHA-256 of each token is
kept in memory, compared in constant time; a token is never logged, stored or echoed. Pages sign in at
``/login`` with ``AUTH_PASSWORD`` (an operator) or any token, into a signed session cookie.

The check runs before every request (``guard``), by method and path, so a new route is covered the day
it is added; only ``OPEN_PATHS`` and ``OPEN_PREFIXES`` answer without a sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, redirect, request, session, url_for
from werkzeug.exceptions import Forbidden

from backend.errors import ApiError
from backend.security.throttle import FailureThrottle

ROLES = ("viewer", "operator")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({"/health", "/ready", "/favicon.ico", "/login"})
OPEN_PREFIXES = ("/static/",)
BEARER_HINT = "Authorization: Bearer <token>"


class TokenError(ValueError):
    """An API_TOKENS or auth.tokens entry that cannot be read (the message never holds the token)."""


@dataclass(frozen=True)
class Actor:
    """Who made a request: ``name`` is what ``created_by`` records (a token's name or its role, never it)."""

    name: str
    role: str

    @property
    def may_change(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True)
class _Credential:
    digest: bytes
    actor: Actor


class Authenticator:
    """The known tokens (and the password) as keyed digests; ``find`` answers who holds a presented one."""

    def __init__(self, entries: list[str], password: str | None) -> None:
        self._key = secrets.token_bytes(32)  # per process: the digests are useless outside it
        self._credentials: list[_Credential] = []
        for position, entry in enumerate(entries, start=1):
            self._credentials.append(_Credential(self._digest(_token_of(entry, position)), _actor_of(entry, position)))
        self._password = self._digest(password) if password else None

    @property
    def has_tokens(self) -> bool:
        return bool(self._credentials)

    @property
    def has_password(self) -> bool:
        return self._password is not None

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).digest()

    def find(self, token: str) -> Actor | None:
        presented = self._digest(token)
        found = None
        for credential in self._credentials:  # every entry compared, so the time says nothing of which one
            if hmac.compare_digest(presented, credential.digest):
                found = credential.actor
        return found

    def check_password(self, password: str) -> bool:
        return self._password is not None and hmac.compare_digest(self._digest(password), self._password)


def _split(entry: str, position: int) -> tuple[str | None, str, str]:
    """``(name, role, token)`` of one entry; the messages name the entry by position, never its token."""
    parts = entry.strip().split(":", 2)
    if len(parts) == 1:
        name, role, token = None, "operator", parts[0]
    elif parts[0] in ROLES:
        name, role, token = None, parts[0], entry.strip().split(":", 1)[1]
    elif len(parts) == 3 and parts[1] in ROLES:
        name, role, token = parts
    else:
        raise TokenError(f"API_TOKENS entry {position}: the role must be one of {', '.join(ROLES)} "
                         "(\"role:token\" or \"name:role:token\")")
    if len(token) < 8:
        raise TokenError(f"API_TOKENS entry {position}: a token needs at least 8 characters")
    if name is not None and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise TokenError(f"API_TOKENS entry {position}: a name is letters, digits, '-', '_' or '.'")
    return name, role, token


def _token_of(entry: str, position: int) -> str:
    return _split(entry, position)[2]


def _actor_of(entry: str, position: int) -> Actor:
    name, role, _ = _split(entry, position)
    return Actor(name or role, role)


def token_entries(config: dict[str, Any], environ: dict[str, str] | os._Environ[str]) -> list[str]:
    entries = [entry for entry in environ.get("API_TOKENS", "").split(",") if entry.strip()]
    return entries + list(config["auth"].get("tokens") or [])


def enabled() -> bool:
    return bool(current_app.config["PEP"]["auth"]["enabled"])


def authenticator() -> Authenticator:
    return current_app.extensions["pep_auth"]


def throttle() -> FailureThrottle:
    return current_app.extensions["pep_login_throttle"]


def too_many_failures() -> int | None:
    """Seconds this request's address must wait after too many failed sign-ins (None: it may try)."""
    return throttle().retry_after(request.remote_addr or "")


def record_sign_in(ok: bool) -> None:
    if ok:
        throttle().succeeded(request.remote_addr or "")
    else:
        throttle().failed(request.remote_addr or "")


def throttled_message(retry_after: int) -> str:
    auth = current_app.config["PEP"]["auth"]
    return (f"too many failed sign-ins from this address ({auth['login_max_failures']} within "
            f"{auth['login_window_s']:g} s): try again in {retry_after} s")


def current_actor() -> Actor | None:
    """Who is making this request; None outside a request (the job worker) or before the check ran."""
    try:
        return g.get("actor")
    except RuntimeError:  # no application context
        return None


def created_by() -> str | None:
    """A column default for rows that record who started them: the actor's name, None outside a request."""
    actor = current_actor()
    return actor.name if actor is not None else None


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def is_api(path: str) -> bool:
    """A JSON route (401 when signed out), as against a page (a redirect to /login): the API's docs page
    ``/api/docs`` is a page; ``/metrics`` is for a scraper, which sends a bearer token."""
    return (path.startswith("/api/") and path != "/api/docs") or path == "/metrics"


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        return None
    if scheme.lower() != "bearer" or not value.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def _unauthorized(message: str) -> ApiError:
    return ApiError(message, status=401, code="unauthorized", details={"missing": BEARER_HINT})


def _challenge(response: Response) -> Response:
    """RFC 6750: a 401 names the scheme it wants."""
    if response.status_code == 401 and is_api(request.path):
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="pep"')
    return response


def _session_actor() -> Actor | None:
    user = session.get("user")
    if not isinstance(user, dict) or user.get("role") not in ROLES:
        return None
    if float(user.get("until", 0)) < time.time():
        session.pop("user", None)
        return None
    return Actor(str(user.get("name") or user["role"]), str(user["role"]))


def sign_in(actor: Actor) -> None:
    hours = float(current_app.config["PEP"]["auth"]["session_hours"])
    session.clear()
    session["user"] = {"name": actor.name, "role": actor.role, "until": time.time() + hours * 3600}
    session.permanent = True


def sign_out() -> None:
    session.clear()


def guard():  # type: ignore[no-untyped-def]
    """Before every request: with auth off everyone is the operator; with it on, a bearer token or a page
    session is needed everywhere but the open paths, and a viewer may only read."""
    if not enabled():
        g.actor = Actor("operator", "operator")
        return None
    if is_open(request.path) or request.method == "OPTIONS":  # a CORS preflight carries no credentials
        return None
    api = is_api(request.path)
    token = _bearer()
    if token is not None:
        wait = too_many_failures()
        if wait is not None:
            raise ApiError(throttled_message(wait), status=429, code="too_many_requests",
                           details={"retry_after_s": wait}, headers={"Retry-After": str(wait)})
        actor = authenticator().find(token)
        record_sign_in(actor is not None)
        if actor is None:
            raise _unauthorized("the bearer token is not valid")
    else:
        actor = _session_actor()
    if actor is None:
        if api:
            raise _unauthorized(f"sign-in required: send the header {BEARER_HINT}")
        return _to_login()
    g.actor = actor
    if request.method not in SAFE_METHODS and not actor.may_change:
        message = f"{actor.name} is a viewer: {request.method} {request.path} needs the operator role"
        if api:
            raise ApiError(message, status=403, code="forbidden", details={"role": actor.role, "needs": "operator"})
        raise Forbidden(message)
    return None


def _to_login():  # type: ignore[no-untyped-def]
    target = request.full_path if request.query_string else request.path
    location = url_for("security.login", next=target if request.method == "GET" else None)
    if request.headers.get("HX-Request") == "true":
        # htmx follows a 3xx inside its XHR and would swap the login page into a fragment's place.
        response = current_app.response_class(status=204)
        response.headers["HX-Redirect"] = url_for("security.login")
        return response
    return redirect(location)


def init_app(app: Flask) -> None:
    config = app.config["PEP"]
    try:
        app.extensions["pep_auth"] = Authenticator(token_entries(config, os.environ), os.environ.get("AUTH_PASSWORD"))
    except TokenError as exc:
        from backend.config import ConfigError

        raise ConfigError(str(exc)) from None
    if config["auth"]["enabled"] and not (app.extensions["pep_auth"].has_tokens
                                          or app.extensions["pep_auth"].has_password):
        from backend.config import ConfigError

        raise ConfigError("authentication is on (auth.enabled, always in production) but no one can sign in: "
                          "set API_TOKENS (\"role:token\", comma-separated) or AUTH_PASSWORD")
    app.extensions["pep_login_throttle"] = FailureThrottle(int(config["auth"]["login_max_failures"]),
                                                           float(config["auth"]["login_window_s"]))
    app.after_request(_challenge)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = config["environment"] == "production"
    app.config["PERMANENT_SESSION_LIFETIME"] = int(float(config["auth"]["session_hours"]) * 3600)
