"""The `suppressions` view (migration 0006) read as a stream, for `ingest suppressions export`.

The rule, in the view: a hard bounce is a `bounced` or `failed` event with a permanent SMTP code
(5xx, or an enhanced status 5.x.x); complaints and unsubscribes always suppress; a soft bounce
(4xx, 4.x.x or no code), a deferral or an automatic reply never does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg

log = logging.getLogger("workers.storage.suppressions")

COLUMNS: tuple[str, ...] = ("recipient", "reason", "first_at", "last_at", "mailing_id", "profile_id", "events")
REASONS: tuple[str, ...] = ("hard_bounce", "complaint", "unsubscribe")


def stream(conn: psycopg.Connection, since: datetime | None = None, *, size: int = 5000) -> Iterator[tuple[Any, ...]]:
    """Every suppression (those whose latest event is at or after `since`, when given), by
    recipient, through a server-side cursor: memory does not grow with the table."""
    query = f"SELECT {', '.join(COLUMNS)} FROM suppressions"
    params: tuple[Any, ...] = ()
    if since is not None:
        query += " WHERE last_at >= %s"
        params = (since,)
    query += " ORDER BY recipient, reason"
    with conn.transaction(), conn.cursor(name="suppressions_export") as cur:
        cur.itersize = size
        cur.execute(query, params)
        yield from cur
