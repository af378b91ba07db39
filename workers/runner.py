"""Running RQ workers for the store jobs: non-forking, with the scheduler for retries."""

from __future__ import annotations

import logging

import redis
from rq import Queue, SimpleWorker

from ingest.settings import Settings
from workers import coalesce, metrics

log = logging.getLogger("workers.runner")

# Seconds between a worker's maintenance rounds (RQ's default is 10 minutes): abandoned jobs
# and abandoned borrowed batches go back to the queue within about a minute.
MAINTENANCE_INTERVAL = 30


class StoreWorker(SimpleWorker):
    """RQ's SimpleWorker (jobs run in this process, so the PostgreSQL connection lives as long
    as the worker) that also returns batches borrowed by workers that died."""

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            metrics.record_abandoned(coalesce.return_abandoned(self.connection))
        except redis.RedisError as exc:  # maintenance must not stop the worker
            log.warning("could not check for abandoned batches: %s", exc)


def make_worker(settings: Settings, name: str | None = None) -> StoreWorker:
    settings.require("redis_url")
    connection = redis.Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue, connection=connection)
    return StoreWorker([queue], connection=connection, name=name, maintenance_interval=MAINTENANCE_INTERVAL)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> int:
    """Work the queue; `burst` stops once it is empty. Metrics are served meanwhile on
    INGEST_WORKER_METRICS_PORT (unless 0)."""
    worker = make_worker(settings, name)
    server = metrics.serve(settings.worker_metrics_port)
    try:
        metrics.record_abandoned(coalesce.return_abandoned(worker.connection))
        log.info("worker %s on queue %r (burst=%s)", worker.name, settings.queue, burst)
        worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    finally:
        metrics.stop(server)
    return 0
