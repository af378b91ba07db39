"""Per-mailing counts of the stored events, as `ingest reconcile --mailing` compares them with
Copernica's statistics, and the time span the mailing's events cover.

The events of a mailing are found as the `mailing_stats` view finds them (migrations 0002,
0005): those carrying the mailing id, and those without one whose message has a `sent` event
of the mailing (only `*-attempts` records carry the mailing id). The view cannot be used as it
is: it has no time, and `--since` limits by occurred_at and `--fix` needs the first and last
occurred_at. Without `since` the counts equal the view's (tests compare them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

log = logging.getLogger("workers.storage.mailing_counts")


@dataclass(frozen=True, slots=True)
class MailingCounts:
    mailing_id: int
    sent: int = 0
    delivered: int = 0
    opens: int = 0
    unique_opens: int = 0  # distinct messages opened
    clicks: int = 0
    unique_clicks: int = 0  # distinct messages clicked
    errors: int = 0  # failed + bounced (not autoresponded)
    unsubscribes: int = 0
    abuses: int = 0  # complained
    first: datetime | None = None  # occurred_at of the earliest event, `sent` included
    last: datetime | None = None

    def as_counts(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "opens": self.opens,
            "unique_opens": self.unique_opens,
            "clicks": self.clicks,
            "unique_clicks": self.unique_clicks,
            "errors": self.errors,
            "unsubscribes": self.unsubscribes,
            "abuses": self.abuses,
        }


_QUERY = """
SELECT
    mailing_id,
    count(*) FILTER (WHERE event_type = 'sent'),
    count(*) FILTER (WHERE event_type = 'delivered'),
    count(*) FILTER (WHERE event_type = 'opened'),
    count(DISTINCT message_id) FILTER (WHERE event_type = 'opened'),
    count(*) FILTER (WHERE event_type = 'clicked'),
    count(DISTINCT message_id) FILTER (WHERE event_type = 'clicked'),
    count(*) FILTER (WHERE event_type IN ('failed', 'bounced')),
    count(*) FILTER (WHERE event_type = 'unsubscribed'),
    count(*) FILTER (WHERE event_type = 'complained'),
    min(occurred_at),
    max(occurred_at)
FROM (
    SELECT e.event_key, e.mailing_id, e.event_type, e.message_id, e.occurred_at
    FROM events e
    WHERE e.mailing_id = ANY(%(ids)s)
    UNION ALL
    SELECT DISTINCT e.event_key, s.mailing_id, e.event_type, e.message_id, e.occurred_at
    FROM events s
    JOIN events e ON e.message_id = s.message_id
    WHERE s.event_type = 'sent' AND s.mailing_id = ANY(%(ids)s) AND e.mailing_id IS NULL
) AS attributed
WHERE %(since)s::timestamptz IS NULL OR occurred_at >= %(since)s::timestamptz
GROUP BY mailing_id
"""


def mailing_counts(
    conn: psycopg.Connection, mailing_ids: Sequence[int], since: datetime | None = None
) -> dict[int, MailingCounts]:
    """The counts of each mailing (events at or after `since`, an aware datetime, when given);
    a mailing without stored events gets zeros and no span. Read in a transaction of its own."""
    ids = sorted(set(mailing_ids))
    found = {mailing_id: MailingCounts(mailing_id) for mailing_id in ids}
    if not ids:
        return found
    with conn.transaction():
        rows = conn.execute(_QUERY, {"ids": ids, "since": since}).fetchall()
    for row in rows:
        found[row[0]] = MailingCounts(*row)
    return found


# Mailings with events at or after a time, found as above: their own mailing id, or (events
# without one) the mailing of their message's `sent` event, whenever that was sent.
_RECENT_QUERY = """
SELECT mailing_id FROM events
WHERE mailing_id IS NOT NULL AND occurred_at >= %(since)s
UNION
SELECT s.mailing_id
FROM (
    SELECT DISTINCT message_id FROM events
    WHERE occurred_at >= %(since)s AND mailing_id IS NULL AND message_id IS NOT NULL
) AS recent
JOIN events s ON s.message_id = recent.message_id
WHERE s.event_type = 'sent' AND s.mailing_id IS NOT NULL
ORDER BY 1
"""


def recent_mailings(conn: psycopg.Connection, since: datetime) -> list[int]:
    """The mailings with an event that occurred at or after `since` (an aware datetime), in id
    order: what the scheduled reconcile compares with Copernica's statistics. Read in a
    transaction of its own."""
    with conn.transaction():
        return [row[0] for row in conn.execute(_RECENT_QUERY, {"since": since}).fetchall()]
