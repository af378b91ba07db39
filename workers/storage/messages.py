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
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from workers.events import machine
from workers.events.machine import CLICK_DELAY_SECONDS
from workers.events.model import Event
from workers.storage.copy_text import STAMPS

log = logging.getLogger("workers.storage.messages")

COUNTED_TYPES = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "failed",
    "deferred",
    "autoresponded",
    "unsubscribed",
    "complained",
)
# What a new row's fact is: (message_id, event_type, occurred_at, mailing_id, recipient,
# profile_id, machine, bounce reason).
Fact = tuple[str | None, str, datetime, int | None, str | None, int | None, bool | None, str | None]
RETURNING_FACTS = (
    "RETURNING message_id, event_type, occurred_at, mailing_id, recipient, profile_id, machine,"
    " coalesce(description, smtp_status)"
)
FACT_COLUMNS = "message_id, event_type, occurred_at, mailing_id, recipient, profile_id, machine, reason"
_STAGE = "message_facts"  # per session, emptied by each fold
_MAKE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (message_id text, event_type text, occurred_at timestamptz,"
    " mailing_id bigint, recipient text, profile_id bigint, machine boolean, reason text) ON COMMIT DELETE ROWS"
)

COLUMNS = (
    "message_id, mailing_id, recipient, profile_id, sent_at, delivered_at, opened_at, clicked_at, bounced_at,"
    " unsubscribed_at, complained_at, last_event_at, sent, delivered, opens, clicks, human_opens, human_clicks,"
    " bounces, failures, deferrals, autoreplies, unsubscribes, complaints, last_bounce_at, last_bounce_reason"
)
_C = 'COLLATE "C"'
# The facts of one transaction folded per message, as `messages_rebuild()` (migration 0006) folds
# the stored events (tests compare the two); `human_clicks` counts the clicks no per-event rule
# caught, the click rules correct it where they apply (`_RULES_DUE`).
_BOUNCE_ORDER = f"ORDER BY occurred_at DESC, coalesce(reason, '') {_C} DESC"
_FOLD = f"""
SELECT message_id, min(mailing_id), min(recipient {_C}), min(profile_id),
       min(occurred_at) FILTER (WHERE event_type = 'sent'),
       min(occurred_at) FILTER (WHERE event_type = 'delivered'),
       min(occurred_at) FILTER (WHERE event_type = 'opened'),
       min(occurred_at) FILTER (WHERE event_type = 'clicked'),
       min(occurred_at) FILTER (WHERE event_type IN ('bounced', 'failed')),
       min(occurred_at) FILTER (WHERE event_type = 'unsubscribed'),
       min(occurred_at) FILTER (WHERE event_type = 'complained'),
       max(occurred_at),
       count(*) FILTER (WHERE event_type = 'sent'),
       count(*) FILTER (WHERE event_type = 'delivered'),
       count(*) FILTER (WHERE event_type = 'opened'),
       count(*) FILTER (WHERE event_type = 'clicked'),
       count(*) FILTER (WHERE event_type = 'opened' AND machine IS FALSE),
       count(*) FILTER (WHERE event_type = 'clicked' AND machine IS FALSE),
       count(*) FILTER (WHERE event_type = 'bounced'),
       count(*) FILTER (WHERE event_type = 'failed'),
       count(*) FILTER (WHERE event_type = 'deferred'),
       count(*) FILTER (WHERE event_type = 'autoresponded'),
       count(*) FILTER (WHERE event_type = 'unsubscribed'),
       count(*) FILTER (WHERE event_type = 'complained'),
       (array_agg(occurred_at {_BOUNCE_ORDER}) FILTER (WHERE event_type IN ('bounced', 'failed')))[1],
       (array_agg(reason {_BOUNCE_ORDER}) FILTER (WHERE event_type IN ('bounced', 'failed')))[1]
FROM f
WHERE message_id IS NOT NULL AND event_type IN ({", ".join(f"'{kind}'" for kind in COUNTED_TYPES)})
GROUP BY message_id
"""
# The latest bounce by (time, reason): the one the upsert keeps.
_NEWER = (
    "(excluded.last_bounce_at IS NOT NULL AND (m.last_bounce_at IS NULL OR excluded.last_bounce_at > m.last_bounce_at"
    f" OR (excluded.last_bounce_at = m.last_bounce_at AND coalesce(excluded.last_bounce_reason, '') {_C}"
    f" > coalesce(m.last_bounce_reason, '') {_C})))"
)
_UPSERT = f"""
WITH f AS (DELETE FROM {_STAGE} RETURNING *)
INSERT INTO messages AS m ({COLUMNS}) {_FOLD}
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
    human_clicks = m.human_clicks + excluded.human_clicks,
    bounces = m.bounces + excluded.bounces,
    failures = m.failures + excluded.failures,
    deferrals = m.deferrals + excluded.deferrals,
    autoreplies = m.autoreplies + excluded.autoreplies,
    unsubscribes = m.unsubscribes + excluded.unsubscribes,
    complaints = m.complaints + excluded.complaints,
    last_bounce_at = CASE WHEN {_NEWER} THEN excluded.last_bounce_at ELSE m.last_bounce_at END,
    last_bounce_reason = CASE WHEN {_NEWER} THEN excluded.last_bounce_reason ELSE m.last_bounce_reason END
RETURNING message_id, clicks,
    clicked_at < coalesce(delivered_at, sent_at) + interval '{CLICK_DELAY_SECONDS} seconds'
"""
# Events without a message id count for their mailing (when they carry one), as
# `messages_rebuild()` counts them.
_DIRECT_SOURCE = f"""
SELECT 1 AS s, mailing_id, 0 AS sent, count(*) FILTER (WHERE event_type = 'delivered') AS delivered,
       0 AS opens, 0 AS clicks, count(*) FILTER (WHERE event_type = 'bounced') AS bounces,
       count(*) FILTER (WHERE event_type = 'failed') AS failures,
       count(*) FILTER (WHERE event_type = 'deferred') AS deferrals,
       count(*) FILTER (WHERE event_type = 'unsubscribed') AS unsubscribes,
       count(*) FILTER (WHERE event_type = 'complained') AS complaints,
       count(*) FILTER (WHERE event_type = 'autoresponded') AS autoreplies,
       0 AS human_opens, 0 AS human_clicks, 0 AS unique_opens, 0 AS unique_clicks, 0 AS unique_human_opens,
       NULL::timestamptz AS sent_at, max(occurred_at) AS last_event_at
FROM {_STAGE}
WHERE message_id IS NULL AND mailing_id IS NOT NULL
GROUP BY mailing_id
"""


def fact(event: Event) -> str:
    """What `messages` needs of a new row, as a line of COPY text ('' when nothing)."""
    message_id, mailing_id = event.message_id, event.mailing_id
    if message_id is None and mailing_id is None:
        return ""
    reason = event.description if event.description is not None else event.smtp_status
    verdict = event.machine
    return (
        f"{_NULL if message_id is None else _escape(message_id)}\t{_escape(event.event_type)}\t"
        f"{STAMPS[event.occurred_at]}\t{_NULL if mailing_id is None else mailing_id}\t"
        f"{_NULL if (r := event.recipient) is None else _escape(r)}\t"
        f"{_NULL if (p := event.profile_id) is None else p}\t"
        f"{_NULL if verdict is None else 't' if verdict else 'f'}\t"
        f"{_NULL if reason is None else _escape(reason)}\n"
    )


def fact_lines(rows: Sequence[Sequence[Any]]) -> str:
    """Facts as `RETURNING_FACTS` gives them, as COPY text."""
    return "".join(
        "\t".join(_NULL if v is None else ("t" if v else "f") if isinstance(v, bool) else _escape(str(v)) for v in row)
        + "\n"
        for row in rows
    )


_NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": None})


def _escape(text: str) -> str:
    return text if text.isprintable() and "\\" not in text else text.translate(_ESCAPES)


_kept: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def known(conn: psycopg.Connection) -> bool:
    """Whether `kept` found `messages` on this connection already (no query)."""
    return bool(_kept.get(conn))


def kept(conn: psycopg.Connection) -> bool:
    """Whether the schema has `messages` (migration 0006): a worker deployed before `ingest
    migrate` stores its events as before, without the facts. Once found it is remembered for
    the connection; until then each transaction asks again (the migration may run meanwhile)."""
    if _kept.get(conn):
        return True
    row = conn.execute("SELECT to_regclass('messages') IS NOT NULL").fetchone()
    found = _kept[conn] = bool(row and row[0])
    return found


def apply(cur: psycopg.Cursor, facts: str, *, staged: bool = False) -> None:
    """Fold new rows' facts (COPY text of `fact` lines) into `messages`, and those of events
    without a message id into the mailing totals, within the caller's transaction; then the
    click rules for the messages they may change. `staged`: this transaction made the stage."""
    if not facts:
        return
    if not staged:
        cur.execute(_MAKE_STAGE)
    with cur.copy(f"COPY {_STAGE} ({FACT_COLUMNS}) FROM STDIN") as copy:
        copy.write(facts.encode())
    lines = facts.split("\n")[:-1]  # each ends with a newline (not splitlines: a text may hold U+2028)
    if any(line.startswith(_NULL) for line in lines):  # without a message id: first, the fold empties the stage
        row = cur.execute("SELECT mailing_totals_upsert(%s)", (_DIRECT_SOURCE,)).fetchone()
        if row is not None:
            cur.execute(row[0])
    rows = cur.execute(_UPSERT).fetchall()
    touched, timed = set(), set()
    for line in lines:
        message_id, kind, _rest = line.split("\t", 2)
        if kind in _RULE_TYPES:
            touched.add(message_id)
            if kind in _TIMING_TYPES:
                timed.add(message_id)
    due = [m for m, clicks, near in rows if clicks and m in touched and (clicks > 1 or near or m in timed)]
    if due:
        cur.execute("SELECT messages_apply_click_rules(%s)", (due,))


# A click, a delivery or a send may change what the click rules say: the rules look again at
# such a message when it has two clicks or more (a burst), its first click is near its delivery
# or send, or the delivery or send came now (the click may no longer be near).
_RULE_TYPES = frozenset({"clicked", "delivered", "sent"})
_TIMING_TYPES = frozenset({"delivered", "sent"})


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
