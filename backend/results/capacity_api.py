"""Capacity searches: ``/api/v1/capacity-searches`` (start one, list, read, cancel; ``bp``), the list page
``/results/capacity`` and the live page ``/results/capacity/<id>`` (``pages_bp``), which polls the JSON route
(static/js/capacity.js). The form is the new-stress-test form in its "find the capacity" mode."""

from __future__ import annotations

import json

from flask import Blueprint, abort, current_app, jsonify, render_template, request

from backend.catalog.service import get_catalog
from backend.errors import ApiError, NotFound
from backend.openapi import documented
from backend.openapi.models import CapacitySearchList, JobOut, capacity_search_body
from backend.results import capacity_search
from backend.stress.models import JobStatus
from backend.validation import MAX_OFFSET, int_arg, json_body

bp = Blueprint("capacity_api", __name__, url_prefix="/api/v1/capacity-searches")
pages_bp = Blueprint("capacity_pages", __name__)

PAGE_SIZE = 25


@bp.post("")
@documented(body=capacity_search_body(), responses={201: JobOut})
def create():  # type: ignore[no-untyped-def]
    search = capacity_search.create_search(json_body(), get_catalog(), current_app.config["PEP"])
    return jsonify(capacity_search.search_dict(search)), 201


@bp.get("")
@documented(responses={200: CapacitySearchList})
def list_searches():  # type: ignore[no-untyped-def]
    return jsonify(capacity_search.list_searches(
        status=request.args.get("status") or None, model=request.args.get("model") or None,
        limit=int_arg("limit", 50, 1, 200), offset=int_arg("offset", 0, 0, MAX_OFFSET)))


@bp.get("/<search_id>")
@documented(responses={200: JobOut})
def get_search(search_id: str):  # type: ignore[no-untyped-def]
    return jsonify(capacity_search.search_dict(capacity_search.get_search(search_id)))


@bp.post("/<search_id>/cancel")
@documented(responses={200: JobOut, 202: JobOut})
def cancel(search_id: str):  # type: ignore[no-untyped-def]
    search = capacity_search.cancel_search(search_id)
    return jsonify(capacity_search.search_dict(search)), 200 if search.is_finished else 202


@pages_bp.get("/results/capacity")
def index():  # type: ignore[no-untyped-def]
    filters = {name: request.args.get(name, "").strip() for name in ("model", "status")}
    problem = None
    try:
        offset = int_arg("offset", 0, 0, MAX_OFFSET)
        page = capacity_search.list_searches(status=filters["status"] or None, model=filters["model"] or None,
                                             limit=PAGE_SIZE, offset=offset)
    except ApiError as exc:
        problem, page = exc.message, {"searches": [], "total": 0, "limit": PAGE_SIZE, "offset": 0}
    return render_template("results/capacity_list.html", title="Capacity searches", page=page, problem=problem,
                           filters={k: v for k, v in filters.items() if v},
                           statuses=[s.value for s in JobStatus]), 400 if problem else 200


@pages_bp.get("/results/capacity/<search_id>")
def page(search_id: str):  # type: ignore[no-untyped-def]
    try:
        search = capacity_search.get_search(search_id)
    except NotFound:
        abort(404, description=f"There is no capacity search {search_id}.")
    data = capacity_search.search_dict(search)
    return render_template("results/capacity.html", title=f"Capacity search {search.id}", search=data,
                           search_json=json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c"))
