"""Backfill runs against the REST API: list, download, store; `--follow`; reconcile.

Each logfile is streamed to a temporary file first and read from there: a connection dropped
midway is retried from the start by the client (`workers.backfill.api`) before a single record
is stored, so a download is never half-stored because the network hiccuped, and memory stays
bounded whatever the file size. A file that still fails is reported failed; the run goes on.
A file whose times are in another zone than the run's (`workers.backfill.zonecheck`) ends the run.

`?from=` is documented for JSON and XML downloads only: `--follow` with CSV downloads the whole
file each poll and skips, on this side, what it had already stored.
"""

from __future__ import annotations

import logging
import tempfile
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from workers.backfill.api import FROM_FORMATS, ApiError, AuthError, CopernicaClient, Interrupted
from workers.backfill.failed_calls import FailedCalls, failed_calls
from workers.backfill.files import (
    FileResult,
    Run,
    RunSummary,
    Source,
    Stopped,
    begin_file,
    check_zone,
    date_from_name,
    default_types,
    fail_file,
    find_file,
    finish_file,
    store_records,
)
from workers.backfill.zonecheck import ZoneMismatch
from workers.events.logfiles import log_type_from_name

log = logging.getLogger("workers.backfill.files")

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


def list_files(
    client: CopernicaClient, days: Sequence[date], types: Sequence[str] | None, summary: RunSummary
) -> list[RemoteFile]:
    """The logfiles of each day and type; `types` None: every file a day lists whose type holds
    events (`default_types`), in one listing per day. A listing that fails is a failed entry in
    the summary (the run goes on); names of another type than asked for are ignored."""
    found: list[RemoteFile] = []
    seen: set[str] = set()
    known = set(default_types())
    for day in days:
        for log_type in types if types is not None else [None]:
            try:
                names = client.list_logfiles(day.isoformat(), log_type)
            except AuthError:
                raise
            except ApiError as exc:
                what = log_type or "logfiles"
                log.error("listing %s of %s failed: %s", what, day, exc)
                summary.files.append(FileResult(f"{what} {day} (list)", log_type or "*", day, "failed", error=str(exc)))
                continue
            for name in names:
                kind = log_type_from_name(name)
                if log_type is None and kind is None:
                    log.info("%s: not a logfile type this version reads; skipped", name)
                if name in seen or kind not in known or (log_type is not None and kind != log_type):
                    continue
                seen.add(name)
                found.append(RemoteFile(name, kind, date_from_name(name) or day))
    return found


def fetch_file(run: Run, remote: RemoteFile, *, force: bool = False, since: int | None = None) -> FileResult:
    """Download one logfile and store it. Skipped when already complete (unless `force`).
    Complete only when the day is over in Copernica's zone (today's file still grows).
    `since` (`--follow`): only the records after that unix time, asked with `?from=` (JSON,
    XML) or skipped here (CSV). Raises AuthError (nothing else can work), ZoneMismatch (the
    file's failure recorded) and Stopped; other failures are in the result."""
    conn, reporter = run.conn, run.reporter
    result = FileResult(remote.name, remote.log_type, remote.log_date)
    follow = since is not None
    ranged = follow and run.fmt in FROM_FORMATS  # the server sends only the tail
    if not force and not follow:
        row = find_file(conn, "api", remote.name)
        if row is not None and row.completed_at is not None:
            result.status = "skipped"
            reporter.file_finished(result)
            return result
    reporter.file_started(remote.name)
    row = begin_file(conn, "api", remote.name, remote.log_type, run.fmt, remote.log_date, reset=not follow)
    source = Source("api", remote.name, remote.name, remote.log_type, run.fmt, remote.log_date, with_lines=not ranged)
    try:
        with tempfile.TemporaryFile(prefix="copernica-", dir=run.tmp_dir) as tmp:
            run.api().download(remote.name, run.fmt, tmp, since=since if ranged else None)
            tmp.seek(0)
            check_zone(run, tmp, source)
            store_records(run, tmp, source, row, result, after=since if follow and not ranged else None)
    except (Stopped, Interrupted):
        result.status = "stopped"
        fail_file(conn, row.id, "interrupted")
        reporter.file_finished(result)
        raise Stopped() from None
    except (AuthError, ZoneMismatch) as exc:
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
        complete = remote.log_date is not None and remote.log_date < today_in(run.tz)
        finish_file(conn, row.id, complete=complete)
        result.status = "done" if complete or follow else "partial"
        if result.rejected:
            log.warning("%s: %d records could not be read (kept in rejected_events)", remote.name, result.rejected)
    reporter.file_finished(result)
    return result


def backfill(run: Run, days: Sequence[date], types: Sequence[str] | None, *, force: bool = False) -> RunSummary:
    """List and store every logfile of `days` x `types` (None: every event log listed).
    Completed files are skipped unless `force`. Raises AuthError and ZoneMismatch."""
    client = run.api()
    summary = RunSummary()
    try:
        remotes = list_files(client, days, types, summary)
        run.reporter.add_files(len(remotes))
        for remote in remotes:
            summary.files.append(fetch_file(run, remote, force=force))
    except (Stopped, Interrupted):
        summary.stopped = True
    summary.retries = client.retried
    return summary


def follow(run: Run, types: Sequence[str] | None, *, interval: float, max_polls: int | None = None) -> RunSummary:
    """Poll today's logfiles every `interval` seconds and store the records not seen yet: those
    after the newest time seen (kept in `follow_cursor`), asked with `?from=` (JSON, XML) or
    picked from the whole file (CSV). Each file's zone is checked once, at its first download.
    Around midnight yesterday's files are polled once more for their last records. Runs until
    `stop` is set (or `max_polls`, for tests). Failures of one poll are logged, the next retries."""
    client, conn, stop, tz = run.api(), run.conn, run.stop, run.tz
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
                result = fetch_file(run, remote, since=since)
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


def reconcile(run: Run, day: date, types: Sequence[str] | None) -> tuple[list[TypeCount], RunSummary, FailedCalls]:
    """Read every logfile of `day` again (completed or not) and store what is missing; count per
    type what the logfiles hold, what was already stored, what was added. Then Copernica's log
    of its failed calls of that day (`workers.backfill.failed_calls`, whatever `types`), read
    after the events are stored so that it can tell which of their minutes are covered."""
    summary = backfill(run, [day], types, force=True)
    failed = FailedCalls()
    if not summary.stopped:
        try:
            failed = failed_calls(run, day)
        except Stopped:
            summary.stopped = True
    counts = {t: TypeCount(t) for t in types or ()}
    for result in summary.files:
        count = counts.setdefault(result.log_type, TypeCount(result.log_type))
        count.files += 1
        count.events += result.events
        count.already += result.duplicates
        count.added += result.stored
        count.rejected += result.rejected
        count.failed += result.status == "failed"
    return list(counts.values()), summary, failed
