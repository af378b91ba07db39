"""PostgreSQL: how rows reach the tables. The only module that writes event SQL.

Events go in by COPY into a session-temporary table, then one
`INSERT … SELECT … ON CONFLICT DO NOTHING`: the unique constraint on (event_key, occurred_at)
is what makes a second delivery of the same event a no-op, whichever path brings it (see
_NEW_KEY for why that is one row per event, and the partitions it needs, `workers.partitions`).
Rejected calls are keyed by `call_key` the same way, so a retried job never doubles them.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from workers import partitions
from workers.envelope import Envelope
from workers.model import Event

log = logging.getLogger("workers.store")

STATEMENT_TIMEOUT_MS = 120_000
EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Event))
_COLS = ", ".join(EVENT_COLUMNS)
# The staging table is per session and shaped like `events` when first made: its name carries
# the column list, so a long-lived connection never COPYs into a stage of an older schema.
_STAGE = "incoming_events_" + hashlib.sha256(_COLS.encode()).hexdigest()[:12]
# One row per event. `events` is partitioned by month on occurred_at (migration 0004), so its
# unique constraint is (event_key, occurred_at); the PRIMARY KEY (id, occurred_at) is the only
# other one and never conflicts (generated ids), so a bare ON CONFLICT DO NOTHING arbitrates
# on the key constraint (and also works on a schema before 0004: a worker deployed before
# `ingest migrate`). That is "one row per event_key" whenever occurred_at follows from the key:
# a whole second read from the event's `time`/`timestamp`, which message and profile keys
# contain. It does not when occurred_at is the time of receipt (no usable time: each delivery
# has its own) or a timestamp with a fraction of a second; those rows also look their key up
# in every partition. Limit: that lookup sees rows committed before the statement, so two
# such copies stored by two workers at the same moment are two rows (copies in one chunk are
# one: `copy_data` keeps the first).
_NEW_KEY = (
    "WHERE (s.occurred_at <> s.received_at AND s.occurred_at = date_trunc('second', s.occurred_at))"
    " OR NOT EXISTS (SELECT 1 FROM events e WHERE e.event_key = s.event_key)"
)


@dataclass(frozen=True, slots=True)
class Rejected:
    envelope: Envelope
    reason: str
    source: str = "webhook"


@dataclass(slots=True)
class StoreResult:
    stored: int = 0  # new rows in events
    duplicates: int = 0  # events already there
    rejected: int = 0  # calls kept in rejected_events (new or already kept)

    def __iadd__(self, other: StoreResult) -> StoreResult:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        return self


def connect(database_url: str) -> psycopg.Connection:
    # A statement that runs for minutes is a sick database: fail it, so the job is retried
    # rather than held (a worker's job must finish well within its timeout).
    return psycopg.connect(database_url, autocommit=False, application_name="copernica-ingest",
                           options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


def _clean(value: object) -> object:
    """PostgreSQL text cannot hold NUL; JSON gets it escaped by orjson, text columns lose it."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "")
    return value


def _json(value: dict) -> str:
    """The payload as jsonb text. jsonb refuses NUL (which orjson writes as \\u0000): NULs are
    dropped from the strings first, in the rare payload that has one. A text that only reads
    like the escape (a backslash, then `u0000`) is written `\\\\u0000` and stays as it was."""
    text = orjson.dumps(value).decode()
    if "\\u0000" not in text:
        return text
    return orjson.dumps(_without_nul(value)).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


# COPY's text format, written here rather than by psycopg's row formatter: one str per event,
# escaped only in the rare row that holds a backslash, tab, newline, carriage return or NUL.
_VALUES = attrgetter(*EVENT_COLUMNS)
_NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": None})
_LAST_TAB = len(EVENT_COLUMNS) - 1


def _copy_line(event: Event) -> str:
    """One event as a line of COPY text (NULs dropped: PostgreSQL text cannot hold them)."""
    values = _VALUES(event)
    cells = [_NULL if v is None else v if type(v) is str else (_format(type(v)) or _cell)(v) for v in values]
    line = "\t".join(cells)
    if (line.count("\\") != values.count(None) or line.count("\t") != _LAST_TAB
            or "\n" in line or "\r" in line or "\x00" in line):
        line = "\t".join([_NULL if v is None else _cell(v).translate(_ESCAPES) for v in values])
    return line + "\n"


def _cell(value: object) -> str:
    """A non-NULL value as PostgreSQL reads it, before COPY's escaping."""
    if isinstance(value, dict):
        return _json(value)
    if isinstance(value, list):
        return _array(value)
    return str(value)  # str, int, datetime ('2026-11-26 12:00:01+00:00')


def _array(items: list) -> str:
    """A text[] literal with every element quoted (so NULL, commas, braces are plain text)."""
    quoted = [
        "NULL" if item is None
        else '"' + str(item).replace("\x00", "").replace("\\", "\\\\").replace('"', '\\"') + '"'
        for item in items
    ]
    return "{" + ",".join(quoted) + "}"


_format = {int: str, datetime: str, dict: _json, list: _array}.get  # the exact types `_cell` meets most


def copy_data(events: Iterable[Event]) -> bytes:
    """The COPY text of `events`, as `insert_events` sends it: of several events with one key
    (a call delivered twice into one batch) only the first. The unique constraint would drop the
    others, except where their occurred_at differs: an event without a usable time has its time
    of receipt, and `_NEW_KEY` looks such keys up in `events`, where a copy in the same chunk is
    not yet."""
    seen: set[str] = set()
    lines = []
    for event in events:
        key = event.event_key
        if key not in seen:
            seen.add(key)
            lines.append(_copy_line(event))
    return "".join(lines).encode()


def insert_events(conn: psycopg.Connection, events: Sequence[Event], data: bytes | None = None, *,
                  staged: bool = False) -> int:
    """Insert within the caller's transaction; return how many rows were new. `data`: the
    events' `copy_data` when the caller made it already (on another thread); `staged`: this
    transaction made the staging table already (an earlier chunk)."""
    if not events:
        return 0
    partitions.ensure_for_events(conn, events)  # a set of months when they are known: no query
    with conn.cursor() as cur:
        if not staged:  # once per transaction: cheap, and right after a rollback dropped the stage
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
                f"SELECT {_COLS} FROM events WITH NO DATA"
            )
        with cur.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
            copy.write(copy_data(events) if data is None else data)
        cur.execute(f"INSERT INTO events ({_COLS}) SELECT {_COLS} FROM {_STAGE} s {_NEW_KEY} ON CONFLICT DO NOTHING")
        stored = cur.rowcount
        cur.execute(f"DELETE FROM {_STAGE}")  # the next chunk of this transaction starts empty
        return stored


def call_key(envelope: Envelope) -> str:
    """What makes two rejected calls the same call (a retried job sees the same envelope)."""
    digest = hashlib.sha256(envelope.body)
    for part in (repr(envelope.received_at), envelope.remote, envelope.method, envelope.target):
        digest.update(b"\x1f" + part.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def insert_rejects(conn: psycopg.Connection, rejects: Iterable[Rejected]) -> int:
    count = 0
    with conn.cursor() as cur:
        for item in rejects:
            env = item.envelope
            cur.execute(
                "INSERT INTO rejected_events (call_key, received_at, reason, content_type, headers, body,"
                " source, remote, method, target)"
                " VALUES (%s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (call_key) DO NOTHING",
                (
                    call_key(env), env.received_at, _clean(item.reason)[:2000], _clean(env.content_type),
                    Jsonb({k: _clean(v) for k, v in env.headers.items()}), env.body, item.source,
                    _clean(env.remote), _clean(env.method), _clean(env.target),
                ),
            )
            count += 1
    return count


Chunk = tuple[Sequence[Event], Sequence[Envelope] | None, Sequence[Rejected]]
WRITER_SWITCH_INTERVAL = 0.001  # seconds; see store_chunks
_REFUSED = (psycopg.DataError, psycopg.errors.UntranslatableCharacter, psycopg.errors.CharacterNotInRepertoire)


def store(
    conn: psycopg.Connection,
    events: Sequence[Event],
    rejects: Sequence[Rejected] = (),
    origins: Sequence[Envelope] | None = None,
) -> StoreResult:
    """Store a batch in one transaction. An event PostgreSQL refuses (bad data) does not sink
    the batch: the batch is retried event by event and the refused ones become rejects, kept
    with `origins[i]` (the raw call event i came from) when given."""
    return store_chunks(conn, [(events, origins, rejects)])


def store_chunks(conn: psycopg.Connection, chunks: Iterable[Chunk]) -> StoreResult:
    """Store chunks as they come, in one transaction, on a thread of their own: PostgreSQL
    stores chunk k while the caller's iterator produces (parses) chunk k+1. The caller's thread
    also writes each chunk's COPY text, so the writer holds the GIL as little as it can."""
    feed: queue.Queue[tuple[Chunk, bytes] | None] = queue.Queue(maxsize=2)
    outcome: dict[str, object] = {}

    def write() -> None:
        stored = 0
        ended = False  # the producer's end (None) was taken: nothing more will come
        try:
            with conn.transaction():
                staged = False
                while (item := feed.get()) is not None:
                    chunk, data = item
                    stored += insert_events(conn, chunk[0], data, staged=staged)
                    staged = staged or bool(chunk[0])
                    if chunk[2]:
                        insert_rejects(conn, chunk[2])
                ended = True
                if "abort" in outcome:
                    raise _Aborted()
            outcome["stored"] = stored
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
            while not ended and feed.get() is not None:  # let the producer finish
                pass

    writer = threading.Thread(target=write, name="store-writer", daemon=True)
    writer.start()
    kept: list[Chunk] = []
    # The writer waits on PostgreSQL several times a chunk and each time needs the GIL back
    # from the parsing thread: by default it waits up to 5 ms for it (the switch interval).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, WRITER_SWITCH_INTERVAL))
    try:
        for chunk in chunks:
            kept.append(chunk)
            if "error" not in outcome:
                feed.put((chunk, copy_data(chunk[0])))
    except BaseException:
        outcome["abort"] = True
        raise
    finally:
        feed.put(None)
        writer.join()
        sys.setswitchinterval(switch)
    error = outcome.get("error")
    events = [event for chunk in kept for event in chunk[0]]
    rejects = [item for chunk in kept for item in chunk[2]]
    if error is None:
        stored = int(outcome["stored"])  # type: ignore[call-overload]
        return StoreResult(stored, len(events) - stored, len(rejects))
    if not isinstance(error, _REFUSED):
        raise error
    log.warning("batch of %d refused by PostgreSQL; storing it event by event", len(events))
    origins: list[Envelope | None] = []
    for chunk in kept:
        origins.extend(chunk[1] if chunk[1] is not None else [None] * len(chunk[0]))
    return _store_one_by_one(conn, events, origins, rejects)


class _Aborted(Exception):
    """The producer failed: roll the transaction back."""


def _store_one_by_one(conn: psycopg.Connection, events: Sequence[Event], origins: Sequence[Envelope | None],
                      rejects: Sequence[Rejected]) -> StoreResult:
    result = StoreResult()
    refused: list[Rejected] = list(rejects)
    for event, origin in zip(events, origins, strict=True):
        try:
            with conn.transaction():
                new = insert_events(conn, [event])
            result.stored += new
            result.duplicates += 1 - new
        except psycopg.DataError as exc:
            env = origin if origin is not None else _envelope_of(event)
            refused.append(Rejected(env, f"refused by PostgreSQL: {exc}".splitlines()[0], event.source))
    with conn.transaction():
        result.rejected = insert_rejects(conn, refused)
    return result


def _envelope_of(event: Event) -> Envelope:
    """A refused event kept as a call: its payload as JSON; a logfile record's target names its
    log (`logfile:cdm-click`) so that `ingest rejected replay` can read it again."""
    body = orjson.dumps(event.payload)
    target = f"logfile:{event.copernica_type}" if event.source == "logfile" else ""
    return Envelope(body=body, content_type="application/json", received_at=event.received_at.timestamp(),
                    target=target)
