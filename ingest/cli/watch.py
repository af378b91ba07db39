"""`ingest stats --watch`: a live terminal view of the pipeline (rich).

Every interval it samples, with cheap reads only:
- Redis (RQ): queue depth, age of the oldest queued job (the lag), started and failed jobs;
- PostgreSQL: the rows written into `events` (`reports.events_inserted`: PostgreSQL's own
  statistics, one read), and every `TYPES_EVERY` seconds the events
  per type that occurred in the last hour (an index range on `occurred_at`) and the calls
  rejected in the last hour (an index range on `received_at`);
- optionally the receivers' `/metrics` (`--metrics-url`, repeatable: one per receiver process).

Rates are differences between two samples:
- drain = growth of the rows written into `events` per second, i.e. rows stored per second.
  Duplicates PostgreSQL skips do not count; the rows of a direct COPY rolled back because it
  met a stored event do (see `reports.events_inserted`), so under re-deliveries or backfill
  overlap the drain can read somewhat high;
- intake = growth of `copernica_ingest_events_accepted_total`, summed over the receivers given
  with `--metrics-url`. The receivers keep no shared store, and a queued job's calls cannot
  be counted without reading it, so without `--metrics-url` intake is not shown; the queue
  growth (jobs per second; positive means intake outpaces the drain) is shown instead.

`render_frame` turns collected numbers into the picture; it does no I/O, so tests check what a
frame shows for given numbers.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from common.settings import Settings
from workers.storage.queries import scalar
from workers.storage.reports import events_inserted

if TYPE_CHECKING:
    import redis

log = logging.getLogger("ingest.cli.watch")

HISTORY = 60  # samples kept for the sparklines
TYPES_EVERY = 15.0  # seconds between the per-type (last hour) queries
SPARKS = "▁▂▃▄▅▆▇█"
ACCEPTED = "copernica_ingest_events_accepted_total"
REQUESTS = "copernica_ingest_requests_total"


@dataclass
class Sample:
    """What one round of reads found; None where a source did not answer."""

    at: float  # time.monotonic() of the sample
    queued_jobs: int | None = None
    oldest_age_s: float | None = None
    started_jobs: int | None = None
    failed_jobs: int | None = None
    events_inserted: int | None = None  # rows written into `events` (PostgreSQL's statistics)
    accepted_total: float | None = None  # receivers' events accepted, summed
    unavailable_total: float | None = None  # receivers' 503 answers, summed
    refused_total: dict[str, float] | None = None  # receivers' refused calls by reason, summed
    last_hour: dict[str, int] | None = None
    rejected_last_hour: int | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class Frame:
    """One picture: the latest sample, rates against the previous one, and the history."""

    queue: str
    interval: float
    sample: Sample
    intake_per_s: float | None = None
    drain_per_s: float | None = None
    growth_jobs_per_s: float | None = None
    unavailable_per_s: float | None = None
    metrics_urls: int = 0
    depth_history: list[float | None] = field(default_factory=list)
    intake_history: list[float | None] = field(default_factory=list)
    drain_history: list[float | None] = field(default_factory=list)
    clock: datetime | None = None


def rate(new: float | None, old: float | None, seconds: float) -> float | None:
    """Growth per second; None when a side is unknown or the counter went back (a restart)."""
    if new is None or old is None or seconds <= 0 or new < old:
        return None
    return (new - old) / seconds


def signed_rate(new: float | None, old: float | None, seconds: float) -> float | None:
    if new is None or old is None or seconds <= 0:
        return None
    return (new - old) / seconds


def sparkline(values: Sequence[float | None], width: int = 40) -> str:
    """The last `width` values as block characters, scaled to the largest; blank when unknown."""
    shown = list(values)[-width:]
    known = [v for v in shown if v is not None]
    top = max(known, default=0.0)
    out = []
    for value in shown:
        if value is None:
            out.append(" ")
        elif top <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int(value / top * (len(SPARKS) - 1) + 0.5))])
    return "".join(out)


def _number(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def render_frame(frame: Frame) -> Group:
    """The picture for one frame (no I/O)."""
    s = frame.sample
    clock = (frame.clock or datetime.now(UTC)).strftime("%H:%M:%S")
    title = Text(f"copernica-ingest · queue {frame.queue!r} · every {frame.interval:g} s · {clock} UTC", style="bold")
    table = Table.grid(padding=(0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_row("queue depth", _number(s.queued_jobs, "jobs"), sparkline(frame.depth_history))
    table.add_row("lag", _number(s.oldest_age_s, "s", 1), "age of the oldest queued job")
    if frame.metrics_urls:
        table.add_row("intake", _number(frame.intake_per_s, "events/s", 1), sparkline(frame.intake_history))
    else:
        table.add_row("intake", "-", "give --metrics-url (each receiver's /metrics) to see it")
    table.add_row("drain", _number(frame.drain_per_s, "events/s", 1), sparkline(frame.drain_history))
    growth = frame.growth_jobs_per_s
    table.add_row(
        "queue growth", "-" if growth is None else f"{growth:+,.1f} jobs/s", "positive: intake outpaces the drain"
    )
    if frame.metrics_urls:
        table.add_row("503 answers", _number(frame.unavailable_per_s, "/s", 1), "calls Redis did not take")
    table.add_row("started jobs", _number(s.started_jobs), "")
    table.add_row("failed jobs", _number(s.failed_jobs), "ingest requeue-failed --all" if s.failed_jobs else "")
    table.add_row(
        "rejected (1 h)", _number(s.rejected_last_hour, "calls"), "ingest rejected list" if s.rejected_last_hour else ""
    )
    parts: list = [title, table, Text("events in the last hour (by occurred_at)", style="bold")]
    types = Table(box=None, show_header=False, padding=(0, 2))
    types.add_column(style="cyan", no_wrap=True)
    types.add_column(justify="right", no_wrap=True)
    if s.last_hour is None:
        types.add_row("-", "")
    else:
        for kind, count in sorted(s.last_hour.items(), key=lambda item: (-item[1], item[0])):
            types.add_row(kind, f"{count:,}")
        types.add_row("total", f"{sum(s.last_hour.values()):,}", style="bold")
    parts.append(types)
    for error in s.errors:
        parts.append(Text(f"! {error}", style="red"))
    return Group(*parts)


REFUSED = "copernica_ingest_refused_total"


def read_receivers(urls: Iterable[str], timeout: float = 2.0) -> tuple[float, float, dict[str, float]]:
    """Events accepted, 503 answers and refused calls by reason, summed over the receivers' /metrics."""
    accepted = unavailable = 0.0
    refused: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # the operator's URL (bandit S310)
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == ACCEPTED:
                    accepted += sample.value
                elif sample.name == REQUESTS and sample.labels.get("status") == "503":
                    unavailable += sample.value
                elif sample.name == REFUSED:
                    reason = sample.labels.get("reason", "")
                    refused[reason] = refused.get(reason, 0.0) + sample.value
    return accepted, unavailable, refused


class Watcher:
    """Takes samples (one Redis and one PostgreSQL connection, kept) and builds frames."""

    def __init__(
        self, settings: Settings, *, metrics_urls: Sequence[str] = (), interval: float = 2.0, history: int = HISTORY
    ) -> None:
        settings.require("redis_url", "database_url")
        self.settings = settings
        self.metrics_urls = list(metrics_urls)
        self.interval = interval
        self._redis: redis.Redis | None = None
        self._pg: psycopg.Connection | None = None
        self._previous: Sample | None = None
        self._types_at = -TYPES_EVERY
        self._last_hour: dict[str, int] | None = None
        self._rejected: int | None = None
        self.depth: deque[float | None] = deque(maxlen=history)
        self.intake: deque[float | None] = deque(maxlen=history)
        self.drain: deque[float | None] = deque(maxlen=history)

    def _read_redis(self, sample: Sample) -> None:
        from rq import Queue
        from rq.registry import FailedJobRegistry, StartedJobRegistry

        from ingest.queueing import redis_client

        if self._redis is None:
            self._redis = redis_client(self.settings, timeout=2.0)
        queue = Queue(self.settings.queue, connection=self._redis)
        sample.queued_jobs = queue.count
        head = queue.get_jobs(0, 0)
        sample.oldest_age_s = 0.0
        if head and head[0].enqueued_at is not None:
            enqueued = head[0].enqueued_at
            enqueued = enqueued if enqueued.tzinfo else enqueued.replace(tzinfo=UTC)
            sample.oldest_age_s = max(0.0, (datetime.now(UTC) - enqueued).total_seconds())
        sample.started_jobs = StartedJobRegistry(queue=queue).get_job_count(cleanup=False)
        sample.failed_jobs = FailedJobRegistry(queue=queue).get_job_count(cleanup=False)

    def _read_postgres(self, sample: Sample) -> None:
        if self._pg is None or self._pg.closed or self._pg.broken:
            self._pg = psycopg.connect(
                self.settings.required("database_url"),
                autocommit=True,
                connect_timeout=5,
                application_name="copernica-ingest watch",
                options="-c statement_timeout=5000",
            )
        sample.events_inserted = events_inserted(self._pg)
        if sample.at - self._types_at >= TYPES_EVERY:
            rows = self._pg.execute(
                "SELECT event_type, count(*) FROM events WHERE occurred_at >= now() - interval '1 hour' "
                "GROUP BY event_type"
            ).fetchall()
            self._last_hour = {kind: count for kind, count in rows}
            self._rejected = scalar(
                self._pg, "SELECT count(*) FROM rejected_events WHERE received_at >= now() - interval '1 hour'"
            )
            self._types_at = sample.at
        sample.last_hour = self._last_hour
        sample.rejected_last_hour = self._rejected

    def take(self) -> Sample:
        """One round of reads; a source that fails leaves its fields None and an error line."""
        sample = Sample(at=time.monotonic())
        for name, read in (
            ("redis", self._read_redis),
            ("postgresql", self._read_postgres),
            ("receivers", self._read_receivers),
        ):
            try:
                read(sample)
            except Exception as exc:  # shown in the frame; the next round tries again
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                sample.errors.append(f"{name}: {first}")
                log.debug("%s read failed", name, exc_info=True)
                if name == "redis":
                    self._close_redis()
                elif name == "postgresql" and self._pg is not None:
                    self._pg.close()
        return sample

    def _read_receivers(self, sample: Sample) -> None:
        if self.metrics_urls:
            sample.accepted_total, sample.unavailable_total, sample.refused_total = read_receivers(self.metrics_urls)

    def frame(self, sample: Sample) -> Frame:
        """The frame for `sample`, with rates against the previous sample; keeps the history."""
        previous, self._previous = self._previous, sample
        frame = Frame(
            queue=self.settings.queue, interval=self.interval, sample=sample, metrics_urls=len(self.metrics_urls)
        )
        if previous is not None:
            seconds = sample.at - previous.at
            frame.intake_per_s = rate(sample.accepted_total, previous.accepted_total, seconds)
            frame.drain_per_s = rate(sample.events_inserted, previous.events_inserted, seconds)
            frame.growth_jobs_per_s = signed_rate(sample.queued_jobs, previous.queued_jobs, seconds)
            frame.unavailable_per_s = rate(sample.unavailable_total, previous.unavailable_total, seconds)
        self.depth.append(None if sample.queued_jobs is None else float(sample.queued_jobs))
        self.intake.append(frame.intake_per_s)
        self.drain.append(frame.drain_per_s)
        frame.depth_history, frame.intake_history, frame.drain_history = (
            list(self.depth),
            list(self.intake),
            list(self.drain),
        )
        return frame

    def next_frame(self) -> Frame:
        return self.frame(self.take())

    def _close_redis(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def close(self) -> None:
        self._close_redis()
        if self._pg is not None:
            self._pg.close()


def run_watch(
    settings: Settings,
    *,
    interval: float = 2.0,
    metrics_urls: Sequence[str] = (),
    frames: int | None = None,
    console: Console | None = None,
) -> int:
    """Redraw every `interval` seconds until Ctrl-C (exit 0), or after `frames` frames."""
    if interval <= 0:
        raise ValueError("--interval must be a positive number of seconds")
    watcher = Watcher(settings, metrics_urls=metrics_urls, interval=interval)
    shown = 0
    try:
        with Live(render_frame(watcher.next_frame()), console=console, auto_refresh=False) as live:
            shown = 1
            while frames is None or shown < frames:
                time.sleep(interval)
                live.update(render_frame(watcher.next_frame()), refresh=True)
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()
    return 0
