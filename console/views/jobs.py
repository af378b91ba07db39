"""Failed store jobs: the list (RQ's failed registry of INGEST_QUEUE, paged) and requeueing
one or all after a confirmation (through `console.views.confirmed`), with `ingest
requeue-failed`'s own function."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from aiohttp import web
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from common.envelope import unpack_calls
from console.app import REDIS, SETTINGS, in_thread
from console.views.confirmed import ConfirmedAction
from ingest.cli.jobs import requeue_failed

PAGE = 25


@dataclass(frozen=True, slots=True)
class FailedJob:
    id: str
    function: str | None
    calls: int | None
    enqueued_at: datetime | None
    ended_at: datetime | None
    error: str  # the last line of the exception


def _calls(job: Job) -> int | None:
    try:
        return len(unpack_calls(job.args[0]))
    except Exception:  # a job of another shape: its count is not shown
        return None


def _error(job: Job) -> str:
    """The job's last exception as RQ keeps it (its latest result)."""
    result = job.latest_result()
    return (result.exc_string or "") if result is not None else ""


def failed_page(conn: redis.Redis, queue: str, page: int) -> tuple[list[FailedJob], int]:
    """One page of the failed registry, newest first, and how many jobs rest there."""
    registry = FailedJobRegistry(queue=Queue(queue, connection=conn))
    total = registry.get_job_count(cleanup=False)
    start = (page - 1) * PAGE
    ids = registry.get_job_ids(start, start + PAGE - 1, desc=True, cleanup=False)
    jobs = []
    for job_id, job in zip(ids, Job.fetch_many(ids, connection=conn), strict=True):
        if job is None:
            continue
        lines = _error(job).strip().splitlines()
        jobs.append(
            FailedJob(job_id, job.func_name, _calls(job), job.enqueued_at, job.ended_at, lines[-1] if lines else "")
        )
    return jobs, total


async def _read_page(request: web.Request, page: int) -> tuple[list[FailedJob], int]:
    return await in_thread(failed_page, request.app[REDIS], request.app[SETTINGS].queue, page)


def failed_count(conn: redis.Redis, queue: str) -> int:
    """How many jobs rest in the failed registry."""
    return FailedJobRegistry(queue=Queue(queue, connection=conn)).get_job_count(cleanup=False)


async def _count(request: web.Request) -> int:
    return await in_thread(failed_count, request.app[REDIS], request.app[SETTINGS].queue)


async def _requeue(request: web.Request, job_id: str | None) -> tuple[dict[str, Any], int]:
    try:
        return {"requeued": await in_thread(requeue_failed, request.app[SETTINGS], job_id), "error": None}, 200
    except LookupError as exc:
        return {"requeued": None, "error": str(exc.args[0])}, 404


REQUEUE = ConfirmedAction(
    path="/failed",
    action="requeue",
    page_size=PAGE,
    items_name="jobs",
    read_page=_read_page,
    id_name="job_id",
    count=_count,
    act=_requeue,
)


def add_routes(app: web.Application) -> None:
    REQUEUE.add_routes(app)
