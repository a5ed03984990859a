"""The OpenAPI 3.1 contract of ``/api/v1``, generated from the code, never written beside it.

- ``@documented(body=..., form=..., responses=..., sse=...)`` on a view records the pydantic models it
  validates with and answers with (``backend/openapi/models.py`` holds the response models).
- ``document.build(app)`` walks ``app.url_map``: every ``/api/v1`` rule becomes an operation, its path
  parameters from the rule, its query arguments read from the source of the view and of the helpers it
  hands the query to (``query_scan.py``: types, bounds and enums from the code that validates them), its
  body and answers from the decorator. A view with no decorator is still listed (so no route can be
  missing), answering "a JSON value"; ``tests/test_openapi.py`` refuses such views, so each one says what it
  takes and returns.
- Served at ``GET /api/v1/openapi.json``, with Swagger UI (vendored, ``static/vendor/swagger-ui``) at
  ``/api/docs``; the page has no inline script, so it runs under ``script-src 'self'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template

from backend.openapi.models import OpenApiDocument

ResponseSpec = Any  # a pydantic model, None (no body), a media type, or {media type: model or None}


@dataclass(frozen=True)
class Operation:
    """What ``@documented`` recorded on one view function."""

    summary: str | None = None
    body: Any = None  # a pydantic model for an application/json body
    form: Any = None  # a pydantic model describing multipart/form-data fields
    responses: dict[int, ResponseSpec] = field(default_factory=dict)
    sse: bool = False  # answers text/event-stream


def documented(*, summary: str | None = None, body: Any = None, form: Any = None,
               responses: dict[int, ResponseSpec] | None = None,
               sse: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Record the request and response models of a view for the OpenAPI document; the view is unchanged."""
    operation = Operation(summary=summary, body=body, form=form, responses=dict(responses or {}), sse=sse)

    def mark(view: Callable[..., Any]) -> Callable[..., Any]:
        view.__openapi__ = operation  # type: ignore[attr-defined]
        return view

    return mark


bp = Blueprint("openapi_api", __name__)  # an API route ("_api" as the other API blueprints)
pages_bp = Blueprint("openapi_pages", __name__)


@bp.get("/api/v1/openapi.json")
@documented(summary="This document (OpenAPI 3.1)", responses={200: OpenApiDocument})
def openapi_json():  # type: ignore[no-untyped-def]
    from backend.openapi.document import cached

    return jsonify(cached(current_app))


@pages_bp.get("/api/docs")
def docs_page():  # type: ignore[no-untyped-def]
    return render_template("openapi/docs.html")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(pages_bp)
