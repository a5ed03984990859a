"""What the database knows, read when /metrics is scraped: the same on every web host, whichever process
answers. One query per job table and one for the workers, so a scrape costs a few ms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from backend.db import db
from backend.jobs.models import ACTIVE, JobStatus, JobWorker, utcnow


class DatabaseCollector(Collector):
    """Jobs by kind and status, the queue, the workers (alive, heartbeat age, capacity) and the evalscope
    processes they run. ``kinds`` maps a kind's name to its model (``registered_kinds``)."""

    def __init__(self, kinds: dict[str, Any]) -> None:
        self.kinds = kinds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("pep_jobs", "Jobs in the database, by kind and status", labels=["kind", "status"])
        queued = GaugeMetricFamily("pep_jobs_queued", "Jobs waiting for a worker, by kind", labels=["kind"])
        processes = GaugeMetricFamily("pep_evalscope_processes", "evalscope processes running for jobs, by kind",
                                      labels=["kind"])
        for name, model in self.kinds.items():
            counts = dict(db.session.execute(select(model.status, func.count()).group_by(model.status)).all())
            for status in JobStatus:
                jobs.add_metric([name, status.value], counts.get(status.value, 0))
            queued.add_metric([name], counts.get(JobStatus.QUEUED.value, 0))
            running = db.session.scalar(select(func.count()).select_from(model).where(
                model.status.in_([s.value for s in ACTIVE]), model.pid.is_not(None)))
            processes.add_metric([name], running or 0)
        yield jobs
        yield queued
        yield processes

        now = utcnow()
        alive = GaugeMetricFamily("pep_worker_alive", "1 while a worker's lease holds", labels=["worker", "host"])
        age = GaugeMetricFamily("pep_worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat",
                                labels=["worker", "host"])
        capacity = GaugeMetricFamily("pep_worker_capacity", "Jobs a worker runs at once, by kind",
                                     labels=["worker", "host", "kind"])
        for worker in db.session.scalars(select(JobWorker)).all():
            host = worker.host or ""
            alive.add_metric([worker.id, host], 1.0 if worker.lease_valid(now) else 0.0)
            age.add_metric([worker.id, host], max(0.0, (now - worker.heartbeat_at).total_seconds()))
            for kind, count in (worker.capacity or {}).items():
                capacity.add_metric([worker.id, host, kind], count)
        yield alive
        yield age
        yield capacity
        db.session.remove()  # a scrape holds no connection past its answer
