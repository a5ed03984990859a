"""/api/v1/results: finished jobs, one job's results (with an SLO given in the query), exports."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from backend.errors import ApiError
from backend.openapi import documented
from backend.openapi.models import DOWNLOAD, JSON, ResultList
from backend.results import compare, export, service
from backend.results.slo_args import slo_from_args
from backend.validation import MAX_OFFSET, int_arg

bp = Blueprint("results_api", __name__, url_prefix="/api/v1/results")

EXPORTS = {  # format: (media type, file name suffix)
    "csv": ("text/csv; charset=utf-8", "levels.csv"),
    "json": ("application/json", "results.json"),
    "requests.csv": ("text/csv; charset=utf-8", "requests.csv"),
    "html": ("text/html; charset=utf-8", "report.html"),
}


@bp.get("")
@documented(responses={200: ResultList})
def list_results():  # type: ignore[no-untyped-def]
    args = request.args
    return jsonify(service.list_results(model=args.get("model") or None, status=args.get("status") or None,
                                        since=args.get("since") or None, until=args.get("until") or None,
                                        text=args.get("q") or None, limit=int_arg("limit", 50, 1, 500),
                                        offset=int_arg("offset", 0, 0, MAX_OFFSET)))


@bp.get("/compare")
@documented(responses={200: JSON})
def compare_jobs():  # type: ignore[no-untyped-def]
    return jsonify(_comparison())


@bp.get("/compare/export", endpoint="compare_export")
@documented(responses={200: DOWNLOAD})
def export_comparison():  # type: ignore[no-untyped-def]
    kind = request.args.get("format", "")
    if kind not in ("csv", "json", "html"):
        raise ApiError("format: must be one of csv, json, html", field="format")
    comparison = _comparison()
    body = {"csv": export.comparison_csv, "json": export.comparison_json, "html": export.comparison_html}[kind](
        comparison)
    media, suffix = EXPORTS[kind]
    response = Response(body, content_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="compare-{"-".join(comparison["ids"])}-{suffix}"'
    return response


def _comparison() -> dict:
    ids = compare.parse_ids(request.args.get("ids"))
    return compare.compare(ids, slo_from_args(request.args, service.default_slo()),
                           baseline=request.args.get("baseline") or None)


@bp.get("/<job_id>")
@documented(responses={200: JSON})
def job_results(job_id: str):  # type: ignore[no-untyped-def]
    job = service.stress_job(job_id)
    return jsonify(service.job_results(job, slo_from_args(request.args, service.default_slo())))


@bp.get("/<job_id>/export", endpoint="export")
@documented(responses={200: DOWNLOAD})
def export_job(job_id: str):  # type: ignore[no-untyped-def]
    kind = request.args.get("format", "")
    if kind not in EXPORTS:
        raise ApiError(f"format: must be one of {', '.join(EXPORTS)}", field="format")
    job = service.stress_job(job_id)
    table = service.load_requests(job.id)
    results = service.job_results(job, slo_from_args(request.args, service.default_slo()), table)
    if kind == "csv":
        body = export.levels_csv(results)
    elif kind == "json":
        body = export.results_json(results)
    elif kind == "requests.csv":
        body = export.requests_csv(results, service.request_rows(job.id))
    else:
        body = export.report_html(results, table)
    media, suffix = EXPORTS[kind]
    response = Response(body, content_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="stress-{job.id}-{suffix}"'
    return response
