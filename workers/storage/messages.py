"""`messages`: one row per message, kept in the transaction that stores its events.

The writer (`workers.storage.store`) hands over the facts of the rows that were *new* (a row
the unique constraint refused changes nothing): those of a direct COPY come from the Events
themselves (`fact`, made on the parsing thread), those of the staged path from the `RETURNING`
of its `INSERT … ON CONFLICT DO NOTHING` (`RETURNING_FACTS`). `apply` folds them per message and
upserts them in one statement: counts add up, milestones keep the first time, identity columns
(mailing, recipient, profile) the least value seen, the last bounce the latest (time, reason).
Every one of these is commutative, so any order of arrival gives the same row, and the same row
as `messages_rebuild()` (migration 0006) makes from `events`. An event that arrives before its
message's `sent` makes a row without a mailing; the `sent` fills it in (and the mailing's
totals take the whole message then: the triggers on `messages`).

The click rules that need the message's other events run after the upsert, for the messages
that got a click, a delivery or a send (`messages_apply_click_rules`, `workers.events.machine`).
Events with a mailing id and no message id (unsubscribe webhooks) are added to the mailing's
totals directly.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from workers.events import machine
from workers.events.model import Event

log = logging.getLogger("workers.storage.messages")

# The event types a message row counts, each with its count column's place in `_Row.counts`.
COUNTED: dict[str, int] = {
    "sent": 0,
    "delivered": 1,
    "opened": 2,
    "clicked": 3,
    "bounced": 6,
    "failed": 7,
    "deferred": 8,
    "autoresponded": 9,
    "unsubscribed": 10,
    "complained": 11,
}
_HUMAN_OPENS = 4
# The milestone each type sets (the first time), as a place in `_Row.times`.
MILESTONES: dict[str, int] = {
    "sent": 0,
    "delivered": 1,
    "opened": 2,
    "clicked": 3,
    "bounced": 4,
    "failed": 4,
    "unsubscribed": 5,
    "complained": 6,
}
BOUNCES = frozenset({"bounced", "failed"})
# Events without a message id count for their mailing (when they carry one) in these columns
# of `mailing_totals` (as `messages_rebuild` counts them).
_DIRECT = ("delivered", "bounced", "failed", "deferred", "unsubscribed", "complained", "autoresponded")

# What a new row's fact is: (message_id, event_type, occurred_at, mailing_id, recipient,
# profile_id, machine, bounce reason).
Fact = tuple[str | None, str, datetime, int | None, str | None, int | None, bool | None, str | None]
RETURNING_FACTS = (
    "RETURNING message_id, event_type, occurred_at, mailing_id, recipient, profile_id, machine,"
    " coalesce(description, smtp_status)"
)

COLUMNS = (
    "message_id, mailing_id, recipient, profile_id, sent_at, delivered_at, opened_at, clicked_at, bounced_at,"
    " unsubscribed_at, complained_at, last_event_at, sent, delivered, opens, clicks, human_opens, human_clicks,"
    " bounces, failures, deferrals, autoreplies, unsubscribes, complaints, last_bounce_at, last_bounce_reason"
)
_STAGE = "message_facts"
_DIRECT_STAGE = "mailing_facts"

_C = 'COLLATE "C"'
_UPSERT = f"""
INSERT INTO messages AS m ({COLUMNS}) SELECT {COLUMNS} FROM {_STAGE}
ON CONFLICT (message_id) DO UPDATE SET
    mailing_id = least(m.mailing_id, excluded.mailing_id),
    recipient = least(m.recipient {_C}, excluded.recipient {_C}),
    profile_id = least(m.profile_id, excluded.profile_id),
    sent_at = least(m.sent_at, excluded.sent_at),
    delivered_at = least(m.delivered_at, excluded.delivered_at),
    opened_at = least(m.opened_at, excluded.opened_at),
    clicked_at = least(m.clicked_at, excluded.clicked_at),
    bounced_at = least(m.bounced_at, excluded.bounced_at),
    unsubscribed_at = least(m.unsubscribed_at, excluded.unsubscribed_at),
    complained_at = least(m.complained_at, excluded.complained_at),
    last_event_at = greatest(m.last_event_at, excluded.last_event_at),
    sent = m.sent + excluded.sent,
    delivered = m.delivered + excluded.delivered,
    opens = m.opens + excluded.opens,
    clicks = m.clicks + excluded.clicks,
    human_opens = m.human_opens + excluded.human_opens,
    bounces = m.bounces + excluded.bounces,
    failures = m.failures + excluded.failures,
    deferrals = m.deferrals + excluded.deferrals,
    autoreplies = m.autoreplies + excluded.autoreplies,
    unsubscribes = m.unsubscribes + excluded.unsubscribes,
    complaints = m.complaints + excluded.complaints,
    (last_bounce_at, last_bounce_reason) = (
        SELECT CASE WHEN newer THEN excluded.last_bounce_at ELSE m.last_bounce_at END,
               CASE WHEN newer THEN excluded.last_bounce_reason ELSE m.last_bounce_reason END
        FROM (SELECT excluded.last_bounce_at IS NOT NULL AND (
                  m.last_bounce_at IS NULL OR excluded.last_bounce_at > m.last_bounce_at
                  OR (excluded.last_bounce_at = m.last_bounce_at
                      AND coalesce(excluded.last_bounce_reason, '') {_C} > coalesce(m.last_bounce_reason, '') {_C}))
              AS newer) AS n)
"""
_DIRECT_COLUMNS = "mailing_id, " + ", ".join(
    {
        "delivered": "delivered",
        "bounced": "bounces",
        "failed": "failures",
        "deferred": "deferrals",
        "unsubscribed": "unsubscribes",
        "complained": "complaints",
        "autoresponded": "autoreplies",
    }[kind]
    for kind in _DIRECT
)
_DIRECT_SOURCE = (
    f"SELECT 1 AS s, {_DIRECT_COLUMNS}, 0 AS sent, 0 AS opens, 0 AS clicks, 0 AS human_opens, 0 AS human_clicks,"
    " 0 AS unique_opens, 0 AS unique_clicks, 0 AS unique_human_opens, NULL::timestamptz AS sent_at, last_event_at"
    f" FROM {_DIRECT_STAGE}"
)


def fact(event: Event) -> Fact | None:
    """What `messages` needs of a new row (None: nothing)."""
    if event.message_id is None and event.mailing_id is None:
        return None
    return (
        event.message_id,
        event.event_type,
        event.occurred_at,
        event.mailing_id,
        event.recipient,
        event.profile_id,
        event.machine,
        event.description if event.description is not None else event.smtp_status,
    )


_kept: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def kept(conn: psycopg.Connection) -> bool:
    """Whether the schema has `messages` (migration 0006): a worker deployed before `ingest
    migrate` stores its events as before, without the facts. Once found it is remembered for
    the connection; until then each transaction asks again (the migration may run meanwhile)."""
    if _kept.get(conn):
        return True
    row = conn.execute("SELECT to_regclass('messages') IS NOT NULL").fetchone()
    found = _kept[conn] = bool(row and row[0])
    return found


class _Row:
    """One message's facts in a transaction, folded as the upsert folds them."""

    __slots__ = ("bounce", "counts", "ids", "last", "recipient", "times")

    def __init__(self) -> None:
        self.ids: list[int | None] = [None, None]  # mailing, profile: the least
        self.recipient: str | None = None
        self.times: list[datetime | None] = [None] * 7
        self.last: datetime | None = None
        self.counts = [0] * 12
        self.bounce: tuple[datetime, str] | None = None  # (time, reason or '') of the latest

    def add(self, f: Fact) -> None:
        kind, occurred = f[1], f[2]
        self._identity(f)
        if self.last is None or occurred > self.last:
            self.last = occurred
        place = COUNTED.get(kind)
        if place is None:
            return
        self.counts[place] += 1
        if kind == "opened" and f[6] is False:
            self.counts[_HUMAN_OPENS] += 1
        milestone = MILESTONES.get(kind)
        if milestone is not None:
            first = self.times[milestone]
            if first is None or occurred < first:
                self.times[milestone] = occurred
        if kind in BOUNCES:
            candidate = (occurred, f[7] or "")
            if self.bounce is None or candidate > self.bounce:
                self.bounce = candidate

    def _identity(self, f: Fact) -> None:
        """Mailing, profile and recipient: the least value seen."""
        ids = self.ids
        for place, value in ((0, f[3]), (1, f[5])):
            if value is not None:
                known = ids[place]
                if known is None or value < known:
                    ids[place] = value
        if f[4] is not None and (self.recipient is None or f[4] < self.recipient):
            self.recipient = f[4]


_NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": None})


def _text(value: object) -> str:
    return _NULL if value is None else str(value).translate(_ESCAPES)


def _message_line(message_id: str, row: _Row) -> str:
    bounce_at, reason = (row.bounce[0], row.bounce[1] or None) if row.bounce else (None, None)
    cells = [
        message_id,
        row.ids[0],
        row.recipient,
        row.ids[1],
        *row.times,
        row.last,
        *row.counts,
        bounce_at,
        reason,
    ]
    return "\t".join(map(_text, cells)) + "\n"


def fold(facts: Iterable[Sequence[Any]]) -> tuple[dict[str, _Row], dict[int, list[Any]]]:
    """The facts per message, and per mailing those of events without a message id
    (counts in `_DIRECT` order, then the last time)."""
    rows: dict[str, _Row] = {}
    direct: dict[int, list[Any]] = {}
    for f in facts:
        message_id = f[0]
        if message_id is not None:
            if f[1] in COUNTED:
                row = rows.get(message_id)
                if row is None:
                    row = rows[message_id] = _Row()
                row.add(f)  # type: ignore[arg-type]
        elif f[3] is not None and f[1] in _DIRECT:
            totals = direct.setdefault(f[3], [0] * len(_DIRECT) + [None])
            totals[_DIRECT.index(f[1])] += 1
            if totals[-1] is None or f[2] > totals[-1]:
                totals[-1] = f[2]
    return rows, direct


def apply(cur: psycopg.Cursor, facts: Sequence[Sequence[Any]]) -> int:
    """Fold the new rows' facts into `messages` (and the totals of events without a message
    id), within the caller's transaction; return how many messages changed."""
    rows, direct = fold(facts)
    if rows:
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE messages) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY {_STAGE} ({COLUMNS}) FROM STDIN") as copy:
            copy.write("".join(_message_line(mid, row) for mid, row in rows.items()).encode())
        cur.execute(_UPSERT)
        touched = [mid for mid, row in rows.items() if row.counts[3] or row.counts[1] or row.counts[0]]
        if touched:
            cur.execute(
                "SELECT messages_apply_click_rules(array(SELECT message_id FROM messages"
                " WHERE message_id = ANY(%s) AND clicks > 0))",
                (touched,),
            )
        cur.execute(f"DELETE FROM {_STAGE}")  # a later apply in this transaction starts empty
    if direct:
        columns = _DIRECT_COLUMNS.split(", ")
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_DIRECT_STAGE} (mailing_id bigint, "
            + ", ".join(f"{c} bigint" for c in columns[1:])
            + ", last_event_at timestamptz) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY {_DIRECT_STAGE} FROM STDIN") as copy:
            for mailing_id, totals in direct.items():
                copy.write_row([mailing_id, *totals])
        statement = cur.execute("SELECT mailing_totals_upsert(%s)", (_DIRECT_SOURCE,)).fetchone()
        cur.execute(statement[0] if statement else "")
        cur.execute(f"DELETE FROM {_DIRECT_STAGE}")
    return len(rows)


def rebuild(conn: psycopg.Connection, mailing_ids: Sequence[int] | None = None) -> int:
    """`messages` again from `events` (those of `mailing_ids`, or all), with every machine rule
    applied again to the stored opens and clicks; in the caller's transaction. Returns how many
    messages it made."""
    params: dict[str, Any] = machine.sql_params()
    scope = ""
    if mailing_ids is not None:
        params["mailings"] = list(mailing_ids)
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT message_id FROM events WHERE mailing_id = ANY(%(mailings)s) AND message_id IS NOT NULL"
                " UNION SELECT message_id FROM messages WHERE mailing_id = ANY(%(mailings)s)",
                params,
            )
        ]
        params["ids"] = ids
        scope = " AND message_id = ANY(%(ids)s)"
    rule = machine.sql_rule()
    conn.execute(
        f"UPDATE events SET machine_rule = v.rule,"
        f" machine = CASE WHEN v.rule IS NOT NULL THEN true WHEN ip IS NULL AND user_agent IS NULL THEN NULL"
        f" ELSE false END"
        f" FROM (SELECT id AS vid, occurred_at AS vat, {rule} AS rule FROM events"
        f" WHERE event_type IN ('opened', 'clicked'){scope}) AS v"
        f" WHERE id = v.vid AND occurred_at = v.vat"
        f" AND (machine_rule IS DISTINCT FROM v.rule OR machine IS DISTINCT FROM"
        f" (CASE WHEN v.rule IS NOT NULL THEN true WHEN ip IS NULL AND user_agent IS NULL THEN NULL ELSE false END))",
        params,
    )
    made = conn.execute("SELECT messages_rebuild(%s)", (params.get("ids"),)).fetchone()
    return int(made[0]) if made and made[0] is not None else 0
