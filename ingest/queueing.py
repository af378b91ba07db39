"""The only code that knows RQ's enqueue: one batch of raw calls becomes one RQ job.

RQ stays the authority on what a job looks like in Redis: `Queue.enqueue_call` builds the job
and issues its writes onto a pipeline. We hand it a recording pipeline, then replay the
recorded writes on an asyncio Redis connection inside one MULTI/EXEC. So the event loop never
blocks, no thread fights the loop for the GIL, and a batch is either wholly in Redis (job hash,
queue push, queue registration) or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry

from ingest.settings import Settings

log = logging.getLogger("ingest.queueing")

JOB_FUNCTION = "workers.jobs.store_batch"
JOB_TIMEOUT = 600  # seconds a batch may take to store before RQ calls it failed
FAILURE_TTL = 365 * 24 * 3600  # a failed batch rests in the failed registry for a year
RESULT_TTL = 0  # a stored batch leaves Redis at once: the rows are in PostgreSQL


_BACK_OFF = (5, 10, 30, 60, 120, 300, 600)


def retry_intervals(retries: int) -> list[int]:
    """Back-off for failed batches: 5 s, 10 s, 30 s, 1, 2, 5, 10 minutes, then every 15 minutes.
    Short at first, because the usual failure is brief (a worker killed, PostgreSQL restarting);
    a job abandoned by a dead worker is retried through the same back-off."""
    return [_BACK_OFF[i] if i < len(_BACK_OFF) else 900 for i in range(retries)]


def _client_options(settings: Settings, timeout: float | None) -> dict[str, Any]:
    limit = timeout if timeout is not None else settings.redis_timeout
    return {
        "socket_timeout": limit,
        "socket_connect_timeout": limit,
        # One immediate retry on a broken connection (Redis restarted under us); none on a
        # timeout, so a hung Redis costs one timeout, not several.
        "retry": RedisRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


def redis_client(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A synchronous client that fails fast (used by commands and tests)."""
    settings.require("redis_url")
    return redis.Redis.from_url(settings.redis_url, **_client_options(settings, timeout))


class _Recorder:
    """Stands in for a redis-py pipeline and records the writes RQ issues on it."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> _Recorder:
            self.commands.append((name, args, kwargs))
            return self

        return record


class BatchQueue:
    """Writes batches of raw calls to the RQ queue from the event loop."""

    def __init__(self, settings: Settings) -> None:
        settings.require("redis_url")
        self.settings = settings
        self.connection = aredis.Redis.from_url(settings.redis_url, **_client_options(settings, None))
        # RQ asks the server version once (cached on the queue); job building needs no I/O after.
        self._sync = redis_client(settings)
        self.queue = Queue(settings.queue, connection=self._sync)
        self.retry = Retry(max=settings.job_retries, interval=retry_intervals(settings.job_retries))

    def _server_version_known(self) -> None:
        if not self.queue.redis_server_version:
            self.queue.get_redis_server_version()

    def prepare(self, calls: list[dict[str, Any]]) -> tuple[str, list[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
        """Build the RQ job for a batch; return its id and the Redis writes that enqueue it."""
        recorder = _Recorder()
        job = self.queue.enqueue_call(
            JOB_FUNCTION,
            args=(calls,),
            timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=self.retry,
            description=f"store_batch({len(calls)} calls)",
            pipeline=recorder,  # type: ignore[arg-type]
        )
        return job.id, recorder.commands

    async def enqueue(self, calls: list[dict[str, Any]]) -> str:
        """Durably queue one batch; return the job id. Raises redis errors on failure."""
        if not self.queue.redis_server_version:
            await asyncio.get_running_loop().run_in_executor(None, self._server_version_known)
        job_id, commands = self.prepare(calls)
        async with self.connection.pipeline(transaction=True) as pipe:
            for name, args, kwargs in commands:
                getattr(pipe, name)(*args, **kwargs)
            await asyncio.wait_for(pipe.execute(), timeout=self.settings.redis_timeout * 2)
        return job_id

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.connection.ping(), timeout=self.settings.redis_timeout))
        except (TimeoutError, redis.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.connection.aclose()
        self._sync.close()
