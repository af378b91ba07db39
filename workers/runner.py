"""Running RQ workers for the store jobs: non-forking, with the scheduler for retries. What of
RQ's worker this relies on is in `common.rqcontract.worker.HeartbeatWorker`."""

from __future__ import annotations

import logging

import redis
from rq import Queue

from common import redisconn
from common.rqcontract.worker import HeartbeatWorker
from common.settings import Settings
from workers import coalesce, metrics

log = logging.getLogger("workers.runner")

# Together these bound how long a batch held by a dead worker waits: its heartbeat lapses
# after ABANDONED_AFTER seconds, the next maintenance round (every MAINTENANCE_INTERVAL, by any
# worker; RQ's default is 10 minutes) retries it. About a minute in all, not RQ's ~11 minutes
# (a SimpleWorker's job otherwise counts as alive for its whole timeout plus a minute).
MAINTENANCE_INTERVAL = 15
ABANDONED_AFTER = 30
HEARTBEAT_INTERVAL = 10
# An idle RQ worker blocks on the queue for its TTL less 15 s (RQ's default: 405 s) and runs
# maintenance only between waits: a short TTL keeps maintenance on time when no job arrives.
WORKER_TTL = 30


class StoreWorker(HeartbeatWorker):
    """RQ's SimpleWorker (jobs run in this process, so the PostgreSQL connection lives as long
    as the worker), with a heartbeat while a job runs, so that a job whose worker died is
    retried within about a minute; it also returns batches borrowed by workers that died."""

    heartbeat_interval = HEARTBEAT_INTERVAL
    abandoned_after = ABANDONED_AFTER

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            metrics.record_abandoned(coalesce.return_abandoned(self.connection))
        except redis.RedisError as exc:  # maintenance must not stop the worker
            log.warning("could not check for abandoned batches: %s", exc)


def make_worker(settings: Settings, name: str | None = None) -> StoreWorker:
    connection = redisconn.sync_client(settings)
    queue = Queue(settings.queue, connection=connection)
    worker = StoreWorker(
        [queue], connection=connection, name=name, maintenance_interval=MAINTENANCE_INTERVAL, worker_ttl=WORKER_TTL
    )
    if redisconn.uses_sentinel(settings):
        # RQ's scheduler would rebuild its connection from the pool's arguments and lose Sentinel
        # (common.rqcontract.worker.FactoryScheduler): it builds its own, after the fork.
        worker.scheduler_connection = lambda: redisconn.sync_client(settings)
    return worker


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
