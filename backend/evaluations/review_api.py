"""/api/v1/evaluations: a run's samples (filtered, searched, paged), its exports, and two cells side by side.

- ``GET /api/v1/evaluations/<id>/samples?cell=&wrong=1&min_score=&max_score=&subset=&q=&limit=&after=|before=``
  pages by the cursors ``next`` / ``previous`` the answer gives (backend/evaluations/review.py).
- ``GET /api/v1/evaluations/<id>/export?format=csv|json|xlsx&what=scores|samples`` (``what`` defaults to
  scores).
- ``GET /api/v1/evaluations/side-by-side?a=<cell id>&b=<cell id>[&outcome=only_a|only_b|both_wrong|both_right]
  [&offset=&limit=]``: cells are named by their ids (every answer about a run lists its cells with ids), so
  a comparison across two runs needs no run id; the two cells must have the same dataset content.

Every bad query argument is a 400 naming it.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from backend.errors import ApiError
from backend.evaluations import export, review
from backend.openapi import documented
from backend.openapi.models import DOWNLOAD, SamplePage, SideBySide
from backend.validation import MAX_OFFSET, check_text, float_arg, int_arg

bp = Blueprint("evaluations_review_api", __name__, url_prefix="/api/v1/evaluations")

FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False,
         "": False}


def flag_arg(name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw not in FLAGS:
        raise ApiError(f"{name}: must be 1 or 0 (true or false)", field=name)
    return FLAGS[raw]


def text_arg(name: str, max_chars: int) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > max_chars:
        raise ApiError(f"{name}: must be at most {max_chars} characters long", field=name)
    check_text(raw, name)
    return raw.strip()


def sample_filter() -> review.SampleFilter:
    """The review's filters from the query (pages and API read them the same way)."""
    cell = int_arg("cell", -1, 0, 2**62)
    low, high = float_arg("min_score"), float_arg("max_score")
    if low is not None and high is not None and low > high:
        raise ApiError("max_score: must be at least min_score", field="max_score")
    return review.SampleFilter(cell_id=None if cell < 0 else cell, wrong=flag_arg("wrong"), min_score=low,
                               max_score=high, subset=text_arg("subset", 200), text=text_arg("q", review.MAX_QUERY))


@bp.get("/<job_id>/samples")
@documented(responses={200: SamplePage})
def samples(job_id: str):  # type: ignore[no-untyped-def]
    flt = sample_filter()
    limit = int_arg("limit", review.PAGE_SIZE, 1, review.MAX_PAGE_SIZE)
    job = review.evaluation_job(job_id)
    return jsonify(review.samples_page(job, flt, limit=limit, after=request.args.get("after"),
                                       before=request.args.get("before")))


@bp.get("/<job_id>/export")
@documented(responses={200: DOWNLOAD})
def export_run(job_id: str):  # type: ignore[no-untyped-def]
    kind = request.args.get("format", "")
    if kind not in export.FORMATS:
        raise ApiError(f"format: must be one of {', '.join(export.FORMATS)}", field="format")
    what = request.args.get("what") or "scores"
    if what not in export.WHATS:
        raise ApiError(f"what: must be one of {', '.join(export.WHATS)}", field="what")
    job = review.evaluation_job(job_id)
    rows = review.score_rows(job) if what == "scores" else review.export_sample_rows(job)
    body, media, name = export.export(what, kind, {"id": job.id, "status": job.status, "label": job.label,
                                                    "created_at": job.created_at}, rows)
    response = Response(body, content_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@bp.get("/side-by-side")
@documented(responses={200: SideBySide})
def side_by_side():  # type: ignore[no-untyped-def]
    a = review.parse_cell_id(request.args.get("a"), "a")
    b = review.parse_cell_id(request.args.get("b"), "b")
    outcome = request.args.get("outcome") or None
    offset = int_arg("offset", 0, 0, MAX_OFFSET)
    limit = int_arg("limit", review.PAGE_SIZE, 1, review.MAX_PAGE_SIZE)
    return jsonify(review.side_by_side(a, b, outcome=outcome, offset=offset, limit=limit))
