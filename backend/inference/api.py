"""POST /api/v1/multi-inference (SSE), POST /api/v1/inference (JSON or SSE), stored runs."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from backend.catalog.service import get_catalog
from backend.errors import ApiError, NotFound
from backend.inference import service
from backend.inference.schema import InferenceBody
from backend.openapi import documented
from backend.openapi.models import JSON, InferenceRunList
from backend.sse import sse_response
from backend.validation import MAX_OFFSET, int_arg, json_body, parse_body

bp = Blueprint("inference_api", __name__, url_prefix="/api/v1")


def _plan(body: InferenceBody) -> service.Plan:
    return service.prepare(body, get_catalog(), current_app.config["PEP"]["inference"])


def _event_stream(plan: service.Plan) -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    client_socket = request.environ.get("gunicorn.socket")
    return sse_response(service.relay(plan, get_catalog(), app, client_socket), "multi_inference")


@bp.post("/multi-inference")
@documented(body=InferenceBody, sse=True)
def multi_inference():  # type: ignore[no-untyped-def]
    body = parse_body(json_body(), InferenceBody)
    if body.model is not None:
        raise ApiError("model: use models (a list) with /multi-inference", field="model")
    return _event_stream(_plan(body))


@bp.post("/inference")
@documented(body=InferenceBody, responses={200: {"application/json": None, "text/event-stream": None}})
def inference():  # type: ignore[no-untyped-def]
    body = parse_body(json_body(), InferenceBody)
    if len(body.models) + (body.model is not None) + (body.manual_config is not None) != 1:
        raise ApiError("model: name exactly one model (model, a one-item models, or manual_config)",
                       field="model")
    plan = _plan(body)
    if body.stream:
        return _event_stream(plan)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    run = service.collect(plan, get_catalog(), app)
    if not run.get("results"):  # answered, but the writer could not store it (it logged why)
        raise ApiError("the answer could not be stored; see logs/app.log", status=503, code="storage")
    result = run["results"][0]
    payload = {"run_id": run["id"], **result}
    if result["error"]:
        status = 504 if result["error"]["code"] == "timeout" else 502
        return jsonify(payload), status
    return jsonify(payload)


@bp.get("/inference/runs")
@documented(responses={200: InferenceRunList})
def list_runs():  # type: ignore[no-untyped-def]
    settings = current_app.config["PEP"]["inference"]
    return jsonify(service.list_runs(current_app, limit=int_arg("limit", 50, 1, 500),
                                     offset=int_arg("offset", 0, 0, MAX_OFFSET),
                                     model=request.args.get("model") or None, text=request.args.get("q") or None,
                                     preview=int(settings["preview_chars"])))


@bp.get("/inference/runs/<run_id>")
@documented(responses={200: JSON})
def get_run(run_id: str):  # type: ignore[no-untyped-def]
    run = service.get_run(run_id)
    if run is None:
        raise NotFound(f"no inference run {run_id!r}")
    return jsonify(run.as_dict())
