"""`ingest requeue-failed [--id ID | --all]`: put failed store jobs back on the queue.

A store job that failed every retry (PostgreSQL down for longer than the back-off) rests in
RQ's failed registry of INGEST_QUEUE with its calls intact. Once the cause is fixed, requeueing
it stores those calls; storing is idempotent, so requeueing a job whose calls were meanwhile
stored another way (backfill) adds no row twice.

Registered through `ingest.cli.COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from common.settings import Settings
from ingest.cli.base import EXIT_FAILURE, fail, one_target

log = logging.getLogger("ingest.cli.jobs")


def register(subparsers: Any) -> None:
    """Add `requeue-failed` to the `ingest` parser."""
    requeue = subparsers.add_parser(
        "requeue-failed",
        help="put failed store jobs back on the queue",
        description="Move jobs from RQ's failed registry of INGEST_QUEUE back to the queue, so a worker "
        "stores their calls. A requeued job that fails again rests in the registry again "
        "(its retries were used up).",
    )
    requeue.add_argument("--id", metavar="ID", help="requeue the failed job with this id")
    requeue.add_argument("--all", action="store_true", help="requeue every failed job")
    requeue.set_defaults(handler=cmd_requeue_failed)


def requeue_failed(settings: Settings, job_id: str | None = None) -> int:
    """Requeue one failed job (`job_id`) or all of them; return how many were requeued.
    Raises LookupError when `job_id` is not in the failed registry."""
    from rq import Queue
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.registry import FailedJobRegistry

    from ingest.queueing import redis_client

    connection = redis_client(settings, timeout=10)
    try:
        registry = FailedJobRegistry(queue=Queue(settings.queue, connection=connection))
        ids = [job_id] if job_id is not None else registry.get_job_ids()
        requeued = 0
        for one in ids:
            try:
                registry.requeue(one)
            except (InvalidJobOperation, NoSuchJobError):
                if job_id is not None:
                    raise LookupError(f"no failed job with id {job_id!r} in queue {settings.queue!r}") from None
                log.warning("failed job %s vanished before it could be requeued", one)
                continue
            requeued += 1
        return requeued
    finally:
        connection.close()


def cmd_requeue_failed(settings: Settings, args: argparse.Namespace) -> int:
    if (refused := one_target("requeue-failed", args, "ID")) is not None:
        return refused
    settings.require("redis_url")
    try:
        count = requeue_failed(settings, args.id)
    except LookupError as exc:
        return fail(f"requeue-failed: {exc.args[0]}", EXIT_FAILURE)
    print(f"requeued {count} failed job{'' if count == 1 else 's'} on queue {settings.queue!r}")
    return 0
