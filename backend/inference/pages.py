"""The playground, the run history and one run."""

from __future__ import annotations

from flask import Blueprint, abort, render_template

from backend.inference import service

bp = Blueprint("inference_pages", __name__)


@bp.get("/playground")
def playground():  # type: ignore[no-untyped-def]
    return render_template("placeholder/coming.html", title="Playground", text="The playground is being built.")


@bp.get("/history")
def history():  # type: ignore[no-untyped-def]
    return render_template("placeholder/coming.html", title="History", text="The history page is being built.")


@bp.get("/history/<run_id>")
def run_detail(run_id: str):  # type: ignore[no-untyped-def]
    run = service.get_run(run_id)
    if run is None:
        abort(404, description=f"There is no run {run_id}.")
    return render_template("placeholder/coming.html", title="Run", text=run.prompt)
