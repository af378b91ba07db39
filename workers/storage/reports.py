"""Read-only reports over the stored events (the `mailing_stats` view of migration 0002;
0005 added `autoreplies`; 0006 reads it from `mailing_totals` and adds human opens and clicks)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row

log = logging.getLogger("workers.storage.reports")

MAILING_STATS_COLUMNS: tuple[str, ...] = (
    "mailing_id",
    "sent",
    "delivered",
    "opens",
    "unique_opens",
    "clicks",
    "unique_clicks",
    "bounces",
    "autoreplies",
    "failures",
    "deferrals",
    "unsubscribes",
    "complaints",
    "open_rate",
    "click_rate",
)
# Since migration 0006: opens and clicks machines did not make (workers.events.machine).
HUMAN_COLUMNS: tuple[str, ...] = ("human_opens", "unique_human_opens", "human_clicks")


def mailing_stats_row(conn: psycopg.Connection, mailing_id: int) -> dict[str, Any] | None:
    """The `mailing_stats` row of one mailing (counts as int, rates as Decimal or None; the
    human columns when the schema has them), or None when no stored event belongs to it."""
    columns = MAILING_STATS_COLUMNS
    if conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('mailing_stats') AND attname = 'human_opens'"
    ).fetchone():
        columns += HUMAN_COLUMNS
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {', '.join(columns)} FROM mailing_stats WHERE mailing_id = %s",
            (mailing_id,),
        ).fetchone()
    return dict(row) if row is not None else None


# Rows written into `events`: PostgreSQL's own count of each partition's inserted rows (and of
# `events` itself, unpartitioned before 0004).
_INSERTED = (
    "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables"
    " WHERE relid = to_regclass('events')"
    " OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass('events'))"
)


def events_inserted(conn: psycopg.Connection) -> int:
    """A counter of the rows written into `events`, whose growth per second is the drain that
    `ingest stats --watch` and the console show (one read of the statistics, whatever the size
    of the table).

    Why this one: `events` has no sequence to read since migration 0014 (`max(events.id)` was
    the drain before), a count of the rows is a scan, and the workers' own counter
    (`copernica_ingest_events_stored_total`) lives in each worker process's `/metrics`, which
    nothing reads for the watch. What it counts, and how it differs from rows stored:
    - every row PostgreSQL wrote, in committed transactions or not: the rows of a direct COPY
      rolled back because it met an event already stored (they then go through the stage; at
      most one such COPY per pause of `writer.MAX_DIRECT_PAUSE` transactions of a connection) or
      of a failed job count too, and rows moved out of `events_default` into a partition made
      for them; duplicates the stage skips (`ON CONFLICT DO NOTHING`) do not;
    - each server process reports its counts when it goes idle, at most once a second (within
      10 seconds once it stays idle), so a step can show a second's rows late;
    - it goes back when a partition is dropped (`ingest prune`) or the statistics are reset
      (`pg_stat_reset()`, a crash of the server): that step has no rate.
    """
    row = conn.execute(_INSERTED).fetchone()
    return int(row[0]) if row else 0
