"""Event keys as `events` stores them: the one place that shortens `event_key` and reads it back.

`workers.events.model.event_key` is a sha256 in hex (64 digits). From migration 0011 on,
`events.event_key` is a PostgreSQL `uuid` holding the key's first 128 bits (`stored_key`): 16
bytes of fixed width instead of a 65-byte text, which makes the unique index
(event_key, occurred_at) and each row about 130 bytes smaller. PostgreSQL reads 32 hex digits
without hyphens as a uuid, so COPY text carries `stored_key(key)` as it is.

Before 0011 (a worker deployed ahead of `ingest migrate`) the column is text holding the whole
key: `uuid_keys` tells which, so such a worker keeps writing keys that meet the stored ones.
"""

from __future__ import annotations

import re
import uuid
import weakref

import psycopg

STORED_HEX = 32  # hex digits of the key kept: 128 bits

_HEX = re.compile(r"[0-9a-f]+")


def stored_key(key: str) -> str:
    """The part of an `event_key` that `events` keeps: its first 128 bits, 32 hex digits.

    Why 128 bits are enough: two different events whose keys share these bits would be one row
    (the second dropped as a duplicate). sha256 spreads keys uniformly, so among n stored events
    the chance that any two share them is about n² / 2^129: for 10^11 events (a hundred billion,
    beyond any account's volume) about 1.5 × 10^-17; it reaches one half only near 2^64 ≈
    1.8 × 10^19 events. The unique constraint is on (event_key, occurred_at), so only a pair that
    also shares its time could even collide.
    """
    return key[:STORED_HEX]


def key_text(value: uuid.UUID | str) -> str:
    """A stored key as shown and compared: 32 lower-case hex digits, no hyphens (psycopg reads a
    uuid column as `uuid.UUID`; a schema before 0011 gives the whole text key, shortened here)."""
    if isinstance(value, uuid.UUID):
        return value.hex
    return stored_key(value.replace("-", "").lower())


def parse_key(text: str) -> str | None:
    """What a user gives as an event key, as the stored key (32 hex digits); None when it is none.

    Taken: the whole 64-digit key (as logs, exports or `Event.event_key` show it), its first 32
    digits (as the console shows it), or those as a uuid with hyphens (as PostgreSQL shows it),
    in upper or lower case, with surrounding blanks or braces."""
    compact = text.strip().strip("{}").replace("-", "").lower()
    if len(compact) not in (STORED_HEX, 64) or not _HEX.fullmatch(compact):
        return None
    return stored_key(compact)


_uuid: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def known_uuid(conn: psycopg.Connection) -> bool:
    """Whether `uuid_keys` found the uuid column on this connection already (no query)."""
    return bool(_uuid.get(conn))


def uuid_keys(conn: psycopg.Connection) -> bool:
    """Whether `events.event_key` is a uuid (migration 0011). Once found it is remembered for the
    connection (no migration goes back); until then each call asks (the migration may run
    meanwhile: the next transaction of a long-lived worker then writes the short keys)."""
    if _uuid.get(conn):
        return True
    row = conn.execute(
        "SELECT atttypid = 'uuid'::regtype FROM pg_attribute"
        " WHERE attrelid = to_regclass('events') AND attname = 'event_key' AND NOT attisdropped"
    ).fetchone()
    found = _uuid[conn] = bool(row and row[0])
    return found


def forget(conn: psycopg.Connection) -> None:
    """Drop what is remembered for `conn` (tests that migrate under an open connection)."""
    _uuid.pop(conn, None)
