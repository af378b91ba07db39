"""Migration 0004: a database at 0003 holding rows of several months becomes a partitioned
`events` with every row, id, key and value kept; views and grants come back; ids go on past the
old ones; a second migrate changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from tests.fixtures_copernica import TZ, WEBHOOK_CASES, wire
from workers.events.model import from_webhook
from workers.storage import partitions, store
from workers.storage.schema import apply_migrations

RECEIVED = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
# Several months, a month boundary to the microsecond, the epoch (the fallback of a call whose
# receipt time was insane) and a bogus far-future time.
TIMES = [
    datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 15, 10, 30, tzinfo=UTC),
    datetime(2026, 3, 2, 7, 0, 1, tzinfo=UTC),
    datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2099, 6, 1, 12, tzinfo=UTC),
]


def _at_0003_with_rows(url: str) -> list[tuple]:
    apply_migrations(url, target=3)
    with psycopg.connect(url, autocommit=True) as conn:
        for index, moment in enumerate(TIMES):
            conn.execute(
                "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
                " message_id, recipient, payload, mailing_id, tags, ip)"
                " VALUES (%s, 'opened', 'open', %s, %s, 'webhook', %s, 'a@example.com', %s, 42, '{a,b}', '192.0.2.1')",
                (f"key-{index}", moment, RECEIVED, f"m{index}", Jsonb({"n": index})),
            )
        conn.execute(
            "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
            " message_id, payload) VALUES ('sent', 'sent', 'cdm-attempts', %s, %s, 'logfile', 'm4', '{}')",
            (TIMES[4], RECEIVED),
        )
        conn.execute("DELETE FROM events WHERE event_key = 'key-2'")  # a gap in the ids
        with conn.transaction(force_rollback=True):  # a rolled-back insert uses up ids past max(id)
            conn.execute(
                "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at,"
                " source, payload) SELECT 'x' || i, 'opened', 'open', now(), now(), 'webhook', '{}'"
                " FROM generate_series(1, 5) i"
            )
        conn.execute("INSERT INTO rejected_events (call_key, received_at, reason, body) VALUES ('c1', now(), 'x', 'y')")
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ingest_reader')"
            " THEN CREATE ROLE ingest_reader; END IF; END $$"
        )
        conn.execute("GRANT SELECT ON events, mailing_stats TO ingest_reader")
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()


def _snapshot(conn: psycopg.Connection) -> dict[str, object]:
    return {
        "rows": conn.execute("SELECT * FROM events ORDER BY id").fetchall(),
        "view": conn.execute("SELECT pg_get_viewdef('mailing_stats')").fetchone()[0],
        "stats": conn.execute("SELECT * FROM mailing_stats ORDER BY mailing_id").fetchall(),
        "grants": conn.execute(
            "SELECT relname, relacl::text FROM pg_class WHERE relname IN ('events', 'mailing_stats') ORDER BY 1"
        ).fetchall(),
    }


def test_upgrade_keeps_every_row_id_and_key(scratch_database_url: str) -> None:
    url = scratch_database_url
    _at_0003_with_rows(url)
    with psycopg.connect(url, autocommit=True) as conn:
        before = _snapshot(conn)
        old_next = conn.execute("SELECT last_value FROM events_id_seq").fetchone()[0] + 1

    assert [m.version for m in apply_migrations(url, target=4)] == [4]

    with psycopg.connect(url, autocommit=True) as conn:
        after = _snapshot(conn)
        assert after == before  # every row and value (ids and keys included), the view, its result, grants
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'events'").fetchone()[0] == "p"
        assert conn.execute("SELECT to_regclass('events_unpartitioned')").fetchone()[0] is None
        # every row in the partition of its month; the default partition empty
        placed = conn.execute("SELECT tableoid::regclass::text, occurred_at FROM events").fetchall()
        assert all(name == f"events_p{moment.astimezone(UTC):%Y%m}" for name, moment in placed)
        assert conn.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0
        months = {p.month for p in partitions.list_partitions(conn) if p.month}
        today = partitions.month_of(datetime.now(UTC))
        ahead = {partitions.add_months(today, n) for n in range(-partitions.BEHIND, partitions.AHEAD + 1)}
        assert {partitions.month_of(t) for t in TIMES} | ahead <= months
        constraints = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'events'::regclass"
            )
        }
        assert constraints["events_pkey"] == "PRIMARY KEY (id, occurred_at)"
        assert constraints["events_event_key_occurred_at_key"] == "UNIQUE (event_key, occurred_at)"
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
        assert {
            "events_event_type_idx",
            "events_occurred_at_idx",
            "events_mailing_type_idx",
            "events_message_id_idx",
            "events_recipient_idx",
        } <= indexes
        assert conn.execute("SELECT pg_get_serial_sequence('events', 'id')").fetchone()[0] == "public.events_id_seq"
        # a new row's id comes after every old id and every number the old sequence gave
        conn.execute(
            "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
            " payload) VALUES ('new', 'opened', 'open', now(), now(), 'webhook', '{}')"
        )
        new_id = conn.execute("SELECT id FROM events WHERE event_key = 'new'").fetchone()[0]
        assert new_id == old_next > max(r[0] for r in before["rows"])  # type: ignore[union-attr]
        assert conn.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 1

        # a second migrate changes nothing: no migration, no partition, the same rows
        names = [p.name for p in partitions.list_partitions(conn)]
        assert apply_migrations(url, target=4) == []
        assert [p.name for p in partitions.list_partitions(conn)] == names
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(before["rows"]) + 1  # type: ignore[arg-type]


def test_redelivery_after_upgrade_is_no_new_row(scratch_database_url: str) -> None:
    """Keys and occurred_at are kept, so an event stored before the conversion is matched."""
    apply_migrations(scratch_database_url, target=3)
    case = next(c for c in WEBHOOK_CASES if c.name == "open")
    event = from_webhook(case.form, wire(case, "form"), TZ)
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, [event]).stored == 1  # stored by the pre-partitioning schema
    apply_migrations(scratch_database_url)
    with store.connect(scratch_database_url) as conn:
        result = store.store(conn, [event, event])
        count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert (result.stored, result.duplicates, count) == (0, 2, 1)


def test_upgrade_of_an_empty_table(scratch_database_url: str) -> None:
    apply_migrations(scratch_database_url, target=3)
    apply_migrations(scratch_database_url, target=4)
    month = f"events_p{datetime.now(UTC) - timedelta(days=1):%Y%m}"
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
            " payload) VALUES (md5('k'), 'opened', 'open', now() - interval '1 day', now(), 'webhook', '{}')"
        )
        assert conn.execute("SELECT id, tableoid::regclass::text FROM events").fetchone() == (1, month)
    apply_migrations(scratch_database_url)  # and on to today's schema (0014 drops `id`)
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT event_key = md5('k')::uuid, tableoid::regclass::text FROM events").fetchall() == [
            (True, month)
        ]
