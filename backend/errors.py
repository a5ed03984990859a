"""One error shape for the JSON API, mapped in one place: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, make_response, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the API refuses; ``field`` names the offending request field when there is one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "bad_request",
        field: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})
        self.message = message
        self.status = status
        self.code = code
        self.details = dict(details or {})
        if field is not None:
            self.details["field"] = field


class NotFound(ApiError):
    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, status=404, code="not_found", details=details)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"  # a scraper reads no HTML


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError):  # type: ignore[no-untyped-def]
        if not _wants_json():
            # A page refused before its view ran (a NUL in the query, say): the message in the layout.
            response = make_response(_error_page(exc.status, exc.code.replace("_", " ").capitalize(), exc.message))
        else:
            response = make_response(jsonify(error_body(exc.code, exc.message, exc.details)), exc.status)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        if not _wants_json():
            return _error_page(exc.code or 500, exc.name, exc.description or exc.name)
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error_body(code, exc.description or exc.name)), exc.code or 500

    @app.errorhandler(OperationalError)
    def handle_database_error(exc: OperationalError):  # type: ignore[no-untyped-def]
        """A write that waited out the busy timeout (another process held the lock) is a 503 to retry,
        not a 500: nothing was stored, and the same request can be sent again in a moment."""
        if "database is locked" not in str(exc.orig) and "database is busy" not in str(exc.orig):
            return handle_unexpected(exc)
        from backend.db import db

        db.session.rollback()
        log.warning("%s %s: the database stayed locked by another writer; answered 503", request.method,
                    request.path)
        message = "the database is busy (another process is writing); nothing was stored, try again shortly"
        if _wants_json():
            response = jsonify(error_body("busy", message))
        else:
            response = _error_page(503, "Service Unavailable", message)
            response = make_response(response)
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.path)
        if _wants_json():
            return jsonify(error_body("internal", "internal server error; see logs/app.log")), 500
        return _error_page(500, "Internal Server Error",
                           "Something went wrong on our side. The details are in the server log.")


def _error_page(status: int, name: str, message: str):  # type: ignore[no-untyped-def]
    """A friendly page in the layout, or just a message fragment for an HTMX request; never a trace."""
    from backend.web import is_htmx_fragment_request

    if is_htmx_fragment_request():
        # base.html lets HTMX swap 4xx/5xx answers; this one lands in the flash area.
        response = make_response(render_template("errors/_fragment.html", message=message), status)
        response.headers["HX-Retarget"] = "#flash"
        response.headers["HX-Reswap"] = "innerHTML"
        return response
    return render_template("errors/error.html", code=status, name=name, message=message), status

