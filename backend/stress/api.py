"""/api/v1/stress-tests: create, list, read, cancel, delete, follow (SSE), log tail, presets, datasets."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from backend.catalog.service import get_catalog
from backend.errors import ApiError
from backend.jobs import storage as job_storage
from backend.openapi import documented
from backend.openapi.models import (
    JSON,
    JobOut,
    LogLines,
    StressDatasetList,
    StressDatasetUpload,
    StressFileList,
    StressJobList,
    StressPresets,
)
from backend.sse import sse_response
from backend.stress import artefacts, datasets, service
from backend.stress.params import PRESETS, StressParams
from backend.validation import MAX_OFFSET, int_arg, json_body, parse_body

bp = Blueprint("stress_api", __name__, url_prefix="/api/v1/stress-tests")

MAX_LOG_LINES = 5000


def _settings() -> dict:
    return current_app.config["PEP"]["stress"]


@bp.post("")
@documented(body=StressParams, responses={201: JobOut})
def create():  # type: ignore[no-untyped-def]
    body = parse_body(json_body(), StressParams)
    job = service.create_job(body, get_catalog(), current_app.config["PEP"])
    return jsonify(service.job_dict(job, _settings())), 201


@bp.get("")
@documented(responses={200: StressJobList})
def list_jobs():  # type: ignore[no-untyped-def]
    return jsonify(service.list_jobs(_settings(), status=request.args.get("status") or None,
                                     model=request.args.get("model") or None,
                                     limit=int_arg("limit", 50, 1, 500), offset=int_arg("offset", 0, 0, MAX_OFFSET)))


@bp.get("/presets")
@documented(responses={200: StressPresets})
def presets():  # type: ignore[no-untyped-def]
    return jsonify({"presets": PRESETS})


@bp.get("/datasets")
@documented(responses={200: StressDatasetList})
def list_datasets():  # type: ignore[no-untyped-def]
    return jsonify({"datasets": datasets.list_datasets(), "formats": list(datasets.FORMATS),
                    "max_bytes": int(_settings()["max_dataset_bytes"])})


@bp.post("/datasets")
@documented(form=StressDatasetUpload, responses={201: JSON})
def upload_dataset():  # type: ignore[no-untyped-def]
    upload = request.files.get("file")
    if upload is None:
        raise ApiError("file: send the dataset as multipart/form-data field 'file'", field="file")
    dataset = datasets.save_upload(upload.stream, upload.filename, request.form.get("format", ""), _settings())
    return jsonify(dataset.as_dict()), 201


@bp.get("/<job_id>")
@documented(responses={200: JobOut})
def get_job(job_id: str):  # type: ignore[no-untyped-def]
    return jsonify(service.job_dict(service.get_job(job_id), _settings()))


@bp.post("/<job_id>/cancel")
@documented(responses={200: JobOut, 202: JobOut})
def cancel(job_id: str):  # type: ignore[no-untyped-def]
    job = service.cancel_job(job_id)
    return jsonify(service.job_dict(job, _settings())), 202 if not job.is_finished else 200


@bp.delete("/<job_id>")
@documented(responses={204: None})
def delete(job_id: str):  # type: ignore[no-untyped-def]
    service.delete_job(job_id, _settings())
    return "", 204


@bp.get("/<job_id>/log")
@documented(responses={200: {"text/plain": None, "application/json": LogLines}})
def log(job_id: str):  # type: ignore[no-untyped-def]
    lines = service.log_tail(job_id, _settings(), int_arg("lines", 200, 1, MAX_LOG_LINES))
    if request.args.get("format") == "json":
        return jsonify({"id": job_id, "lines": lines})
    return Response("\n".join(lines) + ("\n" if lines else ""), mimetype="text/plain")


@bp.get("/<job_id>/files")
@documented(responses={200: StressFileList})
def files(job_id: str):  # type: ignore[no-untyped-def]
    job = service.get_job(job_id)
    stored = job_storage.stored_files("stress", job.id)  # copied to storage.artifacts when the job ended
    listed = stored if stored is not None else artefacts.list_files(job.id, _settings())
    return jsonify({"id": job.id, "files": [f.as_dict() for f in listed]})


@bp.get("/<job_id>/files/<path:name>")
@documented(responses={200: {"*/*": None}})
def file(job_id: str, name: str):  # type: ignore[no-untyped-def]
    """One file, by a name from the job's own list (never a path from the request)."""
    job = service.get_job(job_id)
    stored = job_storage.send_stored("stress", job.id, name, current_app.config["PEP"],
                                     artefacts.not_found_message(job.id, name))
    if stored is not None:
        return stored
    found = artefacts.find_file(job.id, name, _settings())
    return send_file(found.path, as_attachment=True, download_name=Path(found.name).name,
                     mimetype="text/plain" if found.path.suffix in (".log", ".txt") else None)


@bp.get("/<job_id>/events")
@documented(sse=True)
def events(job_id: str):  # type: ignore[no-untyped-def]
    service.get_job(job_id)  # 404 before the stream starts
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = _settings()
    stream = service.follow(app, job_id, poll_s=float(settings["sse_poll_s"]),
                            heartbeat_s=float(settings["heartbeat_s"]))
    return sse_response(stream, "stress_job")
