"""The calls kept in `rejected_events`: list them, and replay them after a fix.

Replay re-reads each kept call with the code as it is now: a webhook call through
`parse_body` + `from_webhook` on its stored body, content type and headers; a logfile record
through `read_records` + `from_logfile` (the backfill keeps the raw record with the format as
content type and `<file name>:<line>` as target; an event the store refused without its
origin is kept as JSON fields with target `logfile:<log type>`). Calls that now become events
are stored through `workers.storage.store` and removed from `rejected_events` in the same
transaction; the others stay, with the new reason.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from common.envelope import Envelope, media_type
from workers.events.logfiles import log_type_from_name, read_records
from workers.events.model import Event, from_logfile, from_webhook
from workers.events.parsing import Unparseable, parse_body
from workers.storage import store
from workers.storage.queries import scalar

log = logging.getLogger("workers.storage.rejected")

PREVIEW_BYTES = 60
CHUNK = 200  # rejected calls replayed per transaction
LOGFILE_TARGET = "logfile:"


@dataclass(frozen=True, slots=True)
class RejectedCall:
    id: int
    received_at: datetime
    reason: str
    source: str
    preview: str  # the first bytes of the body, printable


@dataclass(slots=True)
class ReplayResult:
    replayed: int = 0  # rejected calls looked at
    stored: int = 0  # new rows in events
    duplicates: int = 0  # events that were already stored
    removed: int = 0  # rejected calls removed (now events)
    still_rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why the rest still fail


def preview(body: bytes, total: int | None = None, size: int = PREVIEW_BYTES) -> str:
    """The first bytes of a body as one printable line; `…` when the body (`total` bytes) is longer."""
    text = bytes(body[:size]).decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text + ("…" if (total if total is not None else len(body)) > size else "")


def list_rejected(conn: psycopg.Connection, limit: int = 50, offset: int = 0) -> list[RejectedCall]:
    """The most recently received rejected calls first."""
    rows = conn.execute(
        "SELECT id, received_at, reason, source, substring(body FROM 1 FOR %s) AS head, length(body) AS size"
        " FROM rejected_events ORDER BY received_at DESC, id DESC LIMIT %s OFFSET %s",
        (PREVIEW_BYTES, limit, offset),
    ).fetchall()
    return [RejectedCall(row[0], row[1], row[2], row[3], preview(bytes(row[4]), row[5])) for row in rows]


def count_rejected(conn: psycopg.Connection) -> int:
    return scalar(conn, "SELECT count(*) FROM rejected_events")


def _envelope(row: dict[str, Any]) -> Envelope:
    return Envelope(
        body=bytes(row["body"]),
        content_type=row["content_type"] or "",
        received_at=row["received_at"].timestamp(),
        remote=row["remote"] or "",
        method=row["method"] or "POST",
        target=row["target"] or "",
        headers={str(k): str(v) for k, v in (row["headers"] or {}).items()},
    )


def reparse(row: dict[str, Any], tz: str) -> list[Event]:
    """The events one kept call gives with the current code; raises `Unparseable` when none."""
    envelope = _envelope(row)
    if envelope.target.startswith(LOGFILE_TARGET):
        log_type = envelope.target[len(LOGFILE_TARGET) :]
        try:
            fields = orjson.loads(envelope.body)
        except orjson.JSONDecodeError as exc:
            raise Unparseable(f"kept logfile record is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise Unparseable("kept logfile record is not an object")
        return [from_logfile(fields, log_type, tz, row["received_at"])]
    if row["source"] == "logfile":
        return [_reparse_record(envelope, row["received_at"], tz)]
    fields = parse_body(envelope.content_type, envelope.body)
    return [from_webhook(fields, envelope, tz)]


_FORMATS = {"text/csv": "csv", "application/json": "json", "application/xml": "xml", "text/xml": "xml"}


def _reparse_record(envelope: Envelope, received_at: datetime, tz: str) -> Event:
    """A record the backfill kept: its raw bytes, the format in the content type and the file in
    the target (`cdm-click.2026-11-25.log:17`). A CSV line is read in the documented column order."""
    log_type = log_type_from_name(envelope.target.rsplit(":", 1)[0]) or log_type_from_name(envelope.target)
    if log_type is None:
        raise Unparseable(f"cannot tell the log type of kept record {envelope.target[:200]!r}")
    fmt = _FORMATS.get(media_type(envelope.content_type))
    if fmt is None:
        raise Unparseable(f"unknown format of kept record: {envelope.content_type[:100]!r}")
    body = envelope.body
    if fmt == "xml" and not body.lstrip().startswith(b"<records"):
        body = b"<records>" + body + b"</records>"
    for record in read_records(io.BytesIO(body), log_type, fmt):
        if record.fields is None:
            raise Unparseable(record.error or "unreadable record")
        return from_logfile(record.fields, log_type, tz, received_at)
    raise Unparseable("kept record is empty")


def prune_rejected(conn: psycopg.Connection, cutoff: datetime, *, dry_run: bool = False) -> int:
    """Delete (or, dry, count) the rejected calls received before `cutoff`: they hold whole raw
    calls (addresses, IPs, bounce messages), and retention keeps them no longer than events."""
    if dry_run:
        return int(scalar(conn, "SELECT count(*) FROM rejected_events WHERE received_at < %s", (cutoff,)))
    with conn.transaction():
        return conn.execute("DELETE FROM rejected_events WHERE received_at < %s", (cutoff,)).rowcount


def _ids(conn: psycopg.Connection, only: int | None) -> list[int]:
    if only is not None:
        return [row[0] for row in conn.execute("SELECT id FROM rejected_events WHERE id = %s", (only,))]
    return [row[0] for row in conn.execute("SELECT id FROM rejected_events ORDER BY id")]


def _chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def replay(conn: psycopg.Connection, tz: str, *, only: int | None = None) -> ReplayResult:
    """Re-parse the kept calls (one by `only`, else all) and store those that now parse.

    `conn` must not be inside a transaction of the caller's; each chunk of calls is one
    transaction: the new events and the removal of their calls commit together. A call whose
    event PostgreSQL still refuses is rolled back alone (a savepoint) and stays kept.
    """
    result = ReplayResult()
    for chunk in _chunks(_ids(conn, only), CHUNK):
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT id, received_at, reason, content_type, headers, body, source, remote, method, target"
                " FROM rejected_events WHERE id = ANY(%s) ORDER BY id FOR UPDATE SKIP LOCKED",
                (chunk,),
            ).fetchall()
            for row in rows:
                result.replayed += 1
                _replay_one(conn, row, tz, result)
    log.info(
        "replayed %d rejected calls: %d removed, %d still rejected",
        result.replayed,
        result.removed,
        result.still_rejected,
    )
    return result


def _replay_one(conn: psycopg.Connection, row: dict[str, Any], tz: str, result: ReplayResult) -> None:
    try:
        events = reparse(row, tz)
    except Unparseable as exc:
        _still(conn, row, str(exc), result)
        return
    except Exception as exc:  # a parser bug: the call stays kept, with the reason
        log.exception("unexpected error replaying rejected call %s", row["id"])
        _still(conn, row, f"parser error: {type(exc).__name__}: {exc}", result)
        return
    try:
        with conn.transaction():  # a savepoint: a refused event leaves the call kept
            new = store.insert_events(conn, events)
            conn.execute("DELETE FROM rejected_events WHERE id = %s", (row["id"],))
    except psycopg.DataError as exc:
        _still(conn, row, f"refused by PostgreSQL: {exc}".splitlines()[0], result)
        return
    result.stored += new
    result.duplicates += len(events) - new
    result.removed += 1


def _still(conn: psycopg.Connection, row: dict[str, Any], reason: str, result: ReplayResult) -> None:
    result.still_rejected += 1
    result.reasons[reason] = result.reasons.get(reason, 0) + 1
    if reason != row["reason"]:
        conn.execute(
            "UPDATE rejected_events SET reason = %s WHERE id = %s", (reason.replace("\x00", "")[:2000], row["id"])
        )


def as_rows(calls: Iterable[RejectedCall]) -> list[tuple[str, str, str, str, str]]:
    """Table rows for printing: id, received (UTC), source, reason, first bytes."""
    return [
        (str(c.id), c.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), c.source, c.reason, c.preview)
        for c in calls
    ]
