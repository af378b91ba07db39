"""The receiver's Prometheus metrics, served at GET /metrics on the receiver's own port.

Cheap on the hot path by construction:
- answers of POST /copernica are counted by the handler itself (`ingest.app.receiver`; not a
  middleware, so no other route pays) into a plain dict of ints. The receiver is one event
  loop and the scrape runs on that same loop, so no lock is needed; a Prometheus `Counter` child would take
  a lock on every request (about 0.4 µs against 0.04 µs measured). The dict is exported at
  scrape time by a custom collector;
- events accepted, batch sizes and enqueue latency are recorded once per batch by the group
  committer's `observe` hook, not per request;
- the queue gauges (depth, age of the oldest queued job, failed jobs) are read from Redis when
  Prometheus scrapes, with a short timeout; when Redis does not answer they are NaN and
  /metrics still answers 200.

Each receiver process has its own metrics (see README, Metrics): scrape every process.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import redis
import redis.asyncio as aredis
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from rq.registry import FailedJobRegistry
from rq.utils import utcparse

from common.rqcontract.jobs import job_key, queue_key

log = logging.getLogger("ingest.metrics")

PREFIX = "copernica_ingest"
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
ENQUEUE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCRAPE_REDIS_TIMEOUT = 0.5  # seconds the queue gauges may take; /metrics must answer anyway

# The receiver's own registry (not prometheus_client's global one), so the worker's metrics and
# the receiver's never mix when both are imported in one process (`ingest dev`, the tests).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# status code -> answers of POST /copernica; incremented by ingest.app.receiver, exported by _Answers.
ANSWERS: Counter[int] = Counter()

EVENTS_ACCEPTED = PromCounter(
    f"{PREFIX}_events_accepted", "Webhook calls durably queued in Redis (each answered 200).", registry=REGISTRY
)
BATCH_SIZE = Histogram(
    f"{PREFIX}_batch_size",
    "Calls per group-commit batch written to Redis as one RQ job.",
    buckets=BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
ENQUEUE_SECONDS = Histogram(
    f"{PREFIX}_enqueue_seconds",
    "Seconds one batch took to be written to Redis (one script call).",
    buckets=ENQUEUE_SECONDS_BUCKETS,
    registry=REGISTRY,
)
ENQUEUE_FAILURES = PromCounter(
    f"{PREFIX}_enqueue_failed_batches", "Batches Redis did not take (their calls were answered 503).", registry=REGISTRY
)
REPLICA_WAITS_FAILED = PromCounter(
    f"{PREFIX}_replica_waits_failed",
    "Batches written but not on INGEST_REDIS_MIN_REPLICAS replicas within INGEST_REDIS_REPLICA_TIMEOUT "
    "(their calls were answered 503).",
    registry=REGISTRY,
)
REFUSED_CONNECTIONS = PromCounter(
    f"{PREFIX}_connections_refused",
    "Connections answered 503 and closed at once: INGEST_MAX_CONNECTIONS were open (ingest.connections).",
    registry=REGISTRY,
)
HEAD_TIMEOUTS = PromCounter(
    f"{PREFIX}_head_timeouts",
    "Connections closed because a request's line and headers took longer than INGEST_HEAD_TIMEOUT.",
    registry=REGISTRY,
)
PENDING = Gauge(
    f"{PREFIX}_pending_calls", "Calls of this process waiting for their batch's Redis write.", registry=REGISTRY
)
QUEUE_DEPTH = Gauge(
    f"{PREFIX}_queue_depth",
    "RQ jobs (batches of calls) waiting in INGEST_QUEUE; NaN when Redis does not answer.",
    registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    f"{PREFIX}_queue_oldest_age_seconds",
    "Age of the oldest queued job (0 when the queue is empty); NaN when Redis does not answer.",
    registry=REGISTRY,
)
FAILED_JOBS = Gauge(
    f"{PREFIX}_failed_jobs",
    "Jobs resting in RQ's failed registry of INGEST_QUEUE; NaN when Redis does not answer.",
    registry=REGISTRY,
)


class _Answers(Collector):
    """`copernica_ingest_requests_total{status}` from the plain counts kept by the receiver."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_requests", "Answers to POST /copernica by HTTP status.", labels=["status"]
        )
        for status, count in sorted(ANSWERS.items()):
            family.add_metric([str(status)], count)
        yield family


class _Refusals(Collector):
    """`copernica_ingest_refused_total{reason}` from `ingest.auth.REFUSALS`, when that module exists."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_refused", "Calls refused before queueing, by reason.", labels=["reason"]
        )
        for reason, count in sorted(refusals().items()):
            family.add_metric([reason], count)
        yield family


def refusals() -> dict[str, int]:
    """The receiver's refusal counts by reason; empty while there is no `ingest.auth`."""
    try:
        auth = importlib.import_module("ingest.auth")
    except ModuleNotFoundError as exc:
        if exc.name != "ingest.auth":
            raise
        return {}
    return dict(getattr(auth, "REFUSALS", {}))


REGISTRY.register(_Answers())
REGISTRY.register(_Refusals())

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def observe_batch(size: int, seconds: float, ok: bool) -> None:
    """The group committer's `observe` hook: one call per batch written (or not) to Redis."""
    BATCH_SIZE.observe(size)
    ENQUEUE_SECONDS.observe(seconds)
    if ok:
        EVENTS_ACCEPTED.inc(size)
    else:
        ENQUEUE_FAILURES.inc()


async def read_queue(connection: aredis.Redis, queue: str, *, now: float | None = None) -> tuple[int, float, int]:
    """Queue depth, age in seconds of the oldest queued job (0 when empty) and failed jobs:
    two round trips (LLEN + LINDEX + ZCARD, then the head job's `enqueued_at`)."""
    async with connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue_key(queue))
        pipe.lindex(queue_key(queue), 0)
        pipe.zcard(FailedJobRegistry.key_template.format(queue))
        depth, head, failed = await pipe.execute()
    age = 0.0
    if head is not None:
        enqueued = await connection.hget(job_key(head.decode()), "enqueued_at")
        if enqueued:
            started = utcparse(enqueued.decode()).timestamp()  # type: ignore[union-attr]  # redis-py: bytes | str
            age = max(0.0, (time.time() if now is None else now) - started)
    return int(depth), age, int(failed)


async def refresh_queue_gauges(connection: aredis.Redis, queue: str, timeout: float) -> bool:
    """Set the queue gauges from Redis; NaN when Redis does not answer within `timeout`."""
    try:
        depth, age, failed = await asyncio.wait_for(read_queue(connection, queue), timeout)
    except (TimeoutError, redis.RedisError, OSError, ValueError) as exc:
        log.debug("queue gauges unavailable: %s", exc)
        for gauge in (QUEUE_DEPTH, QUEUE_OLDEST_AGE, FAILED_JOBS):
            gauge.set(math.nan)
        return False
    QUEUE_DEPTH.set(depth)
    QUEUE_OLDEST_AGE.set(age)
    FAILED_JOBS.set(failed)
    return True


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for (text, or OpenMetrics)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


def handler(
    connection: aredis.Redis, queue: str, pending: Callable[[], int], timeout: float = SCRAPE_REDIS_TIMEOUT
) -> Handler:
    """GET /metrics for one receiver app: its pending calls and the queue gauges are read at
    scrape time (`connection` is the app's asyncio Redis client)."""

    async def metrics(request: web.BaseRequest) -> web.Response:
        PENDING.set(pending())
        await refresh_queue_gauges(connection, queue, timeout)
        body, content_type = exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return metrics
