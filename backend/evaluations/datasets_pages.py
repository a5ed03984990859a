"""``/datasets``: the evaluation datasets (bundled and uploaded), the upload form, and one dataset's preview."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from backend.errors import ApiError
from backend.evaluations import datasets
from backend.web import render

bp = Blueprint("datasets_pages", __name__)

FORM_FIELDS = ("kind", "name", "file", "dev_file")


def _list_context(values: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> dict[str, Any]:
    settings = datasets.settings_from_app()
    return {"datasets": datasets.list_datasets(), "builtin": datasets.builtin_benchmarks(),
            "values": values or {"kind": "mcq", "name": ""}, "errors": errors or {},
            "max_bytes": int(settings["max_dataset_bytes"])}


@bp.get("/datasets")
def index():  # type: ignore[no-untyped-def]
    return render("evaluations/datasets.html", "evaluations/_dataset_list.html", **_list_context())


@bp.post("/datasets")
def upload():  # type: ignore[no-untyped-def]
    values = {"kind": request.form.get("kind", ""), "name": request.form.get("name", "")}
    try:
        row, created = datasets.upload(values["kind"], values["name"], request.files.get("file"),
                                       request.files.get("dev_file"), datasets.settings_from_app())
    except ApiError as exc:
        slot = exc.details.get("field")
        errors = {slot if slot in FORM_FIELDS else "": exc.message}
        return render_template("evaluations/datasets.html", **_list_context(values, errors)), exc.status
    if created:
        flash(f"Dataset “{row.name}” stored: {row.items} items.", "info")
    else:
        flash(f"That content is already stored as “{row.name}” ({row.id}): nothing new was added.", "info")
    return redirect(url_for("datasets_pages.dataset", dataset_id=row.id), 303)


@bp.get("/datasets/<dataset_id>")
def dataset(dataset_id: str):  # type: ignore[no-untyped-def]
    row = datasets.get_dataset(dataset_id)
    if row is None:
        abort(404, f"There is no dataset {dataset_id[:40]}.")
    settings = datasets.settings_from_app()
    try:
        shown = datasets.preview(row, settings)
        missing = None
    except datasets.DatasetFilesMissing as exc:
        shown, missing = None, str(exc)
    return render("evaluations/datasets_preview.html", "evaluations/_dataset_preview.html",
                  dataset=row, preview=shown, missing=missing)
