"""Group-commit enqueue: one batch of raw calls becomes one RQ job.

RQ stays the authority on what a job looks like in Redis: at the first batch, RQ's own enqueue
builds a job onto a recording pipeline and what it wrote becomes a template
(`common.rqcontract.jobs.JobTemplate`, where every RQ behaviour we rely on is kept). Each batch then
fills in only what differs per job (its id, its data, its times, its description) and the
writes go to Redis as one Lua script call on a connection of our own, so they apply together
or not at all, and cost the event loop one send and one reply. Building an RQ job and replaying
it through a redis-py pipeline cost about 0.3 ms of CPU per batch; the template about 0.1 ms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRedisRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry

from common import redisconn
from common.envelope import pack_calls
from common.rqcontract.jobs import JOB_FUNCTION, JobTemplate
from common.settings import Settings
from ingest import metrics

log = logging.getLogger("ingest.queueing")

JOB_TIMEOUT = 600  # seconds a batch may take to store before RQ calls it failed
FAILURE_TTL = 365 * 24 * 3600  # a failed batch rests in the failed registry for a year
RESULT_TTL = 0  # a stored batch leaves Redis at once: the rows are in PostgreSQL

_BACK_OFF = (5, 10, 30, 60, 120, 300, 600)
LOG_EVERY = 10.0  # seconds between two warnings of batches that missed their replicas


class NotReplicated(Exception):
    """A batch was written, but fewer replicas than INGEST_REDIS_MIN_REPLICAS had it in time.
    Its calls are answered 503 (the committer's `WriteFailed`); the batch may still be stored,
    and their senders' retries are stored once (storing is idempotent)."""


def retry_intervals(retries: int) -> list[int]:
    """Back-off for failed batches: 5 s, 10 s, 30 s, 1, 2, 5, 10 minutes, then every 15 minutes.
    Short at first, because the usual failure is brief (a worker killed, PostgreSQL restarting);
    a job abandoned by a dead worker is retried through the same back-off."""
    return [_BACK_OFF[i] if i < len(_BACK_OFF) else 900 for i in range(retries)]


def _client_options(settings: Settings, timeout: float | None, *, for_asyncio: bool = False) -> dict[str, Any]:
    limit = timeout if timeout is not None else settings.redis_timeout
    retry = AsyncRedisRetry if for_asyncio else RedisRetry  # each client takes its own kind
    return {
        "socket_timeout": limit,
        "socket_connect_timeout": limit,
        # One immediate retry on a broken connection (Redis restarted under us); none on a
        # timeout, so a hung Redis costs one timeout, not several.
        "retry": retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


def _resp(*parts: bytes) -> bytes:
    """One command in RESP, as it goes on the wire."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


def redis_client(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A synchronous client that fails fast (used by commands and tests)."""
    return redisconn.sync_client(settings, **_client_options(settings, timeout))


class BatchQueue:
    """Writes batches of raw calls to the RQ queue from the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection = redisconn.async_client(settings, **_client_options(settings, None, for_asyncio=True))
        self._sync = redis_client(settings)
        self.queue = Queue(settings.queue, connection=self._sync)
        self.retry = Retry(max=settings.job_retries, interval=retry_intervals(settings.job_retries))
        self._template: JobTemplate | None = None
        # Connections of our own for the batch writes (the committer bounds how many at once):
        # redis-py's pool costs more per checkout than the whole write. They have no socket
        # timeout of their own (it costs a task per send): `enqueue` bounds the whole write.
        self._connections = redisconn.async_pool(
            settings, **{**_client_options(settings, None, for_asyncio=True), "socket_timeout": None}
        )
        # Through Sentinel a connection must ask for the primary before its first send (a bare
        # send would connect to its default address); one that broke, or got READONLY from a
        # demoted primary, is dropped and asks again.
        self._sentinel = redisconn.uses_sentinel(settings)
        self._idle: list[aredis.connection.AbstractConnection] = []
        # INGEST_REDIS_MIN_REPLICAS: a `WAIT` sent with each script call, in the same send on
        # the same connection, so the count it answers is for that write. None: no wait at all.
        self._min_replicas = settings.redis_min_replicas
        self._wait: bytes | None = None
        self._limit = settings.redis_timeout * 2
        if self._min_replicas:
            timeout_ms = settings.redis_replica_timeout
            self._wait = _resp(b"WAIT", b"%d" % self._min_replicas, b"%d" % timeout_ms)
            self._limit += timeout_ms / 1000
        self._not_replicated = 0  # batches since the last warning
        self._warned_at = float("-inf")

    def template(self) -> JobTemplate:
        """Built at the first batch (it asks Redis its version: run it off the event loop)."""
        if self._template is None:
            self._template = JobTemplate(
                self.queue,
                JOB_FUNCTION,
                timeout=JOB_TIMEOUT,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                retry=self.retry,
            )
        return self._template

    def _pack(self, template: JobTemplate, calls: list[dict[str, Any]]) -> tuple[str, bytes]:
        # The calls are compressed in their argument (common.envelope), not by RQ's zlib.
        return template.pack(pack_calls(calls), b"store_packed(%d calls)" % len(calls))

    async def enqueue(self, calls: list[dict[str, Any]]) -> str:
        """Durably queue one batch; return the job id. Raises redis errors on failure."""
        template = self._template
        if template is None:
            template = await asyncio.get_running_loop().run_in_executor(None, self.template)
        job_id, command = self._pack(template, calls)
        async with asyncio.timeout(self._limit):
            replicas = await self._send(command)
        if replicas is not None and replicas < self._min_replicas:
            self._missed_replicas(replicas)
        return job_id

    async def _send(self, command: bytes) -> int | None:
        """Send one command and read its reply; once more on a fresh connection if the first broke.
        A retried batch may be queued twice when the first reply was lost: storing is idempotent.
        With INGEST_REDIS_MIN_REPLICAS, the `WAIT` goes in the same send: the replicas that
        acknowledged are returned (else None)."""
        wait = self._wait
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else self._connections.make_connection()
            try:
                if self._sentinel and not conn.is_connected:
                    await conn.connect()
                await conn.send_packed_command(command if wait is None else (command, wait), check_health=False)
                await conn.read_response()  # an error reply raises, after it was read whole
                # (an error reply leaves the WAIT's reply unread: the socket is dropped below)
                if wait is not None:
                    return int(await conn.read_response())
            except redis.ConnectionError:
                await conn.disconnect()
                if attempt == 2:
                    raise
            except BaseException:  # a timeout or a cancellation: the reply may still come; drop the socket
                await conn.disconnect()
                raise
            else:
                return None
            finally:
                self._idle.append(conn)
        return None  # not reached: the second attempt returns or raises

    def _missed_replicas(self, replicas: int) -> None:
        """Count a batch that missed its replicas, warn at most every LOG_EVERY seconds, and fail it."""
        metrics.REPLICA_WAITS_FAILED.inc()
        self._not_replicated += 1
        now = time.monotonic()
        if now - self._warned_at >= LOG_EVERY:
            log.warning(
                "%d batch(es) on %d of %d replicas within %d ms (the last one): answered 503",
                self._not_replicated,
                replicas,
                self._min_replicas,
                self.settings.redis_replica_timeout,
            )
            self._warned_at, self._not_replicated = now, 0
        raise NotReplicated(f"on {replicas} of {self._min_replicas} replicas in time")

    def write_sync(self, conn: redis.Redis, calls: list[dict[str, Any]]) -> str:
        """Queue one batch from synchronous code (the benchmark, tests) the same way."""
        job_id, command = self._pack(self.template(), calls)
        try:
            connection = conn.connection_pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name (later ones warn at one)
            connection = conn.connection_pool.get_connection("EVAL")
        try:
            connection.send_packed_command([command])
            connection.read_response()
        finally:
            conn.connection_pool.release(connection)
        return job_id

    async def ping(self) -> bool:
        """Redis answers (for /readyz). Through Sentinel: the server named the primary still is
        one (`ROLE`), so a demoted primary that still answers does not count as ready."""
        try:
            if self._sentinel:
                role = await asyncio.wait_for(self.connection.execute_command("ROLE"), self.settings.redis_timeout)
                return bool(role) and role[0] in (b"master", "master")
            return bool(await asyncio.wait_for(self.connection.ping(), timeout=self.settings.redis_timeout))
        except (TimeoutError, redis.RedisError, OSError):
            return False

    async def close(self) -> None:
        for conn in self._idle:
            await conn.disconnect()
        self._idle.clear()
        await self.connection.aclose()
        self._sync.close()
