"""Which stretches of time `events` covers: the lookups behind the failed-call report of
`ingest reconcile` (`workers.backfill.failed_calls`).

Copernica's log of failed webhook calls (`feedback-loop-errors`) carries no message id, only
the time of each call, so "is what failed stored now?" is answered per minute: does `events`
hold any event (from a webhook or a logfile) that occurred in that minute. Both queries are
read-only and use the `occurred_at` / `message_id` indexes (the partitions of `events` are by
`occurred_at`, so a minute's lookup touches one partition).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import psycopg

log = logging.getLogger("workers.storage.minutes")

CHUNK = 5000  # values per query


def minutes_with_events(conn: psycopg.Connection, minutes: Sequence[datetime]) -> set[datetime]:
    """Of `minutes` (aware datetimes, each the start of a minute), those in which at least one
    stored event (webhook or logfile) occurred. Equal instants compare equal whatever their zone."""
    found: set[datetime] = set()
    values = list(minutes)
    for start in range(0, len(values), CHUNK):
        rows = conn.execute(
            "SELECT m.minute FROM unnest(%s::timestamptz[]) AS m(minute) WHERE EXISTS ("
            " SELECT 1 FROM events e WHERE e.occurred_at >= m.minute"
            " AND e.occurred_at < m.minute + interval '1 minute' AND e.source IN ('webhook', 'logfile'))",
            (values[start : start + CHUNK],),
        ).fetchall()
        found.update(row[0] for row in rows)
    return found


def stored_message_ids(conn: psycopg.Connection, message_ids: Sequence[str]) -> set[str]:
    """Of `message_ids`, those that at least one stored event carries."""
    found: set[str] = set()
    values = list(message_ids)
    for start in range(0, len(values), CHUNK):
        rows = conn.execute(
            "SELECT DISTINCT message_id FROM events WHERE message_id = ANY(%s::text[])",
            (values[start : start + CHUNK],),
        ).fetchall()
        found.update(row[0] for row in rows)
    return found
