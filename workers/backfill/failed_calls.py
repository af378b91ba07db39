"""Copernica's own log of the webhook calls that failed (`feedback-loop-errors`), for `ingest reconcile`.

Copernica documents no retries: a call this receiver did not take (503, a timeout, a refused
connection, ...) is gone, and the one trace of it is this logfile (`time, response, recipient,
header`: `response` the HTTP status or error, `recipient` the IP called). `failed_calls` reads a
day's files of it (listed with the day's other logfiles, downloaded through the run's client
like them) and counts the calls: how many, by response, the first and last, and in how many of
their minutes `events` now holds anything (run it after the logfile pass, which has stored what
the logfiles hold).

That last figure is an approximation, documented as such: a failed-call record carries no
message id, so a call is matched to `events` only by its minute (any stored event, webhook or
logfile, that occurred in that minute). A minute counts as stored when something of it is,
though the very event of the failed call may be missing; events that only webhooks bring
(profile changes) are never in a logfile. When the `header` column happens to hold the call's
body or headers, message ids are read from it (`id=...`, `"id": "..."`) and looked up too, as
extra figures; nothing relies on them (the column's content is undocumented).

The records are not events and are never stored in `events`. A record that cannot be read (or
has no usable `time`) is kept in `rejected_events` like any logfile record (target
`<file>:<line>`, keyed on the file's first start in `backfill_files`, so a rerun does not double
it). Times are read in the run's zone (`Run.tz`), as other logfile times; the zone check of
event logs (`workers.backfill.zonecheck`) cannot apply (nothing to compare with).
"""

from __future__ import annotations

import logging
import re
import tempfile
import zoneinfo
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from common.envelope import Envelope
from workers.backfill.api import ApiError, AuthError, Interrupted
from workers.backfill.files import (
    CONTENT_TYPES,
    FileResult,
    FileRow,
    Run,
    Stopped,
    begin_file,
    fail_file,
    finish_file,
)
from workers.events import fields as fv
from workers.events.logfiles import Record, log_type_from_name, read_records
from workers.storage import store
from workers.storage.minutes import minutes_with_events, stored_message_ids

log = logging.getLogger("workers.backfill.failed_calls")

LOG_TYPE = "feedback-loop-errors"
NO_RESPONSE = "(none)"  # the `by_response` key of a record with an empty `response`
MAX_MESSAGE_IDS = 100_000  # message ids read from `header` and looked up, at most
# A message id in a call's body or headers as the `header` column may hold them: `id=...`
# (form body), `"id": "..."` (JSON); not `X-Copernica-ID`, `Message-ID`, `keyId` (preceded by
# a letter or a dash).
_ID_IN_HEADER = re.compile(r"""(?<![\w-])id["']?\s*[=:]\s*["']?([A-Za-z0-9][A-Za-z0-9_.@-]{3,127})""")


@dataclass(slots=True)
class FailedCalls:
    """What Copernica logged of its failed calls to this receiver on one day (metric-ready:
    `copernica_ingest_copernica_failed_calls`). `first`/`last` are in the run's zone."""

    total: int = 0
    by_response: dict[str, int] = field(default_factory=dict)
    first: datetime | None = None
    last: datetime | None = None
    minutes: int = 0  # distinct minutes with failed calls
    minutes_with_events_stored: int = 0  # of those, minutes in which `events` holds any event
    files: list[str] = field(default_factory=list)  # the day's feedback-loop-errors files read
    rejected: int = 0  # records that could not be read (kept in rejected_events)
    with_message_id: int = 0  # calls whose `header` showed a message id (best effort)
    message_ids_stored: int = 0  # distinct such ids some stored event carries
    error: str | None = None  # a listing or download that failed (the counts are then partial)

    @property
    def logged(self) -> bool:
        """Whether the day lists any feedback-loop-errors file (none: no failed calls logged)."""
        return bool(self.files)

    @property
    def minutes_without_events(self) -> int:
        return self.minutes - self.minutes_with_events_stored

    def as_json(self) -> dict[str, Any]:
        """The `failed_calls` object of `ingest reconcile --json`."""
        return {
            "total": self.total,
            "by_response": dict(sorted(self.by_response.items())),
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "minutes": self.minutes,
            "minutes_with_events_stored": self.minutes_with_events_stored,
            "files": list(self.files),
            "rejected": self.rejected,
            "with_message_id": self.with_message_id,
            "message_ids_stored": self.message_ids_stored,
            "error": self.error,
        }


@dataclass(slots=True)
class _Tally:
    """The running counts of one day's records (bounded memory: at most 1440 minutes a day,
    at most MAX_MESSAGE_IDS ids)."""

    tz: str
    responses: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    minutes: set[datetime] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)
    with_message_id: int = 0

    def add(self, fields: dict[str, Any]) -> str | None:
        """Count one record; the reason it cannot be counted (then nothing is counted)."""
        occurred = fv.occurred_at(fields, self.tz)
        if occurred is None:
            return f"{LOG_TYPE} record has no usable time: {fields.get('time')!r}"[:300]
        self.responses[_response(fields.get("response"))] += 1
        self.first = occurred if self.first is None else min(self.first, occurred)
        self.last = occurred if self.last is None else max(self.last, occurred)
        self.minutes.add(occurred.astimezone(UTC).replace(second=0, microsecond=0))
        message_id = _message_id(fields.get("header"))
        if message_id is not None:
            self.with_message_id += 1
            if len(self.message_ids) < MAX_MESSAGE_IDS:
                self.message_ids.add(message_id)
        return None


def _response(value: Any) -> str:
    """`response` as a `by_response` key: `503`, `timeout`, ... (a JSON 503.0 is `503`)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return fv.text(value, 200) or NO_RESPONSE


def _message_id(header: Any) -> str | None:
    text = fv.text(header)
    if text is None:
        return None
    match = _ID_IN_HEADER.search(text)
    return match[1] if match else None


def failed_calls(run: Run, day: date) -> FailedCalls:
    """Read `day`'s feedback-loop-errors files and count Copernica's failed calls; look up which
    of their minutes `events` covers. A listing or download that fails is in `error` (the rest
    is still counted). Raises AuthError and Stopped."""
    result = FailedCalls()
    try:
        names = run.api().list_logfiles(day.isoformat(), LOG_TYPE)
    except AuthError:
        raise
    except Interrupted:
        raise Stopped() from None
    except ApiError as exc:
        result.error = f"listing {LOG_TYPE} of {day} failed: {exc}"
        log.error("%s", result.error)
        return result
    names = sorted({name for name in names if log_type_from_name(name) == LOG_TYPE})
    run.reporter.add_files(len(names))
    tally = _Tally(run.tz)
    for name in names:
        _read_file(run, name, day, tally, result)
    zone = zoneinfo.ZoneInfo(run.tz)
    result.total = sum(tally.responses.values())
    result.by_response = dict(tally.responses)
    result.first = tally.first.astimezone(zone) if tally.first else None
    result.last = tally.last.astimezone(zone) if tally.last else None
    result.minutes = len(tally.minutes)
    with run.conn.transaction():
        result.minutes_with_events_stored = len(minutes_with_events(run.conn, sorted(tally.minutes)))
        result.message_ids_stored = len(stored_message_ids(run.conn, sorted(tally.message_ids)))
    result.with_message_id = tally.with_message_id
    return result


def _read_file(run: Run, name: str, day: date, tally: _Tally, result: FailedCalls) -> None:
    """Download one file and count its records into `tally`; its unreadable records into
    `rejected_events`. Failures go to `result.error`; AuthError and Stopped are raised."""
    conn, reporter = run.conn, run.reporter
    progress = FileResult(name, LOG_TYPE, day)
    reporter.file_started(name)
    row = begin_file(conn, "api", name, LOG_TYPE, run.fmt, day)
    try:
        with tempfile.TemporaryFile(prefix="copernica-", dir=run.tmp_dir) as tmp:
            run.api().download(name, run.fmt, tmp)
            tmp.seek(0)
            progress.rejected = _count(run, read_records(tmp, LOG_TYPE, run.fmt), name, row, tally)
    except (Stopped, Interrupted):
        fail_file(conn, row.id, "interrupted")
        progress.status = "stopped"
        reporter.file_finished(progress)
        raise Stopped() from None
    except AuthError as exc:
        fail_file(conn, row.id, str(exc))
        raise
    except (ApiError, OSError) as exc:
        error = str(exc) if isinstance(exc, ApiError) else f"local file: {exc.strerror or exc}"
        log.error("%s failed: %s", name, error)
        fail_file(conn, row.id, error)
        result.error = f"{name}: {error}"
        progress.status, progress.error = "failed", error
    else:
        finish_file(conn, row.id, complete=day < datetime.now(zoneinfo.ZoneInfo(run.tz)).date())
        result.files.append(name)
        result.rejected += progress.rejected
        progress.status = "done"
        if progress.rejected:
            log.warning("%s: %d records could not be read (kept in rejected_events)", name, progress.rejected)
    reporter.file_finished(progress)


def _count(run: Run, records: Any, name: str, row: FileRow, tally: _Tally) -> int:
    """Count every record into `tally`; keep the unreadable ones, in batches of
    `run.batch_size`, each in one transaction with the file's progress row. Returns the rejects."""
    content_type = CONTENT_TYPES.get(run.fmt, "application/octet-stream")
    received = row.started_at.timestamp()
    rejects: list[store.Rejected] = []
    read = rejected = 0

    def reject(record: Record, reason: str) -> None:
        envelope = Envelope(
            body=record.raw,
            content_type=content_type,
            received_at=received,
            method="GET",
            target=f"{name}:{record.line}",
        )
        rejects.append(store.Rejected(envelope, reason, "logfile"))

    for record in records:
        read += 1
        reason = (record.error or "unreadable record") if record.fields is None else tally.add(record.fields)
        if reason is not None:
            reject(record, reason)
        if read >= run.batch_size:
            rejected += _flush(run, row, read, rejects)
            read, rejects = 0, []
            if run.stop.is_set():
                raise Stopped()
    return rejected + _flush(run, row, read, rejects)


def _flush(run: Run, row: FileRow, read: int, rejects: list[store.Rejected]) -> int:
    conn = run.conn
    with conn.transaction():
        kept = store.insert_rejects(conn, rejects)
        conn.execute(
            "UPDATE backfill_files SET records = records + %s, rejected = rejected + %s, updated_at = now()"
            " WHERE id = %s",
            (read, kept, row.id),
        )
    run.reporter.records(read)
    return kept
