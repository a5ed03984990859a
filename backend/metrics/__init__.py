"""Prometheus metrics (``GET /metrics``): what the platform serves, relays and runs.

Every process counts in its own metric objects; with ``PROMETHEUS_MULTIPROC_DIR`` set (the supervisor sets
it for gunicorn's workers and the job worker, a fresh folder each start) prometheus_client keeps them in
files there, and a scrape of any gunicorn worker adds up every process's. Without it (a test app in one
process) the process's own registry is scraped. What lives in the database (jobs by kind and status, the
queue, the workers and their evalscope processes) is read at scrape time (``collectors.py``), so every web
host reports the same cluster-wide figures.

The relay's figures are recorded once per model per request, when its answer ends, never per token: the
hot path stays as measured in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a 5 ms cache hit to a two-minute answer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter("pep_http_requests_total", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("pep_http_request_duration_seconds",
                         "Time to answer an HTTP request (for a stream: until its headers), by route template",
                         ["route", "method"], buckets=LATENCY_BUCKETS)
SSE_STREAMS = Gauge("pep_sse_streams_active", "Server-sent event streams open now", ["stream"],
                    multiprocess_mode="livesum")
RELAYED_TOKENS = Counter("pep_relayed_output_tokens_total", "Output tokens relayed to clients, by model and provider",
                         ["model", "provider"])
RELAYED_ANSWERS = Counter("pep_relayed_answers_total", "Model answers relayed, by model, provider and outcome",
                          ["model", "provider", "outcome"])
TTFT_SECONDS = Histogram("pep_relay_ttft_seconds", "Time to first token of relayed answers, by model and provider",
                         ["model", "provider"], buckets=TTFT_BUCKETS)
ANSWER_SECONDS = Histogram("pep_relay_latency_seconds", "Whole-answer latency of relayed answers, by model and "
                           "provider", ["model", "provider"], buckets=LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("pep_upstream_errors_total", "Model calls that ended in an error, by model and error code",
                          ["model", "code"])


# ``metrics.enabled`` of the app this process serves (``api.install``): off, nothing is counted and
# /metrics is not served (the relay benchmark measures the cost of counting against it).
ENABLED = True


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def observe_answer(model: str, provider: str, figures: dict[str, Any], error_code: str | None) -> None:
    """One relayed model answer has ended: its tokens, TTFT, latency and outcome."""
    if not ENABLED:
        return
    outcome = "completed" if error_code is None else ("cancelled" if error_code == "cancelled" else "failed")
    RELAYED_ANSWERS.labels(model, provider, outcome).inc()
    tokens = figures.get("output_tokens")
    if tokens:
        RELAYED_TOKENS.labels(model, provider).inc(tokens)
    if figures.get("ttft_ms") is not None:
        TTFT_SECONDS.labels(model, provider).observe(figures["ttft_ms"] / 1000.0)
    if error_code is None and figures.get("latency_ms") is not None:
        ANSWER_SECONDS.labels(model, provider).observe(figures["latency_ms"] / 1000.0)
    if error_code is not None and error_code != "cancelled":
        UPSTREAM_ERRORS.labels(model, error_code).inc()
