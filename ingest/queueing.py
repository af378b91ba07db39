"""The only code that knows RQ's enqueue: one batch of raw calls becomes one RQ job.

The write is synchronous redis-py inside one MULTI/EXEC transaction (job hash, queue push
and queue registration together), so a batch is either wholly in Redis or not at all. The
receiver runs it on a dedicated thread: RQ's per-job cost stays out of the event loop, and
the loop pays it once per batch, not once per request.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rq import Queue, Retry

from ingest.settings import Settings

log = logging.getLogger("ingest.queueing")

JOB_FUNCTION = "workers.jobs.store_batch"
JOB_TIMEOUT = 600  # seconds a batch may take to store before RQ calls it failed
FAILURE_TTL = 365 * 24 * 3600  # a failed batch rests in the failed registry for a year
RESULT_TTL = 0  # a stored batch leaves Redis at once: the rows are in PostgreSQL


def retry_intervals(retries: int) -> list[int]:
    """Back-off for failed batches: 5 s, 15 s, 45 s, ... capped at 15 minutes."""
    return [min(5 * 3**i, 900) for i in range(retries)]


def redis_client(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A client that fails fast: a write that cannot finish in time is a 503, not a hang."""
    settings.require("redis_url")
    limit = timeout if timeout is not None else settings.redis_timeout
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=limit,
        socket_connect_timeout=limit,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=0,
    )


class BatchQueue:
    """Writes batches of raw calls to the RQ queue."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        self.connection = connection or redis_client(settings)
        self.queue = Queue(settings.queue, connection=self.connection)
        self.retry = Retry(max=settings.job_retries, interval=retry_intervals(settings.job_retries))

    def enqueue(self, calls: list[dict[str, Any]]) -> str:
        """Durably queue one batch; return the job id. Raises redis errors on failure."""
        with self.connection.pipeline(transaction=True) as pipe:
            job = self.queue.enqueue_call(
                JOB_FUNCTION,
                args=(calls,),
                timeout=JOB_TIMEOUT,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                retry=self.retry,
                description=f"store_batch({len(calls)} calls)",
                pipeline=pipe,
            )
            pipe.execute()
        return job.id

    def ping(self) -> bool:
        try:
            return bool(self.connection.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.connection.close()
