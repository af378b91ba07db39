"""Read-only reports over the stored events (the `mailing_stats` view of migration 0002;
0005 added `autoreplies`)."""

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


def mailing_stats_row(conn: psycopg.Connection, mailing_id: int) -> dict[str, Any] | None:
    """The `mailing_stats` row of one mailing (counts as int, rates as Decimal or None), or
    None when no stored event belongs to it."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {', '.join(MAILING_STATS_COLUMNS)} FROM mailing_stats WHERE mailing_id = %s",
            (mailing_id,),
        ).fetchone()
    return dict(row) if row is not None else None
