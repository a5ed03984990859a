"""The playground, the run history and one run."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, render_template, request

from backend.catalog.service import get_catalog, unavailable_groups
from backend.errors import ApiError
from backend.inference import service
from backend.validation import MAX_OFFSET, int_arg
from backend.web import render

bp = Blueprint("inference_pages", __name__)


@bp.get("/playground")
def playground():  # type: ignore[no-untyped-def]
    """The form; the run itself streams from POST /api/v1/multi-inference, driven by static/js/playground.js."""
    catalog = get_catalog()
    settings = current_app.config["PEP"]["inference"]
    limits = {"max_image_bytes": int(settings["max_image_bytes"]), "max_video_bytes": int(settings["max_video_bytes"]),
              "max_images": int(settings["max_images"]), "max_tokens": int(settings["max_tokens_limit"]),
              "default_max_tokens": int(settings["default_max_tokens"])}
    models = catalog.describe(catalog.all_specs())
    # Ordinary models first, then the simulator profiles that fail or hang on purpose (sorted() is stable).
    available = sorted((m for m in models if m["available"]), key=lambda m: m["behavior"] is not None)
    return render_template("inference/playground.html", title="Playground", available_models=available,
                           unavailable_groups=unavailable_groups(models), limits=limits)


@bp.get("/history")
def history():  # type: ignore[no-untyped-def]
    try:
        limit = int_arg("limit", HISTORY_PAGE_SIZE, 1, HISTORY_MAX_PAGE_SIZE)
        offset = int_arg("offset", 0, 0, MAX_OFFSET)
    except ApiError as exc:
        abort(400, description=exc.message)
    model = request.args.get("model", "").strip()
    text = request.args.get("q", "").strip()
    page = service.list_runs(current_app, limit=limit, offset=offset, model=model or None, text=text or None,
                             preview=int(current_app.config["PEP"]["inference"]["preview_chars"]))
    names = {spec.key: spec.name for spec in get_catalog().models.values()}
    return render("inference/history.html", "inference/_runs.html", **page, model=model, q=text,
                  default_limit=HISTORY_PAGE_SIZE,
                  model_options=[(key, names.get(key, key)) for key in service.models_in_history()])


@bp.get("/history/<run_id>")
def run_detail(run_id: str):  # type: ignore[no-untyped-def]
    run = service.get_run(run_id)
    if run is None:
        abort(404, description=f"There is no run {run_id}.")
    return render_template("inference/run.html", run=run.as_dict())


HISTORY_PAGE_SIZE = 25
HISTORY_MAX_PAGE_SIZE = 200


def home_context() -> dict[str, Any]:
    """What the home page's playground panel shows (templates/inference/_home.html)."""
    preview = int(current_app.config["PEP"]["inference"]["preview_chars"])
    return {"recent_runs": [run.as_dict(preview=preview) for run in service.recent_runs(limit=8)]}
