"""`ingest stats`: what the pipeline is doing, from Redis (the queue) and PostgreSQL (the rows)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from common import redisconn
from common.settings import Settings
from ingest.cli.base import EXIT_USAGE, fail


@dataclass
class PipelineStats:
    queue: str
    queued_jobs: int
    oldest_queued_age_s: float | None
    started_jobs: int
    failed_jobs: int
    events_by_type: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    # opens and clicks by verdict: a machine rule's name (workers.events.machine), `human` or `unknown`
    machine: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def events_total(self) -> int:
        return sum(self.events_by_type.values())


def collect(settings: Settings) -> PipelineStats:
    from workers.storage.queries import scalar

    settings.require("redis_url", "database_url")
    connection = redisconn.sync_client(settings, socket_timeout=5, socket_connect_timeout=5)
    try:
        queue = Queue(settings.queue, connection=connection)
        oldest_age = None
        first = queue.get_job_ids(0, 0)
        if first:
            job = Job.fetch(first[0], connection=connection)
            if job.enqueued_at is not None:
                enqueued = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=UTC)
                oldest_age = max(0.0, (datetime.now(UTC) - enqueued).total_seconds())
        stats = PipelineStats(
            queue=settings.queue,
            queued_jobs=queue.count,
            oldest_queued_age_s=oldest_age,
            started_jobs=StartedJobRegistry(queue=queue).count,
            failed_jobs=FailedJobRegistry(queue=queue).count,
        )
    finally:
        connection.close()
    with psycopg.connect(settings.required("database_url"), connect_timeout=5) as conn:
        if scalar(
            conn, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'machine'"
        ):
            rows = conn.execute(
                "SELECT event_type, machine, machine_rule, count(*) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 3"
            ).fetchall()
        else:  # before migration 0006
            rows = conn.execute("SELECT event_type, NULL, NULL, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall()
        for kind, machine, rule, count in rows:
            stats.events_by_type[kind] = stats.events_by_type.get(kind, 0) + count
            if kind in ("opened", "clicked"):
                verdict = rule or ("human" if machine is False else "unknown")
                by_rule = stats.machine.setdefault(kind, {})
                by_rule[verdict] = by_rule.get(verdict, 0) + count
        stats.rejected = scalar(conn, "SELECT count(*) FROM rejected_events")
    return stats


def print_mailing(settings: Settings, mailing_id: int, *, as_json: bool = False) -> int:
    """One row of the `mailing_stats` view; exit 1 when the mailing has no stored event."""
    from workers.storage.reports import mailing_stats_row

    with psycopg.connect(settings.required("database_url"), connect_timeout=5) as conn:
        row = mailing_stats_row(conn, mailing_id)
    if row is None:
        print(f"ingest: no stored events for mailing {mailing_id}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(orjson.dumps(row, default=float, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for column in row:
        value = row[column]
        rate = column.endswith("_rate")
        shown = str(value) if not rate else "-" if value is None else f"{float(value) * 100:.1f} %"
        print(f"{column.replace('_', ' '):<16} {shown}")
    return 0


def print_stats(settings: Settings, *, as_json: bool = False) -> int:
    stats = collect(settings)
    if as_json:
        payload = asdict(stats) | {"events_total": stats.events_total}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    age = "-" if stats.oldest_queued_age_s is None else f"{stats.oldest_queued_age_s:.1f} s"
    lines = [
        f"queue {stats.queue!r}",
        f"  queued jobs           {stats.queued_jobs}",
        f"  oldest queued job     {age}",
        f"  started jobs          {stats.started_jobs}",
        f"  failed jobs           {stats.failed_jobs}",
        "events stored",
    ]
    for kind, count in stats.events_by_type.items():
        lines.append(f"  {kind:<21} {count}")
    lines.append(f"  {'total':<21} {stats.events_total}")
    for kind, by_rule in stats.machine.items():
        lines.append(f"{kind} by who (machine rule, human, unknown)")
        lines.extend(f"  {verdict:<21} {count}" for verdict, count in sorted(by_rule.items()))
    lines.append(f"rejected calls          {stats.rejected}")
    print("\n".join(lines))
    return 0


def register(sub: Any) -> None:
    stats = sub.add_parser(
        "stats",
        help="show the queue and the stored events",
        description=("Queue length, age of the oldest queued job, started and failed jobs, events per type."),
    )
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument(
        "--mailing",
        type=int,
        metavar="ID",
        help="the mailing_stats row of one mailing: sent, delivered, opens, clicks, rates ...",
    )
    stats.add_argument(
        "--watch",
        action="store_true",
        help="live view: queue depth, lag, intake and drain rates with history, failures (Ctrl-C ends)",
    )
    stats.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between --watch samples (default 2)"
    )
    stats.add_argument(
        "--metrics-url",
        action="append",
        metavar="URL",
        help="a receiver's /metrics, for the intake rate in --watch; repeat for each process",
    )
    stats.add_argument("--frames", type=int, help=argparse.SUPPRESS)  # tests: stop after N frames
    stats.set_defaults(handler=cmd_stats)


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    if args.mailing is not None:
        return print_mailing(settings, args.mailing, as_json=args.json)
    settings.require("redis_url", "database_url")
    if args.watch:
        from ingest.cli.watch import run_watch

        if not args.interval > 0:
            return fail("stats: --interval must be a positive number of seconds", EXIT_USAGE)
        return run_watch(settings, interval=args.interval, metrics_urls=args.metrics_url or (), frames=args.frames)
    return print_stats(settings, as_json=args.json)
