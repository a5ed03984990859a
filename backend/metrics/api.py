"""``GET /metrics`` (Prometheus text format) and the hooks that count every HTTP request."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.registry import Collector

from backend import metrics as state
from backend.metrics import HTTP_REQUESTS, HTTP_SECONDS, multiprocess
from backend.metrics.collectors import DatabaseCollector

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    """Every process's counters (multiprocess mode: their files added up) and the database's figures.
    Protected like the API when authentication is on (backend/security: a bearer token)."""
    from backend.jobs.kinds import registered_kinds

    registry = CollectorRegistry()  # one a scrape: scrapes side by side (greenlets) never share it
    if multiprocess():
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:  # one process, no folder: its own metric objects
        registry.register(_ThisProcess())
    registry.register(DatabaseCollector({kind.name: kind.model for kind in registered_kinds()}))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _ThisProcess(Collector):
    def collect(self):  # type: ignore[no-untyped-def]
        yield from REGISTRY.collect()


def install(app: Flask) -> None:
    """Count every request by its route template (``/api/v1/stress-tests/<job_id>``, never the id itself:
    bounded label values), method and status, with its duration (until the response is handed to the server:
    for a stream, its headers). Nothing of it when ``metrics.enabled`` is false."""
    state.ENABLED = bool(app.config["PEP"].get("metrics", {}).get("enabled", True))
    if not state.ENABLED:
        return

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if started is not None:
            HTTP_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    app.register_blueprint(bp)
