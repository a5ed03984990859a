"""Capacity searches: ``/api/v1/capacity-searches`` (start one, read it, cancel it; ``bp``) and the live
page ``/results/capacity/<id>`` (``pages_bp``), which polls the JSON route (static/js/capacity.js)."""

from __future__ import annotations

import json

from flask import Blueprint, abort, current_app, jsonify, render_template

from backend.catalog.service import get_catalog
from backend.errors import NotFound
from backend.results import capacity_search
from backend.validation import json_body

bp = Blueprint("capacity_api", __name__, url_prefix="/api/v1/capacity-searches")
pages_bp = Blueprint("capacity_pages", __name__)


@bp.post("")
def create():  # type: ignore[no-untyped-def]
    search = capacity_search.create_search(json_body(), get_catalog(), current_app.config["PEP"])
    return jsonify(capacity_search.search_dict(search)), 201


@bp.get("/<search_id>")
def get_search(search_id: str):  # type: ignore[no-untyped-def]
    return jsonify(capacity_search.search_dict(capacity_search.get_search(search_id)))


@bp.post("/<search_id>/cancel")
def cancel(search_id: str):  # type: ignore[no-untyped-def]
    search = capacity_search.cancel_search(search_id)
    return jsonify(capacity_search.search_dict(search)), 200 if search.is_finished else 202


@pages_bp.get("/results/capacity/<search_id>")
def page(search_id: str):  # type: ignore[no-untyped-def]
    try:
        search = capacity_search.get_search(search_id)
    except NotFound:
        abort(404, description=f"There is no capacity search {search_id}.")
    data = capacity_search.search_dict(search)
    return render_template("results/capacity.html", title=f"Capacity search {search.id}", search=data,
                           search_json=json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c"))
