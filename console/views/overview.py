"""The overview: is it keeping up? Calls accepted and events stored per second, the queue and
its oldest job, 503s, refusals by reason, rejects (charts of the last hour and 24 hours from
`console.samples`), and the state of every worker (RQ's worker registry)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import redis
from aiohttp import web
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from console import samples
from console.app import REDIS, SETTINGS, in_thread

DAY_STEP = 300.0  # seconds per point of the 24-hour charts


@dataclass(frozen=True, slots=True)
class WorkerState:
    name: str
    state: str
    current_job: str | None
    last_heartbeat: datetime | None
    successful: int
    failed: int


@dataclass(frozen=True, slots=True)
class QueueNow:
    queued: int
    oldest_age_s: float | None
    started: int
    failed: int


def queue_now(conn: redis.Redis, name: str) -> tuple[QueueNow, list[WorkerState]]:
    """The queue and its workers as they are now (a few Redis reads)."""
    queue = Queue(name, connection=conn)
    head = queue.get_jobs(0, 0)
    age = None
    if head and head[0].enqueued_at is not None:
        enqueued = head[0].enqueued_at
        enqueued = enqueued if enqueued.tzinfo else enqueued.replace(tzinfo=UTC)
        age = max(0.0, (datetime.now(UTC) - enqueued).total_seconds())
    now = QueueNow(
        queued=queue.count,
        oldest_age_s=age,
        started=StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
        failed=FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
    )
    workers = [
        WorkerState(
            name=w.name,
            state=str(w.get_state()),
            current_job=w.get_current_job_id(),
            last_heartbeat=w.last_heartbeat,
            successful=w.successful_job_count,
            failed=w.failed_job_count,
        )
        for w in Worker.all(queue=queue)
    ]
    workers.sort(key=lambda w: w.name)
    return now, workers


def history(conn: redis.Redis, now: float) -> dict[str, Any]:
    """The charts' series and the last hour's totals, from the kept samples."""
    records = samples.load(conn, now - samples.KEEP_SECONDS)
    hour = [rec for rec in records if rec["t"] >= now - 3600]
    latest = records[-1] if records else {}
    return {
        "hour": samples.series(hour).as_json(),
        "day": samples.series(samples.thin(records, DAY_STEP)).as_json(),
        "samples": len(records),
        "last_sample": datetime.fromtimestamp(latest["t"], UTC) if latest else None,
        "errors": latest.get("errors") or [],
        "accepted_1h": samples.growth(hour, "acc"),
        "stored_1h": samples.growth(hour, "ins", restarts=False),
        "unavailable_1h": samples.growth(hour, "u503"),
        "refused_1h": samples.refused_growth(hour),
        "rejected_1h": latest.get("rej1h"),
        "types_1h": latest.get("types1h") or {},
    }


async def overview(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    conn = request.app[REDIS]
    queue, workers = await in_thread(queue_now, conn, settings.queue)
    past = await in_thread(history, conn, time.time())
    return aiohttp_jinja2.render_template(
        "overview.html",
        request,
        {
            "queue": queue,
            "workers": workers,
            "past": past,
            "charts": {"hour": past["hour"], "day": past["day"], "now": time.time() * 1000},
            "refresh": max(5, round(settings.console_sample_interval)),
            "receivers": len(settings.console_metrics_urls or ()),
            "queue_name": settings.queue,
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", overview)
