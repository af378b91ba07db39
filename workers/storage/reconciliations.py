"""The stored results of the per-mailing reconciliations (`mailing_reconciliations`, migration
0009): written by `ingest reconcile --mailing` and by the rounds of `ingest reconcile --follow`,
read by the console's mailing pages. The only SQL of that table.

One row per comparison; a mailing keeps its newest `KEEP` rows. `--follow` compares every
mailing of the last week each round (hourly by default: some 170 comparisons of one mailing),
so keeping all would grow without end for no use; the newest hundred still show when a gap
appeared and whether a fix mended it, and the table stays at most `KEEP` rows per mailing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("workers.storage.reconciliations")

KEEP = 100  # rows kept per mailing, the newest


class MeasureLike(Protocol):
    """One compared figure (`workers.backfill.statistics.Measure`)."""

    @property
    def name(self) -> str: ...
    @property
    def copernica(self) -> int | None: ...
    @property
    def stored(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def extra(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """One stored comparison. `measures`: dicts with name, copernica (None: Copernica gave no
    figure), stored, missing, extra, in the order they were compared."""

    mailing_id: int
    checked_at: datetime
    source: str
    since: date | None
    measures: list[dict[str, Any]]
    missing: bool
    fixed: bool

    @property
    def checked_utc(self) -> datetime:
        return self.checked_at.astimezone(UTC)

    @property
    def events_missing(self) -> int:
        """Events Copernica counts beyond ours: what is missing of each measure but the unique
        ones (a unique open is no event of its own)."""
        return sum(int(m["missing"]) for m in self.measures if not str(m["name"]).startswith("unique_"))


def as_json(measures: Iterable[MeasureLike]) -> list[dict[str, Any]]:
    return [
        {"name": m.name, "copernica": m.copernica, "stored": m.stored, "missing": m.missing, "extra": m.extra}
        for m in measures
    ]


_INSERT = """
INSERT INTO mailing_reconciliations (mailing_id, source, since, measures, missing, fixed)
VALUES (%s, %s, %s, %s, %s, %s)
"""
# The rows of a mailing beyond its newest KEEP (through the (mailing_id, checked_at, id) index).
_PRUNE = """
DELETE FROM mailing_reconciliations
WHERE mailing_id = %(mailing)s AND id < (
    SELECT min(id) FROM (
        SELECT id FROM mailing_reconciliations WHERE mailing_id = %(mailing)s
        ORDER BY checked_at DESC, id DESC LIMIT %(keep)s
    ) AS newest
)
"""


def record(
    conn: psycopg.Connection,
    mailing_id: int,
    measures: Sequence[MeasureLike],
    *,
    source: str,
    since: date | None = None,
    fixed: bool = False,
) -> None:
    """Store one comparison of a mailing (checked now), and drop its rows beyond the newest KEEP;
    in a transaction of its own."""
    missing = any(m.missing for m in measures)
    with conn.transaction():
        conn.execute(_INSERT, (mailing_id, source, since, Jsonb(as_json(measures)), missing, fixed))
        conn.execute(_PRUNE, {"mailing": mailing_id, "keep": KEEP})


_COLUMNS = "mailing_id, checked_at, source, since, measures, missing, fixed"


def latest_many(conn: psycopg.Connection, mailing_ids: Sequence[int]) -> dict[int, Reconciliation]:
    """The newest stored comparison of each of `mailing_ids` that has one (one query, an index
    probe per mailing)."""
    ids = sorted(set(mailing_ids))
    if not ids:
        return {}
    rows = conn.execute(
        f"""
        SELECT r.* FROM unnest(%s::bigint[]) AS m(id)
        CROSS JOIN LATERAL (
            SELECT {_COLUMNS} FROM mailing_reconciliations
            WHERE mailing_id = m.id ORDER BY checked_at DESC, id DESC LIMIT 1
        ) AS r
        """,
        (ids,),
    ).fetchall()
    return {row[0]: Reconciliation(*row) for row in rows}


def latest(conn: psycopg.Connection, mailing_id: int) -> Reconciliation | None:
    """The newest stored comparison of a mailing, or None when it was never reconciled."""
    return latest_many(conn, [mailing_id]).get(mailing_id)


def history(conn: psycopg.Connection, mailing_id: int, limit: int = KEEP) -> list[Reconciliation]:
    """A mailing's stored comparisons, the newest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM mailing_reconciliations WHERE mailing_id = %s "
        "ORDER BY checked_at DESC, id DESC LIMIT %s",
        (mailing_id, limit),
    ).fetchall()
    return [Reconciliation(*row) for row in rows]
