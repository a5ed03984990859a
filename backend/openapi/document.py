"""Build the OpenAPI 3.1 document from ``app.url_map``, the ``@documented`` records and the views' source."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from flask import Flask
from pydantic import BaseModel

from backend.openapi import Operation, query_scan
from backend.openapi.models import ErrorOut

PREFIX = "/api/v1"
_RULE_ARG = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>\w+)>")
_REF = "#/components/schemas/{model}"


def cached(app: Flask) -> dict[str, Any]:
    """The document, built once per app (the routes cannot change after start-up)."""
    document = app.extensions.get("openapi_document")
    if document is None:
        document = app.extensions["openapi_document"] = build(app)
    return document


def api_rules(app: Flask) -> list[Any]:
    return [rule for rule in app.url_map.iter_rules() if rule.rule.startswith(PREFIX)]


def openapi_path(rule: str) -> str:
    return _RULE_ARG.sub(lambda m: "{" + m["name"] + "}", rule)


def build(app: Flask) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(api_rules(app), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        recorded: Operation = getattr(view, "__openapi__", None) or Operation()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = _operation(rule, method, view, recorded, schemas)
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Performance Evaluation Platform API", "version": "1",
                 "description": "Generated from the request and response models the code validates with "
                                "(backend/openapi). Errors share one shape: ErrorOut."},
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API token (API_TOKENS); viewer tokens read, operator tokens also start, cancel, "
                           "delete and upload"}}},
        # Required when authentication is on (always in production); optional ({}) when it is off.
        "security": [{"bearer": []}] if _auth_on(app) else [{"bearer": []}, {}],
    }


def _auth_on(app: Flask) -> bool:
    return bool(app.config["PEP"].get("auth", {}).get("enabled"))


def _schema(model: type[BaseModel], schemas: dict[str, Any], mode: str) -> dict[str, Any]:
    """A $ref to ``model``, its definitions added to the components."""
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _operation(rule: Any, method: str, view: Callable[..., Any], recorded: Operation,
               schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{rule.endpoint}.{method.lower()}" if len(rule.methods - {"HEAD", "OPTIONS"}) > 1
        else rule.endpoint,
        "summary": recorded.summary or _first_line(view),
        "tags": [rule.rule.removeprefix(PREFIX).strip("/").split("/")[0] or "api"],
    }
    parameters = [{"name": m["name"], "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                  for m in _RULE_ARG.finditer(rule.rule)]
    if method in ("GET", "DELETE"):
        parameters += _query_parameters(view)
    if parameters:
        operation["parameters"] = parameters
    if recorded.body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _schema(recorded.body, schemas, "validation")}}}
    elif recorded.form is not None:
        operation["requestBody"] = {"required": True, "content": {
            "multipart/form-data": {"schema": _schema(recorded.form, schemas, "validation")}}}
    operation["responses"] = _responses(recorded, schemas)
    return operation


def _responses(recorded: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    specs = dict(recorded.responses)
    if recorded.sse:
        specs.setdefault(200, "text/event-stream")
    if not specs:
        specs = {200: {"application/json": None}}
    for status, spec in specs.items():
        responses[str(status)] = _response(status, spec, schemas)
    responses["4XX"] = {"description": "refused: the error names the field",
                        "content": {"application/json": {"schema": _schema(ErrorOut, schemas, "serialization")}}}
    return responses


def _response(status: int, spec: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    description = {200: "OK", 201: "created", 202: "accepted, still running", 204: "no content"}.get(status, "")
    if spec is None:
        return {"description": description or "no content"}
    if isinstance(spec, str):
        spec = {spec: None}
    elif isinstance(spec, type) and issubclass(spec, BaseModel):
        spec = {"application/json": spec}
    content = {media: ({"schema": _schema(model, schemas, "serialization")} if model is not None else {})
               for media, model in spec.items()}
    return {"description": description or "OK", "content": content}


def _first_line(view: Callable[..., Any]) -> str:
    doc = inspect.getdoc(view)
    return doc.splitlines()[0] if doc else view.__name__.replace("_", " ")


def _query_parameters(view: Callable[..., Any]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in sorted(query_scan.scan(view).items())]
