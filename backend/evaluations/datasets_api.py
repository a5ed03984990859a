"""``/api/v1/datasets``: upload (multipart), list (with evalscope's built-in benchmarks), one, preview."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy.exc import SQLAlchemyError

from backend.errors import ApiError, NotFound
from backend.evaluations import datasets
from backend.openapi import documented
from backend.openapi.models import (
    JSON,
    DatasetList,
    EvaluationDatasetOut,
    EvaluationDatasetUpload,
    EvaluationDatasetUploaded,
)
from backend.validation import int_arg

log = logging.getLogger(__name__)

bp = Blueprint("datasets_api", __name__, url_prefix="/api/v1")


@bp.record_once
def _register_bundled(state: BlueprintSetupState) -> None:
    """The bundled datasets appear in every list: stored (idempotently) when the app starts."""
    app = state.app
    with app.app_context():
        try:
            datasets.register_bundled(app.config["PEP"]["evaluations"])
        except (SQLAlchemyError, OSError) as exc:  # e.g. auto_migrate off and the table not made yet
            log.warning("bundled evaluation datasets not registered: %s", exc)


@bp.post("/datasets")
@documented(form=EvaluationDatasetUpload, responses={200: EvaluationDatasetUploaded, 201: EvaluationDatasetUploaded})
def upload():  # type: ignore[no-untyped-def]
    row, created = datasets.upload(request.form.get("kind"), request.form.get("name"), request.files.get("file"),
                                   request.files.get("dev_file"), datasets.settings_from_app())
    return jsonify({**row.as_dict(), "created": created}), 201 if created else 200


@bp.get("/datasets")
@documented(responses={200: DatasetList})
def list_all():  # type: ignore[no-untyped-def]
    return jsonify({"datasets": [row.as_dict() for row in datasets.list_datasets()],
                    "builtin": datasets.builtin_benchmarks()})


def _dataset_or_404(dataset_id: str) -> datasets.EvalDataset:
    row = datasets.get_dataset(dataset_id)
    if row is None:
        raise NotFound(f"no dataset {dataset_id!r}", dataset_id=dataset_id[:40])
    return row


@bp.get("/datasets/<dataset_id>")
@documented(responses={200: EvaluationDatasetOut})
def one(dataset_id: str):  # type: ignore[no-untyped-def]
    return jsonify(_dataset_or_404(dataset_id).as_dict())


@bp.get("/datasets/<dataset_id>/preview")
@documented(responses={200: JSON})
def preview(dataset_id: str):  # type: ignore[no-untyped-def]
    row = _dataset_or_404(dataset_id)
    rows = int_arg("rows", int(datasets.settings_from_app().get("preview_rows", 10)), 0, 1000)
    try:
        return jsonify(datasets.preview(row, datasets.settings_from_app(), rows))
    except datasets.DatasetFilesMissing as exc:
        raise ApiError(str(exc), status=410, code="gone") from None
