"""The console's read-only queries (`ingest console`): event search, one event, one rejected
call, the mailings of the last days with their `mailing_stats` figures, and a mailing's
opens and clicks over time.

Every query is bounded: lists are pages (keyset on `(occurred_at, event_key)` for events, on
the mailing id for mailings), searches go through an index (`recipient`, `message_id`,
`event_key`, `mailing_id`, `occurred_at`), and nothing reads a whole table. The mailing ids are
found by a loose index scan of `events_mailing_type_idx` (a few index probes per mailing), not
by scanning events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from workers.storage import keys

log = logging.getLogger("workers.storage.browse")

PAGE = 50
EVENT_COLUMNS: tuple[str, ...] = (
    "event_key",
    "event_type",
    "copernica_type",
    "occurred_at",
    "received_at",
    "source",
    "account",
    "message_id",
    "recipient",
    "mailing_id",
    "profile_id",
    "subprofile_id",
    "database_id",
    "collection_id",
    "template_id",
    "ip",
    "user_agent",
    "url",
    "link_id",
    "tags",
    "smtp_code",
    "smtp_status",
    "description",
)
LIST_COLUMNS = ("event_key", "occurred_at", "event_type", "source", "recipient", "message_id", "mailing_id", "url")


@dataclass(frozen=True, slots=True)
class Search:
    """What to look for; empty fields are not used. At least one must be given. `event_key`: as
    stored, 32 hex digits (`keys.parse_key` reads what a user gives)."""

    recipient: str | None = None
    message_id: str | None = None
    mailing_id: int | None = None
    event_key: str | None = None
    event_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in self.__slots__)

    @property
    def keyed(self) -> bool:
        """Whether an equality on an indexed column narrows it (else it walks `occurred_at`)."""
        return any(getattr(self, name) is not None for name in KEYS)


# Columns a search can find rows by through their own index.
KEYS = ("recipient", "message_id", "mailing_id", "event_key")


def search_events(
    conn: psycopg.Connection, search: Search, *, after: tuple[datetime, str] | None = None, limit: int = PAGE
) -> list[dict[str, Any]]:
    """One page of the events `search` finds, newest first (the event key, as 32 hex digits,
    orders those of one time); `after` is the last row of the page before, as (occurred_at,
    event_key). (event_key, occurred_at) is unique, so no row is shown twice or left out between
    pages, however many share a time.

    A search by recipient, message id, mailing or event key reads that column's index and sorts
    what it finds; it orders by `occurred_at + 0` so that PostgreSQL cannot choose to walk the
    `occurred_at` index of every partition instead, hoping to meet the rows early (with a
    mailing's rows in one month, it read all the others first). Only a search by time range
    (and type) walks `occurred_at`; a type alone is refused (a rare type would read the table).
    """
    if not search:
        raise ValueError("give at least one search field")
    if not search.keyed and search.since is None and search.until is None:
        raise ValueError("a type alone is not a search: add another field or a time range")
    where: list[sql.Composable] = []
    params: list[Any] = []
    for column in ("recipient", "message_id", "mailing_id", "event_key", "event_type"):
        value = getattr(search, column)
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if search.since is not None:
        where.append(sql.SQL("occurred_at >= %s"))
        params.append(search.since)
    if search.until is not None:
        where.append(sql.SQL("occurred_at < %s"))
        params.append(search.until)
    if after is not None:
        where.append(sql.SQL("(occurred_at, event_key) < (%s, %s)"))
        params.extend(after)
    order = sql.SQL("occurred_at + interval '0 s'" if search.keyed else "occurred_at")
    query = sql.SQL("SELECT {} FROM events WHERE {} ORDER BY {} DESC, event_key DESC LIMIT %s").format(
        sql.SQL(", ").join(map(sql.Identifier, LIST_COLUMNS)), sql.SQL(" AND ").join(where), order
    )
    params.append(limit)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, params, prepare=False).fetchall()
    for row in rows:
        row["event_key"] = keys.key_text(row["event_key"])  # 32 hex digits: the event's page, the cursor
    return rows


def get_event(conn: psycopg.Connection, key: str) -> dict[str, Any] | None:
    """Every column of the stored event with this key (as stored: 32 hex digits, `keys.parse_key`),
    and its payload as sent: every field Copernica sent, those the stored payload leaves out
    because a column holds them included (`event_fields`).

    A key names one event: (event_key, occurred_at) is unique, and the workers store an event
    whose time is not in its key only when no row has its key (`store._NEW_KEY`). Two workers
    storing such a copy at the same moment can still make two rows (that lookup's limit): the
    earlier is given, with `shared_key` true (a search by the key lists them all)."""
    # `e.user_agent` is the text of the row's user agent (a function of the row: migration 0012)
    query = sql.SQL(
        "SELECT {}, event_fields(e) AS payload FROM events e WHERE event_key = %s ORDER BY occurred_at LIMIT 2"
    ).format(
        sql.SQL(", ").join(
            sql.SQL("{}.{} AS {}").format(sql.Identifier("e"), sql.Identifier(c), sql.Identifier(c))
            for c in EVENT_COLUMNS
        )
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, (key,)).fetchall()
    if not rows:
        return None
    row = rows[0]
    row["event_key"] = keys.key_text(row["event_key"])  # 32 hex digits, as a search takes it
    row["shared_key"] = len(rows) > 1
    return row


def get_rejected(conn: psycopg.Connection, rejected_id: int) -> dict[str, Any] | None:
    """One kept call, its raw body included."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id, call_key, received_at, rejected_at, reason, content_type, headers, body, source, remote,"
            " method, target FROM rejected_events WHERE id = %s",
            (rejected_id,),
        ).fetchone()


MAILINGS_LOOKED_AT = 5000  # most mailing ids one page looks at (older mailings between recent ones)


def recent_mailings(
    conn: psycopg.Connection, since: datetime, *, before: int | None = None, limit: int = 25
) -> list[int]:
    """Ids of the mailings with an event (carrying the mailing id) since `since`, largest first,
    below `before` (the last id of the page before).

    A loose index scan, step by step: the next smaller mailing id is one probe of
    `events_mailing_type_idx` (per partition), and whether it has a recent event one more (the
    partitions before `since` pruned). In SQL as one query, PostgreSQL turns the second probe
    into a semi-join over every recent event; stepping here keeps each page's work to about
    two probes per mailing shown.
    """
    found: list[int] = []
    bound = before if before is not None else 2**63 - 1
    for _ in range(MAILINGS_LOOKED_AT):
        row = conn.execute(
            "SELECT mailing_id FROM events WHERE mailing_id < %s ORDER BY mailing_id DESC LIMIT 1",
            (bound,),
            prepare=False,  # a generic plan cannot prune partitions by `since` (below)
        ).fetchone()
        if row is None:
            break
        bound = row[0]
        recent = conn.execute(
            "SELECT 1 FROM events WHERE mailing_id = %s AND occurred_at >= %s LIMIT 1", (bound, since), prepare=False
        ).fetchone()
        if recent is not None:
            found.append(bound)
            if len(found) == limit:
                break
    return found


def mailing_stats_rows(conn: psycopg.Connection, mailing_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The `mailing_stats` rows of these mailings, with whatever columns the view has (the
    human/machine columns too, once a migration adds them)."""
    if not mailing_ids:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM mailing_stats WHERE mailing_id = ANY(%s)", (mailing_ids,)).fetchall()
    return {row["mailing_id"]: row for row in rows}


# A mailing's events of some types: those carrying its id, and those without one whose message
# has a `sent` event of the mailing (as mailing_stats attributes them).
_ATTRIBUTED = """
SELECT e.event_key, e.occurred_at, e.event_type, e.smtp_status, e.description
FROM events e WHERE e.mailing_id = %(m)s AND e.event_type = ANY(%(types)s)
UNION
SELECT e.event_key, e.occurred_at, e.event_type, e.smtp_status, e.description
FROM events s JOIN events e ON e.message_id = s.message_id
WHERE s.mailing_id = %(m)s AND s.event_type = 'sent' AND e.mailing_id IS NULL AND e.event_type = ANY(%(types)s)
"""


def mailing_timeline(
    conn: psycopg.Connection, mailing_id: int, bucket: str = "hour"
) -> list[tuple[datetime, int, int]]:
    """Opens and clicks of a mailing per `bucket` (`hour` or `day`): (start, opens, clicks)."""
    if bucket not in {"hour", "day", "minute"}:
        raise ValueError(f"unknown bucket {bucket!r}")
    query = (
        "SELECT date_trunc(%(bucket)s, occurred_at) AS t,"
        " count(*) FILTER (WHERE event_type = 'opened'), count(*) FILTER (WHERE event_type = 'clicked')"
        f" FROM ({_ATTRIBUTED}) AS a GROUP BY 1 ORDER BY 1"
    )
    rows = conn.execute(query, {"m": mailing_id, "types": ["opened", "clicked"], "bucket": bucket}).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def mailing_bounce_reasons(conn: psycopg.Connection, mailing_id: int, limit: int = 20) -> list[tuple[str, str, int]]:
    """A mailing's most frequent bounce and failure reasons: (smtp_status, description, count)."""
    query = (
        "SELECT coalesce(smtp_status, ''), coalesce(left(description, 200), ''), count(*)"
        f" FROM ({_ATTRIBUTED}) AS a GROUP BY 1, 2 ORDER BY 3 DESC, 1 LIMIT %(limit)s"
    )
    rows = conn.execute(query, {"m": mailing_id, "types": ["bounced", "failed"], "limit": limit}).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def mailing_first_sent(conn: psycopg.Connection, mailing_id: int) -> datetime | None:
    """When the mailing's first `sent` event occurred (the send), or None. The subquery (OFFSET 0
    keeps it apart) reads the mailing's index: as `min()` PostgreSQL would walk `occurred_at`
    from the oldest event until it met one of the mailing's."""
    row = conn.execute(
        "SELECT min(occurred_at) FROM (SELECT occurred_at FROM events"
        " WHERE mailing_id = %s AND event_type = 'sent' OFFSET 0) AS sent",
        (mailing_id,),
    ).fetchone()
    return row[0] if row else None


def rejected_since(conn: psycopg.Connection, since: datetime) -> int:
    """Calls rejected (kept) since `since` (an index range on received_at)."""
    row = conn.execute("SELECT count(*) FROM rejected_events WHERE received_at >= %s", (since,)).fetchone()
    return int(row[0]) if row else 0
