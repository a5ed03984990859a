"""/api/v1/capacity-searches: start a capacity search, read it (probes, bracket, capacity), cancel it."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from backend.catalog.service import get_catalog
from backend.results import capacity_search
from backend.validation import json_body

bp = Blueprint("capacity_api", __name__, url_prefix="/api/v1/capacity-searches")


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
