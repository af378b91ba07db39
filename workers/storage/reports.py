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
