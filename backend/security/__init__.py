"""Authentication and roles, CSRF refusal and security headers, bound to the app in one call.

Order matters: the cross-site check runs first (it applies with authentication off too), then the
sign-in check (``auth.guard``), both before every request; the headers are added to every response.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from backend.security import auth, csrf, headers, pages
from backend.validation import refuse_unstorable_url


def init_app(app: Flask) -> None:
    auth.init_app(app)
    app.before_request(refuse_unstorable_url)
    app.before_request(csrf.guard)
    app.before_request(auth.guard)
    headers.init_app(app)
    app.register_blueprint(pages.bp)

    @app.context_processor
    def signed_in() -> dict[str, Any]:
        return {"auth_enabled": auth.enabled(), "signed_in": auth.current_actor() if auth.enabled() else None}
