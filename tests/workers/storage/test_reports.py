"""workers.storage.reports.events_inserted: the counter of rows written into `events` that the
watch and the console make the drain of (their own tests show the drain moving)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import psycopg

from workers.events.model import Event, event_key
from workers.storage import reports, store

WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)


def counted(conn: psycopg.Connection) -> None:
    """Make the rows `conn` wrote count now: PostgreSQL's statistics are reported by each server
    process when it goes idle, at most once a second (the writer would otherwise be seen up to 10
    seconds late); this has the next idle moment report them whatever the time."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()


def _open(n: int, *, timed: bool = True) -> Event:
    """An open; without a time of its own (`timed=False`: occurred_at is the time of receipt) it
    goes through the stage, which skips a stored event without writing it."""
    message = f"m-{n}"
    occurred = WHEN + timedelta(seconds=n) if timed else WHEN + timedelta(seconds=n, microseconds=500)
    return Event(
        event_key=event_key("opened", message, occurred, {"id": message}),
        event_type="opened",
        copernica_type="open",
        occurred_at=occurred,
        received_at=occurred if not timed else occurred + timedelta(seconds=2),
        source="webhook",
        message_id=message,
        recipient="a@example.com",
        payload={"id": message},
    )


def test_each_stored_row_counts_once_and_a_skipped_duplicate_not_at_all(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as reader, store.connect(database_url) as writer:
        before = reports.events_inserted(reader)
        assert store.store(writer, [_open(1), _open(2), _open(3, timed=False)]).stored == 3
        counted(writer)
        assert reports.events_inserted(reader) == before + 3
        again = store.store(writer, [_open(3, timed=False)])  # the stage: a stored event is not written
        counted(writer)
        assert (again.stored, again.duplicates) == (0, 1)
        assert reports.events_inserted(reader) == before + 3


def test_rows_of_every_partition_count_and_a_truncate_takes_none_back(database_url: str) -> None:
    """Rows of a far month land in another partition (the default one), summed too; TRUNCATE
    (as a DELETE) removes rows, not counts."""
    far = datetime(2031, 7, 1, 12, tzinfo=UTC)
    later = dataclasses.replace(_open(5), occurred_at=far, received_at=far + timedelta(seconds=2))
    with psycopg.connect(database_url, autocommit=True) as reader, store.connect(database_url) as writer:
        before = reports.events_inserted(reader)
        assert store.store(writer, [_open(4), later]).stored == 2
        counted(writer)
        assert reports.events_inserted(reader) == before + 2
        parts = reader.execute("SELECT count(DISTINCT tableoid) FROM events").fetchone()[0]
        assert parts == 2
        reader.execute("TRUNCATE events")
        assert reports.events_inserted(reader) == before + 2
