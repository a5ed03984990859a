"""``/login`` and ``/logout`` for pages: the operator password or any API token, into the session cookie."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from backend.security import auth

bp = Blueprint("security", __name__)


def _safe_next(value: str | None) -> str:
    """Only a path of this site (never ``//host`` or a URL): an open redirect would help phishing."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return url_for("web.home")


@bp.get("/login")
def login_form() -> str | Response:
    if not auth.enabled():
        return redirect(url_for("web.home"))
    return render_template("security/login.html", next_path=_safe_next(request.args.get("next")), error=None)


@bp.post("/login")
def login() -> tuple[str, int] | tuple[str, int, dict[str, str]] | Response:
    next_path = _safe_next(request.form.get("next"))
    if not auth.enabled():
        return redirect(next_path)
    wait = auth.too_many_failures()
    if wait is not None:
        page = render_template("security/login.html", next_path=next_path, error=auth.throttled_message(wait))
        return page, 429, {"Retry-After": str(wait)}
    secret = request.form.get("secret", "")
    keeper = auth.authenticator()
    actor = auth.Actor("operator", "operator") if secret and keeper.check_password(secret) else None
    actor = actor or (keeper.find(secret) if secret else None)
    auth.record_sign_in(actor is not None)
    if actor is None:
        return render_template("security/login.html", next_path=next_path,
                               error="That password or token is not valid."), 401
    auth.sign_in(actor)
    return redirect(next_path, code=303)


@bp.post("/logout")
def logout() -> Response:
    auth.sign_out()
    return redirect(url_for("security.login") if auth.enabled() else url_for("web.home"), code=303)
