"""`messages`: one row per message, kept in the transaction that stores its events.

PostgreSQL keeps it: a statement trigger on `events` (migration 0010, `events_inserted_facts`)
folds the rows each statement inserted into their messages (a row the unique constraint refused
is not among them, so a re-delivery or a backfill changes nothing) and the mailing totals, then
applies the click rules that need the message's other events. Every path that writes `events`
goes through it: the worker's COPY, the staged insert, the event-by-event retry, a backfill. The
fold is commutative (counts add up, milestones keep the first time, identity columns the least
value, the last bounce the latest), so any order of arrival gives the row `messages_rebuild()`
makes from the stored events. An event that arrives before its message's `sent` makes a row
without a mailing; the `sent` fills it in (and the mailing's totals take the whole message then:
a row trigger on `messages`, 0013). The fold adds to the mailing totals what it changed, from
the rows it returns (0013).

Here: whether the schema keeps it (`kept`), and the rebuild.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg

from workers.events import machine
from workers.storage import agents

log = logging.getLogger("workers.storage.messages")

COLUMNS = (
    "message_id, mailing_id, recipient, profile_id, sent_at, delivered_at, opened_at, clicked_at, bounced_at,"
    " unsubscribed_at, complained_at, last_event_at, sent, delivered, opens, clicks, human_opens, human_clicks,"
    " bounces, failures, deferrals, autoreplies, unsubscribes, complaints, last_bounce_at, last_bounce_reason"
)
TRIGGER = "events_inserted_facts"  # migration 0010
AGENTS = "user_agents"  # migration 0012
SHORT_CODES = 13  # migration 0013 (`event_fields` reads the payloads' short codes): the last the workers' rows need


class SchemaInMigration(RuntimeError):
    """`messages` exists but not yet all that rows of this version need: a database between
    migrations 0006 and 0013. Storing now would leave the new rows out of `messages` (workers
    before 0010 folded them themselves), write a user agent's hash where its text belongs
    (0012) or payloads `event_fields` cannot read yet (0013), so the job fails and RQ retries
    it once `ingest migrate` is through."""


_kept: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def known(conn: psycopg.Connection) -> bool:
    """Whether `kept` found `messages` on this connection already (no query)."""
    return bool(_kept.get(conn))


def kept(conn: psycopg.Connection) -> bool:
    """Whether the schema keeps `messages` (migrations 0006 to 0013): rows then carry the machine
    columns, compact payloads and user agents' hashes. A worker deployed before `ingest migrate`
    stores its events as before 0006. Once found it is remembered for the connection; until then
    each transaction asks again (the migration may run meanwhile). Raises SchemaInMigration
    between 0006 and 0013."""
    if _kept.get(conn):
        return True
    row = conn.execute(
        "SELECT to_regclass('messages') IS NOT NULL,"
        " EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass('events'))"
        " AND to_regclass(%s) IS NOT NULL",
        (TRIGGER, AGENTS),
    ).fetchone()
    table, complete = (bool(row[0]), bool(row[1])) if row else (False, False)
    if table and complete:  # `messages` came by `ingest migrate`, so its table of versions is there
        done = conn.execute("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = %s)", (SHORT_CODES,))
        complete = done.fetchone() == (True,)
    if table and not complete:
        raise SchemaInMigration(
            "the database is between migrations 0006 and 0013 (`messages` without its trigger on `events`,"
            " `user_agents` or the payloads' short codes missing): run `ingest migrate`; the job is retried"
        )
    _kept[conn] = table
    return table


def rebuild(conn: psycopg.Connection, mailing_ids: Sequence[int] | None = None) -> int:
    """`messages` again from `events` (those of `mailing_ids`, or all), with every machine rule
    applied again to the stored opens and clicks; in the caller's transaction. Returns how many
    messages it made."""
    params: dict[str, Any] = {**machine.sql_params(), "generic": [agents.agent_hash(t) for t in machine.GENERIC_AGENTS]}
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
        f" machine = CASE WHEN v.rule IS NOT NULL THEN true WHEN ip IS NULL AND user_agent_hash IS NULL THEN NULL"
        f" ELSE false END"
        f" FROM (SELECT event_key AS vkey, occurred_at AS vat, {rule} AS rule FROM events"
        f" WHERE event_type IN ('opened', 'clicked'){scope}) AS v"
        f" WHERE event_key = v.vkey AND occurred_at = v.vat"
        f" AND (machine_rule IS DISTINCT FROM v.rule OR machine IS DISTINCT FROM"
        f" (CASE WHEN v.rule IS NOT NULL THEN true WHEN ip IS NULL AND user_agent_hash IS NULL THEN NULL"
        f" ELSE false END))",
        params,
    )
    made = conn.execute("SELECT messages_rebuild(%s)", (params.get("ids"),)).fetchone()
    return int(made[0]) if made and made[0] is not None else 0
