"""PostgreSQL: how rows reach the tables. The only module that writes event SQL.

Events go in by COPY into a session-temporary table, then one
`INSERT … SELECT … ON CONFLICT (event_key) DO NOTHING`: the unique constraint on `event_key`
is what makes a second delivery of the same event a no-op, whichever path brings it.
Rejected calls are keyed by `call_key` the same way, so a retried job never doubles them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import orjson
import psycopg
from psycopg.types.json import Jsonb

from workers.envelope import Envelope
from workers.model import Event

log = logging.getLogger("workers.store")

EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Event))
_COLS = ", ".join(EVENT_COLUMNS)
# The staging table is per session and shaped like `events` when first made: its name carries
# the column list, so a long-lived connection never COPYs into a stage of an older schema.
_STAGE = "incoming_events_" + hashlib.sha256(_COLS.encode()).hexdigest()[:12]


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
    return psycopg.connect(database_url, autocommit=False, application_name="copernica-ingest")


def _clean(value: object) -> object:
    """PostgreSQL text cannot hold NUL; JSON gets it escaped by orjson, text columns lose it."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "")
    return value


def _row(event: Event) -> tuple:
    row = []
    for name in EVENT_COLUMNS:
        value = getattr(event, name)
        if isinstance(value, dict):
            value = orjson.dumps(value).decode().replace("\\u0000", "")
        elif isinstance(value, list):  # a text[] column (tags)
            value = [_clean(item) for item in value]
        row.append(_clean(value))
    return tuple(row)


def insert_events(conn: psycopg.Connection, events: Sequence[Event]) -> int:
    """Insert within the caller's transaction; return how many rows were new."""
    if not events:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
            f"SELECT {_COLS} FROM events WITH NO DATA"
        )
        cur.execute(f"TRUNCATE {_STAGE}")
        with cur.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
            for event in events:
                copy.write_row(_row(event))
        cur.execute(
            f"INSERT INTO events ({_COLS}) SELECT {_COLS} FROM {_STAGE} "
            "ON CONFLICT (event_key) DO NOTHING"
        )
        return cur.rowcount


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


def store(
    conn: psycopg.Connection,
    events: Sequence[Event],
    rejects: Sequence[Rejected] = (),
    origins: Sequence[Envelope] | None = None,
) -> StoreResult:
    """Store a batch in one transaction. An event PostgreSQL refuses (bad data) does not sink
    the batch: the batch is retried event by event and the refused ones become rejects, kept
    with `origins[i]` (the raw call event i came from) when given."""
    try:
        with conn.transaction():
            stored = insert_events(conn, events)
            kept = insert_rejects(conn, rejects)
        return StoreResult(stored, len(events) - stored, kept)
    except (psycopg.DataError, psycopg.errors.UntranslatableCharacter, psycopg.errors.CharacterNotInRepertoire):
        log.warning("batch of %d refused by PostgreSQL; storing it event by event", len(events))
    result = StoreResult()
    refused: list[Rejected] = list(rejects)
    for index, event in enumerate(events):
        try:
            with conn.transaction():
                new = insert_events(conn, [event])
            result.stored += new
            result.duplicates += 1 - new
        except psycopg.DataError as exc:
            env = origins[index] if origins is not None else _envelope_of(event)
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
