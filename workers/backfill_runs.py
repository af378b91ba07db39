"""Backfill runs against the REST API: list, download, store; `--follow`; reconcile.

Each logfile is streamed to a temporary file first and read from there: a connection dropped
midway is retried from the start by the client (`workers.copernica_api`) before a single record
is stored, so a download is never half-stored because the network hiccuped, and memory stays
bounded whatever the file size. A file that still fails is reported failed; the run goes on.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg

from workers.backfill import (
    BATCH_SIZE,
    FileResult,
    Reporter,
    RunSummary,
    Source,
    Stopped,
    begin_file,
    date_from_name,
    fail_file,
    find_file,
    finish_file,
    store_records,
)
from workers.copernica_api import ApiError, AuthError, CopernicaClient, Interrupted
from workers.logfiles import log_type_from_name

log = logging.getLogger("workers.backfill")

# `--follow` asks for records since a little before the newest one it has seen: records of the
# same second (or written slightly out of order) are not missed, and repeats are no-ops.
FOLLOW_OVERLAP = 120


def today_in(tz: str) -> date:
    return datetime.now(zoneinfo.ZoneInfo(tz)).date()


def date_range(since: date, until: date) -> list[date]:
    return [since + timedelta(days=n) for n in range((until - since).days + 1)]


@dataclass(frozen=True, slots=True)
class RemoteFile:
    name: str
    log_type: str
    log_date: date | None


def list_files(client: CopernicaClient, days: Sequence[date], types: Sequence[str],
               summary: RunSummary) -> list[RemoteFile]:
    """The logfiles of each day and type. A listing that fails is a failed entry in the summary
    (the run goes on); names of another type than asked for are ignored."""
    found: list[RemoteFile] = []
    seen: set[str] = set()
    for day in days:
        for log_type in types:
            try:
                names = client.list_logfiles(day.isoformat(), log_type)
            except AuthError:
                raise
            except ApiError as exc:
                log.error("listing %s of %s failed: %s", log_type, day, exc)
                summary.files.append(FileResult(f"{log_type} {day} (list)", log_type, day, "failed", error=str(exc)))
                continue
            for name in names:
                if name in seen or log_type_from_name(name) != log_type:
                    continue
                seen.add(name)
                found.append(RemoteFile(name, log_type, date_from_name(name) or day))
    return found


def fetch_file(
    conn: psycopg.Connection,
    client: CopernicaClient,
    remote: RemoteFile,
    fmt: str,
    tz: str,
    *,
    force: bool = False,
    since: int | None = None,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event,
    reporter: Reporter,
    tmp_dir: str | None = None,
) -> FileResult:
    """Download one logfile and store it. Skipped when already complete (unless `force`).
    Complete only when the day is over in Copernica's zone (today's file still grows).
    Raises AuthError (nothing else can work) and Stopped; other failures are in the result."""
    result = FileResult(remote.name, remote.log_type, remote.log_date)
    follow = since is not None
    if not force and not follow:
        row = find_file(conn, "api", remote.name)
        if row is not None and row.completed_at is not None:
            result.status = "skipped"
            reporter.file_finished(result)
            return result
    reporter.file_started(remote.name)
    row = begin_file(conn, "api", remote.name, remote.log_type, fmt, remote.log_date, reset=not follow)
    source = Source("api", remote.name, remote.name, remote.log_type, fmt, remote.log_date, with_lines=not follow)
    try:
        with tempfile.TemporaryFile(prefix="copernica-", dir=tmp_dir) as tmp:
            client.download(remote.name, fmt, tmp, since=since)
            tmp.seek(0)
            store_records(conn, tmp, source, row, tz, result, batch_size=batch_size, stop=stop, reporter=reporter)
    except (Stopped, Interrupted):
        result.status = "stopped"
        fail_file(conn, row.id, "interrupted")
        reporter.file_finished(result)
        raise Stopped() from None
    except AuthError as exc:
        result.status, result.error = "failed", str(exc)
        fail_file(conn, row.id, str(exc))
        reporter.file_finished(result)
        raise
    except ApiError as exc:
        result.status, result.error = "failed", str(exc)
        log.error("%s failed: %s", remote.name, exc)
        fail_file(conn, row.id, str(exc))
    except OSError as exc:  # the temporary file: disk full, ...
        result.status, result.error = "failed", f"local file: {exc.strerror or exc}"
        log.error("%s failed: %s", remote.name, result.error)
        fail_file(conn, row.id, result.error)
    else:
        complete = remote.log_date is not None and remote.log_date < today_in(tz)
        finish_file(conn, row.id, complete=complete)
        result.status = "done" if complete or follow else "partial"
        if result.rejected:
            log.warning("%s: %d records could not be read (kept in rejected_events)", remote.name, result.rejected)
    reporter.file_finished(result)
    return result


def backfill(
    conn: psycopg.Connection,
    client: CopernicaClient,
    days: Sequence[date],
    types: Sequence[str],
    fmt: str,
    tz: str,
    *,
    force: bool = False,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event,
    reporter: Reporter | None = None,
) -> RunSummary:
    """List and store every logfile of `days` x `types`. Completed files are skipped unless `force`."""
    reporter = reporter or Reporter()
    summary = RunSummary()
    try:
        remotes = list_files(client, days, types, summary)
        reporter.add_files(len(remotes))
        for remote in remotes:
            summary.files.append(fetch_file(conn, client, remote, fmt, tz, force=force, batch_size=batch_size,
                                            stop=stop, reporter=reporter))
    except (Stopped, Interrupted):
        summary.stopped = True
    summary.retries = client.retried
    return summary


def follow(
    conn: psycopg.Connection,
    client: CopernicaClient,
    types: Sequence[str],
    fmt: str,
    tz: str,
    *,
    interval: float,
    max_polls: int | None = None,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event,
    reporter: Reporter | None = None,
) -> RunSummary:
    """Poll today's logfiles every `interval` seconds and store the records not seen yet,
    asking only for those after the newest time seen (`?from=`, kept in `follow_cursor`).
    Around midnight yesterday's files are polled once more for their last records. Runs until
    `stop` is set (or `max_polls`, for tests). Failures of one poll are logged, the next retries."""
    reporter = reporter or Reporter()
    totals: dict[str, FileResult] = {}
    summary = RunSummary()
    polls = 0
    previous_day: date | None = None
    while not stop.is_set():
        today = today_in(tz)
        days = [today] if previous_day in (None, today) else [previous_day, today]
        previous_day = today
        poll = RunSummary()
        try:
            remotes = list_files(client, days, types, poll)
            for remote in remotes:
                row = find_file(conn, "api", remote.name)
                cursor = row.follow_cursor if row is not None else None
                since = max(0, cursor - FOLLOW_OVERLAP) if cursor is not None else 0
                result = fetch_file(conn, client, remote, fmt, tz, since=since, batch_size=batch_size,
                                    stop=stop, reporter=reporter)
                poll.files.append(result)
        except (Stopped, Interrupted):
            break
        for result in poll.files:
            total = totals.setdefault(result.name, FileResult(result.name, result.log_type, result.log_date, "done"))
            total.records += result.records
            total.stored += result.stored
            total.duplicates += result.duplicates
            total.rejected += result.rejected
            if result.status == "failed":
                total.status, total.error = "failed", result.error
            elif total.status == "failed":
                total.status, total.error = "done", None  # a later poll got it
        new = sum(r.stored for r in poll.files)
        log.info("poll %d: %d files, %d new events", polls + 1, len(poll.files), new)
        polls += 1
        if max_polls is not None and polls >= max_polls:
            break
        if stop.wait(interval):
            break
    summary.files = list(totals.values())
    summary.retries = client.retried
    summary.stopped = stop.is_set()
    return summary


@dataclass(slots=True)
class TypeCount:
    log_type: str
    files: int = 0
    events: int = 0  # events the logfiles hold
    already: int = 0  # of those, already stored before (webhooks, earlier runs)
    added: int = 0  # stored now: they had been missing
    rejected: int = 0  # records that could not be read
    failed: int = 0  # files that could not be fetched


def reconcile(
    conn: psycopg.Connection,
    client: CopernicaClient,
    day: date,
    types: Sequence[str],
    fmt: str,
    tz: str,
    *,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event,
    reporter: Reporter | None = None,
) -> tuple[list[TypeCount], RunSummary]:
    """Read every logfile of `day` again (completed or not) and store what is missing; count per
    type what the logfiles hold, what was already stored, what was added."""
    summary = backfill(conn, client, [day], types, fmt, tz, force=True, batch_size=batch_size, stop=stop,
                       reporter=reporter)
    counts = {t: TypeCount(t) for t in types}
    for result in summary.files:
        count = counts.setdefault(result.log_type, TypeCount(result.log_type))
        count.files += 1
        count.events += result.events
        count.already += result.duplicates
        count.added += result.stored
        count.rejected += result.rejected
        count.failed += result.status == "failed"
    return list(counts.values()), summary
