"""Migration 0014: `events.id` and its primary key go. Every row and key kept, the column gone
from every partition, the unique constraint's indexes untouched, our views and the workers
working on; anything of an operator's on the column stops it first, named, changing nothing."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from importlib import resources

import psycopg
import pytest

from tests.workers.storage.test_messages import _messages, message_events
from workers.storage import messages, store
from workers.storage.schema import apply_migrations, available

BEFORE = max(m.version for m in available() if m.version < 14)  # the schema 0014 upgrades
LIVES = message_events("m1", 1) + message_events("m2", 2)
# one more partition: a month before the others
EARLIER = dataclasses.replace(
    LIVES[0], event_key="e" * 64, message_id="m0", occurred_at=LIVES[0].occurred_at - timedelta(days=40)
)
EVENTS = [*LIVES, EARLIER]

# Columns of `events` and of each partition with this name (dropped ones left out).
COLUMN = (
    "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
    " WHERE a.attname = %s AND NOT a.attisdropped AND (c.oid = 'events'::regclass"
    " OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))"
)
# Every index of the partitions, with the file it is kept in (a rebuild gives a new file).
INDEXES = (
    "SELECT i.indexrelid::regclass::text, c.relfilenode, i.indisprimary FROM pg_index i"
    " JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE i.indrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass)"
)


def _rows(conn: psycopg.Connection) -> list[tuple]:
    """Every stored row, `id` aside, by its key."""
    return conn.execute("SELECT to_jsonb(e) - 'id' FROM events e ORDER BY event_key, occurred_at").fetchall()


@pytest.fixture
def before_0014(scratch_database_url: str) -> str:
    """A database at the migration before 0014 holding EVENTS, stored by this code."""
    apply_migrations(scratch_database_url, target=BEFORE)
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, EVENTS).stored == len(EVENTS)
    return scratch_database_url


def test_every_row_is_kept_and_the_column_and_its_key_are_gone(before_0014: str) -> None:
    with psycopg.connect(before_0014, autocommit=True) as conn:
        rows, kept = _rows(conn), _messages(conn)
        indexes = conn.execute(INDEXES).fetchall()
        suppressed = conn.execute("SELECT * FROM suppressions ORDER BY recipient, reason").fetchall()
        stats = conn.execute("SELECT * FROM mailing_stats ORDER BY mailing_id").fetchall()
        conn.execute("CREATE VIEW opens_as_sent AS SELECT message_id, event_fields(e) AS sent FROM events e")
        assert len(conn.execute(COLUMN, ("id",)).fetchall()) > 2  # `events` and its partitions
    assert [m.version for m in apply_migrations(before_0014, target=14)] == [14]
    with psycopg.connect(before_0014, autocommit=True) as conn:
        assert _rows(conn) == rows and len(rows) == len(EVENTS)
        assert conn.execute(COLUMN, ("id",)).fetchall() == []
        assert (
            conn.execute(
                "SELECT conname FROM pg_constraint WHERE contype = 'p' AND (conrelid = 'events'::regclass"
                " OR conrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))"
            ).fetchall()
            == []
        )
        assert conn.execute("SELECT to_regclass('events_id_seq')").fetchone() == (None,)
        # the unique constraint's indexes (and the others) as they were: no rebuild
        assert set(conn.execute(INDEXES).fetchall()) == {i for i in indexes if not i[2]}
        assert conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'events_event_key_occurred_at_key'"
        ).fetchone() == ("UNIQUE (event_key, occurred_at)",)
        # our views on `events`, and one through the whole row, still there and the same
        assert conn.execute("SELECT * FROM suppressions ORDER BY recipient, reason").fetchall() == suppressed
        assert conn.execute("SELECT * FROM mailing_stats ORDER BY mailing_id").fetchall() == stats
        assert conn.execute("SELECT count(*) FROM opens_as_sent WHERE sent ? 'id'").fetchone() == (len(EVENTS),)
        # the workers' messages rebuilt from the events: the same rows
        with conn.transaction():
            messages.rebuild(conn)
        assert _messages(conn) == kept
    assert apply_migrations(before_0014, target=14) == []


def test_the_workers_store_on_across_the_migration(before_0014: str) -> None:
    """A worker connected before: re-deliveries are still duplicates, new events (clicks too:
    their rules key by (event_key, occurred_at)) are stored, in a partition made after too."""
    later = dataclasses.replace(
        LIVES[6], event_key="f" * 64, message_id="m1", occurred_at=LIVES[6].occurred_at + timedelta(days=400)
    )
    with store.connect(before_0014) as worker:
        assert store.store(worker, EVENTS[:3]).duplicates == 3
        apply_migrations(before_0014, target=14)
        assert worker.execute("SELECT events_create_partition(%s)", (later.occurred_at.date(),)).fetchone() == (True,)
        worker.commit()
        again = store.store(worker, [*EVENTS, later])
        assert (again.stored, again.duplicates) == (1, len(EVENTS))
        click = dataclasses.replace(
            LIVES[7], event_key="c" * 64, occurred_at=LIVES[7].occurred_at + timedelta(seconds=1)
        )
        assert store.store(worker, [click]).stored == 1
        rules = worker.execute(
            "SELECT machine_rule FROM events WHERE message_id = 'm1' AND event_type = 'clicked' AND occurred_at = %s",
            (click.occurred_at,),
        ).fetchone()
        worker.commit()
    assert rules == ("link_burst",)  # another link of the message clicked within the second
    with psycopg.connect(before_0014, autocommit=True) as conn:
        part = conn.execute("SELECT tableoid::regclass::text FROM events WHERE event_key = %s", ("f" * 32,)).fetchone()
        assert part == (f"events_p{later.occurred_at:%Y%m}",)
        assert conn.execute(COLUMN, ("id",)).fetchall() == []  # nor has the new partition the column


def test_what_depends_on_the_column_stops_it_named_and_nothing_changes(before_0014: str) -> None:
    with psycopg.connect(before_0014, autocommit=True) as conn:
        conn.execute("CREATE VIEW ops_all AS SELECT * FROM events")  # names `id` too
        conn.execute("CREATE VIEW ops_last AS SELECT max(id) AS last FROM events_default")  # on a partition
        conn.execute("CREATE VIEW ops_keys AS SELECT event_key, occurred_at FROM events")  # not on `id`: no matter
        conn.execute(
            "CREATE TABLE ops_notes (event_id bigint, at timestamptz, note text,"
            " FOREIGN KEY (event_id, at) REFERENCES events (id, occurred_at))"
        )
        with pytest.raises(psycopg.errors.RaiseException) as stopped:
            apply_migrations(before_0014, target=14)
        message = str(stopped.value).splitlines()[0]
        assert "depend on events.id" in message
        assert "view ops_all" in message and "view ops_last" in message
        assert "constraint ops_notes_event_id_at_fkey on table ops_notes" in message
        assert "ops_keys" not in message
        assert message.count("ops_notes_event_id_at_fkey") == 1  # once, not once per partition
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (BEFORE,)
        assert len(conn.execute(COLUMN, ("id",)).fetchall()) > 2
        assert conn.execute("SELECT to_regclass('events_pkey')").fetchone() == ("events_pkey",)
        conn.execute("DROP VIEW ops_all, ops_last")
        conn.execute("DROP TABLE ops_notes")
    assert [m.version for m in apply_migrations(before_0014, target=14)] == [14]
    with psycopg.connect(before_0014, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ops_keys").fetchone() == (len(EVENTS),)


def test_click_rules_that_still_read_the_column_stop_it(before_0014: str) -> None:
    """The click rules as 0006 made them (reading `id`; 0013 keys them by the event key): the
    migration stops, naming 0013, and leaves the column."""
    made = (resources.files("workers.storage.migrations") / "0006_messages.sql").read_text(encoding="utf-8")
    start = made.index("CREATE FUNCTION messages_apply_click_rules")
    old_rules = made[start : made.index("$fn$;", start) + len("$fn$;")].replace("CREATE", "CREATE OR REPLACE", 1)
    with psycopg.connect(before_0014, autocommit=True) as conn:
        conn.execute(old_rules)
        with pytest.raises(
            psycopg.errors.RaiseException, match=r"still reads events\.id .*migration 0013 must come first"
        ):
            apply_migrations(before_0014, target=14)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (BEFORE,)
        assert len(conn.execute(COLUMN, ("id",)).fetchall()) > 2
