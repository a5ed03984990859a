"""The models page."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("catalog_pages", __name__)


@bp.get("/models")
def models():  # type: ignore[no-untyped-def]
    return render_template("placeholder/coming.html", title="Models", text="The catalogue page is being built.")
