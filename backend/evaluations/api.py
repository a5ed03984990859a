"""/api/v1/evaluations: create, list, read (cells with scores, n and intervals), cancel, follow (SSE), log.

Per-sample review, side by side and exports are ``review_api.py``'s.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from backend.catalog.service import get_catalog
from backend.evaluations import service
from backend.evaluations.params import EvaluationParams
from backend.openapi import documented
from backend.openapi.models import EvaluationJobList, JobOut, LogLines
from backend.sse import sse_response
from backend.validation import MAX_OFFSET, int_arg, json_body, parse_body

bp = Blueprint("evaluations_api", __name__, url_prefix="/api/v1/evaluations")

MAX_LOG_LINES = 5000


def _config() -> dict:
    return current_app.config["PEP"]


@bp.post("")
@documented(body=EvaluationParams, responses={201: JobOut})
def create():  # type: ignore[no-untyped-def]
    body = parse_body(json_body(), EvaluationParams)
    job = service.create_job(body, get_catalog(), _config())
    return jsonify(service.job_dict(job, _config())), 201


@bp.get("")
@documented(responses={200: EvaluationJobList})
def list_jobs():  # type: ignore[no-untyped-def]
    return jsonify(service.list_jobs(_config(), status=request.args.get("status") or None,
                                     model=request.args.get("model") or None,
                                     limit=int_arg("limit", 50, 1, 500), offset=int_arg("offset", 0, 0, MAX_OFFSET)))


@bp.get("/<job_id>")
@documented(responses={200: JobOut})
def get_job(job_id: str):  # type: ignore[no-untyped-def]
    return jsonify(service.job_dict(service.get_job(job_id), _config()))


@bp.post("/<job_id>/cancel")
@documented(responses={200: JobOut, 202: JobOut})
def cancel(job_id: str):  # type: ignore[no-untyped-def]
    job = service.cancel_job(job_id)
    return jsonify(service.job_dict(job, _config())), 202 if not job.is_finished else 200


@bp.get("/<job_id>/log")
@documented(responses={200: {"text/plain": None, "application/json": LogLines}})
def log(job_id: str):  # type: ignore[no-untyped-def]
    lines = service.log_tail(job_id, _config()["evaluations"], int_arg("lines", 200, 1, MAX_LOG_LINES))
    if request.args.get("format") == "json":
        return jsonify({"id": job_id, "lines": lines})
    return Response("\n".join(lines) + ("\n" if lines else ""), mimetype="text/plain")


@bp.get("/<job_id>/events")
@documented(sse=True)
def events(job_id: str):  # type: ignore[no-untyped-def]
    service.get_job(job_id)  # 404 before the stream starts
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = _config()["evaluations"]
    stream = service.follow(app, job_id, poll_s=float(settings["sse_poll_s"]),
                            heartbeat_s=float(settings["heartbeat_s"]))
    return sse_response(stream, "evaluation_job")
