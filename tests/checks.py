"""Checks several test modules make the same way."""

from __future__ import annotations

import psycopg

from workers.storage import store
from workers.storage.keys import key_text, stored_key


def store_and_assert_nothing_vanished(
    db: psycopg.Connection, events: list, origins: list, rejects: list
) -> tuple[set[str], set[str]]:
    """Store parsed calls for real; every event is then a row, or its call a kept reject.
    Returns the stored event keys (32 hex digits: `workers.storage.keys`) and the kept call keys."""
    with store.connect(db.info.dsn) as conn:
        store.store(conn, events, rejects, origins)
    stored_keys = {key_text(r[0]) for r in db.execute("SELECT event_key FROM events")}
    kept = {r[0] for r in db.execute("SELECT call_key FROM rejected_events")}
    for event, origin in zip(events, origins, strict=True):
        assert stored_key(event.event_key) in stored_keys or store.call_key(origin) in kept
    return stored_keys, kept
