"""Failed store jobs: the list (RQ's failed registry of INGEST_QUEUE, paged) and requeueing
one or all after a confirmation, through `ingest requeue-failed`'s own function."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp_jinja2
import redis
from aiohttp import web
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry

from common.envelope import unpack_calls
from console.app import REDIS, SETTINGS, in_thread
from ingest.cli.jobs import requeue_failed

log = logging.getLogger("console.views.jobs")

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


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


async def failed_list(request: web.Request) -> web.StreamResponse:
    page = _page(request)
    jobs, total = await in_thread(failed_page, request.app[REDIS], request.app[SETTINGS].queue, page)
    return aiohttp_jinja2.render_template(
        "failed.html", request, {"jobs": jobs, "total": total, "page": page, "more": page * PAGE < total}
    )


async def confirm_requeue(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info.get("id")
    _jobs, total = await in_thread(failed_page, request.app[REDIS], request.app[SETTINGS].queue, 1)
    return aiohttp_jinja2.render_template("requeue_confirm.html", request, {"job_id": job_id, "total": total})


async def do_requeue(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info.get("id")
    context: dict[str, Any] = {"job_id": job_id, "requeued": None, "error": None}
    try:
        context["requeued"] = await in_thread(requeue_failed, request.app[SETTINGS], job_id)
    except LookupError as exc:
        context["error"] = str(exc.args[0])
    log.info("console requeue of %s: %s", job_id or "all", context)
    response = aiohttp_jinja2.render_template("requeue_result.html", request, context)
    if context["error"]:
        response.set_status(404)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/failed", failed_list)
    app.router.add_get("/failed/requeue", confirm_requeue)
    app.router.add_post("/failed/requeue", do_requeue)
    app.router.add_get("/failed/{id}/requeue", confirm_requeue)
    app.router.add_post("/failed/{id}/requeue", do_requeue)
