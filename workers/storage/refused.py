"""A batch PostgreSQL refused (bad data): stored event by event, the refused ones kept as
rejects (split out of `workers.storage.store`, which calls it)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import psycopg

from common.envelope import Envelope
from workers.events.model import Event
from workers.storage.store import Rejected, StoreResult, insert_events, insert_rejects


def store_one_by_one(
    conn: psycopg.Connection, events: Sequence[Event], origins: Sequence[Envelope | None], rejects: Sequence[Rejected]
) -> StoreResult:
    result = StoreResult()
    refused: list[Rejected] = list(rejects)
    for event, origin in zip(events, origins, strict=True):
        try:
            with conn.transaction():
                new = insert_events(conn, [event])
            result.stored += new
            result.duplicates += 1 - new
        except psycopg.DataError as exc:
            env = origin if origin is not None else envelope_of(event)
            refused.append(Rejected(env, f"refused by PostgreSQL: {exc}".splitlines()[0], event.source))
    with conn.transaction():
        result.rejected = insert_rejects(conn, refused)
    return result


def envelope_of(event: Event) -> Envelope:
    """A refused event kept as a call: its payload as JSON; a logfile record's target names its
    log (`logfile:cdm-click`) so that `ingest rejected replay` can read it again."""
    body = orjson.dumps(event.payload)
    target = f"logfile:{event.copernica_type}" if event.source == "logfile" else ""
    return Envelope(
        body=body, content_type="application/json", received_at=event.received_at.timestamp(), target=target
    )
