"""/api/v1/workers: the job workers of every host, their capacity, labels, running jobs and leases."""

from __future__ import annotations

from flask import Blueprint, jsonify

from backend.jobs import service
from backend.openapi import documented
from backend.openapi.models import WorkerList

bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1/workers")


@bp.get("")
@documented(summary="The job workers: host, labels, capacity and running jobs per kind, lease, liveness",
            responses={200: WorkerList})
def list_workers():  # type: ignore[no-untyped-def]
    return jsonify({"workers": service.current_workers()})
