"""Backfill from Copernica's logfiles: one file's records into `events`, with its progress kept.

A logfile (downloaded through the REST API, or by hand) is read record by record
(`workers.events.logfiles.read_records`, streaming), each record becomes an Event
(`workers.events.model.from_logfile`) or, when it cannot, a reject kept with the file name and line,
and they are stored in batches through `workers.storage.store.store`: the same idempotent path and
keys as the webhooks, so an event seen both ways is one row.

Resumability: every file has a row in `backfill_files`. Each batch is stored in the same
transaction that adds its counts to that row, and the row is marked complete only after the
last batch committed. A run killed at any point has stored whole batches and nothing else; a
rerun reads the file again and the already stored events are no-ops (`ON CONFLICT DO NOTHING`).
Rejected records are keyed on the file's first start time, so a rerun does not double them.

Before a file is stored its first records are checked against the webhooks already stored
(`workers.backfill.zonecheck`): logfile times in another zone than COPERNICA_TIMEZONE would key every
event apart from its webhook. A run's shared pieces (connection, zone, progress, ...) travel
in one `Run`. The REST download, the list of files and `--follow` are in `workers.backfill.runs`;
files downloaded by hand (`ingest import`) in `workers.backfill.imports`.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import psycopg

from common.envelope import Envelope
from workers.backfill import zonecheck
from workers.events.logfiles import LOG_COLUMNS, read_records
from workers.events.model import Event, from_logfile, is_event_log
from workers.events.parsing import Unparseable
from workers.storage import store
from workers.storage.queries import one

if TYPE_CHECKING:
    from workers.backfill.api import CopernicaClient

log = logging.getLogger("workers.backfill.files")

BATCH_SIZE = 5000
FORMATS = ("json", "csv", "xml")
CONTENT_TYPES = {"json": "application/json", "csv": "text/csv", "xml": "application/xml"}
_DATE_IN_NAME = re.compile(r"\.(\d{4}-\d{2}-\d{2})(?=\.|$)")


class BackfillError(Exception):
    """Bad input to a backfill command (unknown type, missing file, ...); one-line message."""


class Stopped(Exception):
    """The run was asked to stop (SIGINT/SIGTERM); what was stored so far is committed."""


def default_types() -> list[str]:
    """Every log that holds events: Marketing Suite (`cdm-*`) and Publisher (`pom-*`); not
    `feedback-loop-errors`. What a run without `--types` takes of the files a day lists."""
    return [name for name in LOG_COLUMNS if name.startswith(("cdm-", "pom-")) and is_event_log(name)]


def check_types(types: Sequence[str]) -> list[str]:
    """Validate log type names; raise BackfillError naming the first unknown one."""
    checked: list[str] = []
    for raw in types:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in LOG_COLUMNS:
            raise BackfillError(f"unknown log type {raw!r} (known: {', '.join(LOG_COLUMNS)})")
        if not is_event_log(name):
            raise BackfillError(f"{name} holds no events and cannot be backfilled")
        if name not in checked:
            checked.append(name)
    if not checked:
        raise BackfillError("no log types given")
    return checked


def date_from_name(name: str) -> date | None:
    match = _DATE_IN_NAME.search(Path(name).name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match[1])
    except ValueError:
        return None


# --- progress ---------------------------------------------------------------------------------


class Reporter(Protocol):
    """Progress callbacks of a run (the CLI draws a bar; `Silent` reports nothing)."""

    def add_files(self, count: int) -> None:
        """`count` more files are planned."""

    def file_started(self, name: str) -> None:
        """A file is being downloaded or read."""

    def records(self, count: int) -> None:
        """`count` more records were stored (or rejected)."""

    def file_finished(self, result: FileResult) -> None:
        """A file is done, skipped or failed."""


class Silent:
    """The Reporter of a run nobody watches."""

    def add_files(self, count: int) -> None:
        pass

    def file_started(self, name: str) -> None:
        pass

    def records(self, count: int) -> None:
        pass

    def file_finished(self, result: FileResult) -> None:
        pass


@dataclass(slots=True)
class Run:
    """What the steps of one run (backfill, import, --follow, reconcile) share."""

    conn: psycopg.Connection
    tz: str  # the zone logfile times are read in: COPERNICA_TIMEZONE or --timezone
    stop: threading.Event = field(default_factory=threading.Event)
    reporter: Reporter = field(default_factory=Silent)
    batch_size: int = BATCH_SIZE
    client: CopernicaClient | None = None  # REST runs
    fmt: str = "json"  # download format of REST runs
    tmp_dir: str | None = None  # where downloads are spooled
    zone_checked: set[str] = field(default_factory=set)  # files already checked (`--follow`: once each)

    def api(self) -> CopernicaClient:
        if self.client is None:
            raise RuntimeError("this run has no REST client")
        return self.client


@dataclass(slots=True)
class FileResult:
    name: str
    log_type: str
    log_date: date | None
    status: str = "pending"  # done | partial (today's file) | skipped | failed | stopped
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None
    cursor: int | None = None  # newest record time seen (unix), for --follow

    @property
    def events(self) -> int:
        return self.stored + self.duplicates


@dataclass(slots=True)
class RunSummary:
    files: list[FileResult] = field(default_factory=list)
    retries: int = 0
    stopped: bool = False

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def total(self, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.files)


# --- the backfill_files table -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    started_at: datetime
    completed_at: datetime | None
    follow_cursor: int | None


def find_file(conn: psycopg.Connection, origin: str, name: str) -> FileRow | None:
    with conn.transaction():
        row = conn.execute(
            "SELECT id, started_at, completed_at, follow_cursor FROM backfill_files WHERE origin = %s AND name = %s",
            (origin, name),
        ).fetchone()
    return FileRow(*row) if row else None


def begin_file(
    conn: psycopg.Connection,
    origin: str,
    name: str,
    log_type: str,
    fmt: str,
    log_date: date | None,
    *,
    reset: bool = True,
) -> FileRow:
    """Create or restart a file's progress row (committed before any batch is stored).
    `reset` zeroes the counts (a new attempt reads the file from its start)."""
    counts = ", records = 0, stored = 0, duplicates = 0, rejected = 0" if reset else ""
    with conn.transaction():
        row = one(
            conn,
            "INSERT INTO backfill_files (origin, name, log_type, format, log_date, attempts)"
            " VALUES (%s, %s, %s, %s, %s, 1)"
            " ON CONFLICT (origin, name) DO UPDATE SET attempts = backfill_files.attempts + 1,"
            " format = EXCLUDED.format, log_type = EXCLUDED.log_type, updated_at = now(),"
            f" completed_at = NULL, last_error = NULL{counts}"
            " RETURNING id, started_at, completed_at, follow_cursor",
            (origin, name, log_type, fmt, log_date),
        )
    return FileRow(*row)


def finish_file(conn: psycopg.Connection, file_id: int, *, complete: bool) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE backfill_files SET completed_at = CASE WHEN %s THEN now() END, last_error = NULL,"
            " updated_at = now() WHERE id = %s",
            (complete, file_id),
        )


def fail_file(conn: psycopg.Connection, file_id: int, error: str) -> None:
    """Keep why a file failed. Runs after a rollback, so the connection must be usable."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        with conn.transaction():
            conn.execute(
                "UPDATE backfill_files SET last_error = %s, updated_at = now() WHERE id = %s",
                (error[:2000], file_id),
            )
    except psycopg.Error:
        log.warning("could not record the failure of backfill file %d", file_id, exc_info=True)


# --- one file's records into the store --------------------------------------------------------


class _Origins(Sequence[Envelope]):
    """The raw record each event came from, made into an Envelope only when the store needs it
    (an event PostgreSQL refuses is kept as a reject with its record)."""

    def __init__(self, raws: list[tuple[int, bytes]], make: Callable[[int, bytes], Envelope]) -> None:
        self._raws = raws
        self._make = make

    def __len__(self) -> int:
        return len(self._raws)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._make(*item) for item in self._raws[index]]
        return self._make(*self._raws[index])


@dataclass(slots=True)
class Source:
    """One logfile to read: where its progress is kept and how its rejects are labelled."""

    origin: str  # 'api' or 'import'
    name: str  # progress key: logfile name, or the imported file's absolute path
    label: str  # file name shown in rejects (`label:line`) and in the summary
    log_type: str
    fmt: str
    log_date: date | None = None
    with_lines: bool = True  # False for partial (`?from=`) downloads: their line numbers mean nothing


@dataclass(slots=True)
class _Batch:
    events: list[Event] = field(default_factory=list)
    raws: list[tuple[int, bytes]] = field(default_factory=list)  # (line, raw record) of each event
    rejects: list[store.Rejected] = field(default_factory=list)
    newest: int | None = None  # unix time of the newest event

    def __len__(self) -> int:
        return len(self.events) + len(self.rejects)


class _Writer:
    """Stores batches on a thread of its own, so the next batch is parsed while PostgreSQL
    works on this one (most of a batch's store time is the server's). At most one batch waits
    in the queue: memory stays bounded. The connection belongs to this thread until `close`."""

    def __init__(self, flush: Callable[[_Batch], None]) -> None:
        self._flush = flush
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="backfill-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None or self._error is not None:
                if batch is None:
                    return
                continue
            try:
                self._flush(batch)
            except BaseException as exc:  # handed to the reading thread
                self._error = exc

    def put(self, batch: _Batch) -> None:
        self._check()
        self._queue.put(batch)

    def close(self) -> None:
        """Wait until every queued batch is committed; raise what the writer raised."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def check_zone(run: Run, stream: BinaryIO, source: Source) -> None:
    """Raise `zonecheck.ZoneMismatch` when the file's times are in another zone than `run.tz`
    (see `workers.backfill.zonecheck`). Once per file and run; the stream is rewound."""
    if source.name in run.zone_checked:
        return
    run.zone_checked.add(source.name)
    verdict = zonecheck.check(run.conn, stream, source.log_type, source.fmt, run.tz)
    stream.seek(0)
    if verdict.mismatch:
        raise zonecheck.ZoneMismatch(source.label, run.tz, verdict)


def store_records(
    run: Run,
    stream: BinaryIO,
    source: Source,
    file_row: FileRow,
    result: FileResult,
    *,
    after: int | None = None,
) -> FileResult:
    """Read every record of `stream` and store it in batches; counts go to `result` and, in the
    same transaction as each batch, to the file's progress row. Raises `Stopped` once the
    current batch is committed when `run.stop` is set. Returns only after every batch committed.

    `after` (unix seconds) skips the head of the file up to the first event later than that:
    what `?from=` does on the server, for a whole file downloaded again (CSV, `--follow`)."""
    tz, stop = run.tz, run.stop
    received = file_row.started_at
    received_ts = received.timestamp()
    content_type = CONTENT_TYPES.get(source.fmt, "application/octet-stream")
    method = "GET" if source.origin == "api" else "FILE"

    def envelope(line: int, raw: bytes) -> Envelope:
        target = f"{source.label}:{line}" if source.with_lines else source.label
        return Envelope(body=raw, content_type=content_type, received_at=received_ts, method=method, target=target)

    writer = _Writer(lambda batch: _commit(run, file_row, result, batch, _Origins(batch.raws, envelope)))
    batch = _Batch()
    records = _records(stream, source, tz, received, after)
    try:
        for record in records:
            if record.fields is None:
                batch.rejects.append(
                    store.Rejected(envelope(record.line, record.raw), record.error or "unreadable record", "logfile")
                )
            else:
                try:
                    event = from_logfile(record.fields, source.log_type, tz, received)
                except Unparseable as exc:
                    batch.rejects.append(store.Rejected(envelope(record.line, record.raw), str(exc), "logfile"))
                except Exception as exc:  # a model bug must not lose the record
                    log.exception("unexpected error reading %s line %d", source.label, record.line)
                    batch.rejects.append(
                        store.Rejected(
                            envelope(record.line, record.raw), f"parser error: {type(exc).__name__}: {exc}", "logfile"
                        )
                    )
                else:
                    batch.events.append(event)
                    batch.raws.append((record.line, record.raw))
                    seconds = int(event.occurred_at.timestamp())
                    batch.newest = seconds if batch.newest is None else max(batch.newest, seconds)
            if len(batch) >= run.batch_size:
                writer.put(batch)
                batch = _Batch()
                if stop.is_set():
                    raise Stopped()
        if len(batch):
            writer.put(batch)
    finally:
        writer.close()  # what was handed over is committed (or its error raised) before we return
    return result


def _commit(run: Run, file_row: FileRow, result: FileResult, batch: _Batch, origins: _Origins) -> None:
    """Store a batch and add its counts to the file's progress row, in one transaction; then to
    `result` and the reporter."""
    conn = run.conn
    with conn.transaction():
        part = store.store(conn, batch.events, batch.rejects, origins)
        conn.execute(
            "UPDATE backfill_files SET records = records + %s, stored = stored + %s,"
            " duplicates = duplicates + %s, rejected = rejected + %s, updated_at = now(),"
            " follow_cursor = GREATEST(follow_cursor, %s) WHERE id = %s",
            (len(batch), part.stored, part.duplicates, part.rejected, batch.newest, file_row.id),
        )
    result.records += len(batch)
    result.stored += part.stored
    result.duplicates += part.duplicates
    result.rejected += part.rejected
    if batch.newest is not None:
        result.cursor = max(result.cursor or 0, batch.newest)
    run.reporter.records(len(batch))


def _records(stream: BinaryIO, source: Source, tz: str, received: datetime, after: int | None) -> Iterator:
    """The file's records; with `after`, from the first event later than that on (`_after`)."""
    records = read_records(stream, source.log_type, source.fmt)
    return records if after is None else _after(records, source.log_type, tz, received, after)


def _after(records: Iterator, log_type: str, tz: str, received: datetime, after: int) -> Iterator:
    """The records from the first event later than `after` on (a logfile is written in time
    order; what comes after that point is all kept, late records included)."""
    for record in records:
        if record.fields is not None:
            try:
                occurred = from_logfile(record.fields, log_type, tz, received).occurred_at
            except Exception:  # not an event: skipped like the rest of the head
                continue
            if occurred.timestamp() > after:
                yield record
                break
    yield from records


# --- import of files downloaded by hand ---------------------------------------------------------
