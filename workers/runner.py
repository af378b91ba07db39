"""Running RQ workers for the store jobs: non-forking, with the scheduler for retries."""

from __future__ import annotations

import logging

from rq import Queue, SimpleWorker

from ingest.settings import Settings

log = logging.getLogger("workers.runner")


def make_worker(settings: Settings, name: str | None = None) -> SimpleWorker:
    import redis

    settings.require("redis_url")
    connection = redis.Redis.from_url(settings.redis_url)
    queue = Queue(settings.queue, connection=connection)
    return SimpleWorker([queue], connection=connection, name=name)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> int:
    """Work the queue; `burst` stops once it is empty. Jobs run in this process (no fork), so
    the PostgreSQL connection lives as long as the worker."""
    worker = make_worker(settings, name)
    log.info("worker %s on queue %r (burst=%s)", worker.name, settings.queue, burst)
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
    return 0
