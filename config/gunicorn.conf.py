"""gunicorn settings for scripts/start.sh and the benchmarks (the same command both ways).

gevent workers: an open SSE stream costs a greenlet, not an OS thread (measured: 1,000 slow streams
held on one core; gthread needed ~4,000 threads and broke). Each worker is pinned to one core so the
scheduler does not float it between cores.
"""

import os

# gevent's default resolver sends every lookup, even of 127.0.0.1, through its thread pool: c-ares
# answers in the event loop (measured: ~3 % of the relay's CPU at 200 clients).
os.environ.setdefault("GEVENT_RESOLVER", "ares,thread")

worker_class = "gevent"
workers = int(os.environ.get("WEB_WORKERS", os.cpu_count() or 1))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "4000"))
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
timeout = 60  # a gevent worker's heartbeat, not a request limit: streams may run longer
graceful_timeout = 10
keepalive = 5
backlog = 4096
accesslog = None
errorlog = "-"
loglevel = "warning"
wsgi_app = "backend.app:create_app()"


def post_worker_init(worker):
    # The app is loaded: what exists now lives as long as the worker. Frozen, the collector never walks
    # it again, and young collections come less often (the defaults, every 700 allocations, walked the
    # whole heap often enough to stall every stream of a worker for tens of ms: at 200 clients x 3
    # models, added TTFT p99 ~90 -> ~50 ms; docs/PERFORMANCE.md).
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def post_fork(server, worker):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1 and os.environ.get("PIN_WORKERS", "1") == "1":
        os.sched_setaffinity(0, {cores[(worker.age - 1) % len(cores)]})


def child_exit(server, worker):
    # Prometheus multiprocess mode (backend/metrics): a dead worker's live gauges (open streams) leave the sum.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
