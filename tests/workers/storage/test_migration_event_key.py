"""Migration 0011: `events.event_key` becomes a uuid (the key's first 128 bits). Rows kept with
their keys cut, the unique constraint on every partition, views on the column made again, and
workers storing on across it: one whose stage was made before, one that wrote its lines before."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from workers.events.model import Event, event_key
from workers.storage import keys, store
from workers.storage.schema import apply_migrations, available

BEFORE = max(m.version for m in available() if m.version < 11)  # the schema 0011 upgrades
LEGACY = 5  # before `messages` (0006): a schema every version of the worker stores into
WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)


def _open(n: int, occurred: datetime = WHEN, received: datetime | None = None) -> Event:
    message = f"m-{n}"
    return Event(
        event_key=event_key("opened", message, occurred, {"id": message}),
        event_type="opened",
        copernica_type="open",
        occurred_at=occurred,
        received_at=received or occurred + timedelta(seconds=2),
        source="webhook",
        message_id=message,
        recipient="a@example.com",
        mailing_id=7,
        payload={"id": message},
    )


def _untimed(n: int) -> Event:
    """No usable time: occurred_at is the time of receipt (stored through the stage, `_NEW_KEY`)."""
    moment = WHEN + timedelta(seconds=n, microseconds=500)
    return _open(n, moment, moment)


# Three months (three partitions), and one row through the stage.
EVENTS = [_open(1), _open(2, WHEN - timedelta(days=31)), _open(3, WHEN - timedelta(days=62)), _untimed(4)]


@pytest.fixture
def before_0011(scratch_database_url: str) -> str:
    """A database at the migration before 0011 holding EVENTS (text keys), stored by this code
    before `messages` (LEGACY), then migrated so far."""
    apply_migrations(scratch_database_url, target=LEGACY)
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, EVENTS).stored == len(EVENTS)
    apply_migrations(scratch_database_url, target=BEFORE)
    return scratch_database_url


@pytest.fixture
def without_0011(scratch_database_url: str) -> str:
    """Every migration but 0011 (as a database migrated before 0011 came, whatever came after
    it), holding EVENTS stored by a worker of this code (text keys)."""
    apply_migrations(scratch_database_url)
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE events ALTER COLUMN event_key TYPE text")  # no rows yet
        conn.execute("DELETE FROM schema_migrations WHERE version = 11")
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, EVENTS).stored == len(EVENTS)
    return scratch_database_url


def _rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT message_id, event_key, occurred_at FROM events ORDER BY message_id").fetchall()


@pytest.mark.parametrize("state", ["before_0011", "without_0011"])
def test_before_0011_the_whole_key_is_stored_as_text(state: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(state)
    with psycopg.connect(url) as conn:
        assert {r[1] for r in _rows(conn)} == {e.event_key for e in EVENTS}


def test_every_row_is_kept_with_its_key_cut_to_32_digits(before_0011: str) -> None:
    with psycopg.connect(before_0011) as conn:
        before = _rows(conn)
    assert 11 in [m.version for m in apply_migrations(before_0011)]
    with psycopg.connect(before_0011) as conn:
        after = _rows(conn)
        types = conn.execute(
            "SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN pg_class c"
            " ON c.oid = a.attrelid WHERE a.attname = 'event_key' AND (c.oid = 'events'::regclass"
            " OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))"
        ).fetchall()
        unique = conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_inherits h ON h.inhrelid = c.oid AND h.inhparent = 'events'::regclass"
            " WHERE i.indisunique AND pg_get_indexdef(i.indexrelid) LIKE '%(event_key, occurred_at)'"
        ).fetchall()
        parts = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass").fetchone()[0]
    assert len(after) == len(before) == len(EVENTS)
    assert [(m, uuid.UUID(k[:32]), t) for m, k, t in before] == after
    assert {t for _name, t in types} == {"uuid"} and len(types) == parts + 1
    assert len(unique) == parts  # the constraint's index on every partition
    assert apply_migrations(before_0011) == []


def test_a_partition_made_later_has_the_uuid_key(before_0011: str) -> None:
    apply_migrations(before_0011)
    with psycopg.connect(before_0011) as conn:
        assert conn.execute("SELECT events_create_partition(%s)", (date(2031, 5, 1),)).fetchone()[0]
        kind = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'events_p203105'::regclass AND attname = 'event_key'"
        ).fetchone()
        conn.commit()
    assert kind == ("uuid",)
    late = _open(9, datetime(2031, 5, 3, tzinfo=UTC))
    with store.connect(before_0011) as conn:
        assert store.store(conn, [late, late]).stored == 1
        assert conn.execute("SELECT tableoid::regclass::text FROM events WHERE message_id = 'm-9'").fetchone() == (
            "events_p203105",
        )


def test_a_redelivery_of_a_stored_event_is_still_a_duplicate(before_0011: str) -> None:
    apply_migrations(before_0011)
    with store.connect(before_0011) as conn:
        result = store.store(conn, [*EVENTS, _open(5)])
        count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert (result.stored, result.duplicates, count) == (1, len(EVENTS), len(EVENTS) + 1)


def test_a_worker_whose_stage_predates_the_migration_stores_on(without_0011: str) -> None:
    """A long-lived connection made its stage (text key) before 0011: its next transactions
    find the uuid column, write the short keys and make a stage of the new shape."""
    with store.connect(without_0011) as worker:
        store.store(worker, [_untimed(6), EVENTS[0]])  # the stage is made (and a duplicate met)
        stages = worker.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'incoming_events_%'").fetchone()
        worker.commit()
        assert stages == (1,)
        apply_migrations(without_0011)
        result = store.store(worker, [*EVENTS, _untimed(6), _untimed(7), _open(8)])
        assert (result.stored, result.duplicates) == (2, len(EVENTS) + 1)
        assert store.store(worker, [_untimed(7), _open(8)]).duplicates == 2
    with psycopg.connect(without_0011) as conn:
        keys_stored = [r[0] for r in conn.execute("SELECT event_key FROM events")]
        assert conn.execute("SELECT count(*) FROM rejected_events").fetchone() == (0,)
    assert len(keys_stored) == len(EVENTS) + 3 == len(set(keys_stored))


def test_lines_written_for_the_old_schema_fail_the_job_and_lose_nothing(
    without_0011: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration commits between the worker's look at the schema and its COPY: the whole
    keys do not fit the uuid. Nothing is kept as a refused call; the retry stores the batch."""
    with store.connect(without_0011) as worker:
        store.store(worker, [_untimed(6)])  # a stage of the old shape
        worker.commit()
        apply_migrations(without_0011)
        monkeypatch.setattr(keys, "known_uuid", lambda _conn: False)
        monkeypatch.setattr(keys, "uuid_keys", lambda _conn: False)  # as read just before
        batch = [_open(10), _untimed(11), EVENTS[0]]
        try:
            first = store.store(worker, batch)
        except psycopg.Error as exc:  # the job fails: RQ retries it
            assert not isinstance(exc, psycopg.DataError), exc
            first = None
        monkeypatch.undo()
        retry = store.store(worker, batch)
    with psycopg.connect(without_0011) as conn:
        rejected = conn.execute("SELECT count(*) FROM rejected_events").fetchone()[0]
        count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert rejected == 0
    assert count == len(EVENTS) + 1 + 2
    assert first is None or first.stored == 2
    assert retry.stored == (2 if first is None else 0)


def test_views_on_the_key_are_made_again_with_their_grants(before_0011: str) -> None:
    with psycopg.connect(before_0011, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS key_reader")
        conn.execute("CREATE ROLE key_reader")
        try:
            conn.execute("CREATE VIEW keyed AS SELECT event_key, occurred_at, message_id FROM events")
            conn.execute("CREATE VIEW keyed_opens AS SELECT event_key FROM keyed WHERE message_id LIKE 'm-%'")
            conn.execute("CREATE VIEW whole AS SELECT * FROM events")
            conn.execute("GRANT SELECT ON keyed, keyed_opens TO key_reader")
            apply_migrations(before_0011, target=11)  # 0011 alone: later ones answer for their own columns
            assert sorted(r[0] for r in conn.execute("SELECT event_key FROM keyed_opens")) == sorted(
                uuid.UUID(e.event_key[:32]) for e in EVENTS
            )
            assert conn.execute("SELECT count(*) FROM whole").fetchone() == (len(EVENTS),)
            assert conn.execute(
                "SELECT has_table_privilege('key_reader', 'keyed', 'SELECT'),"
                " has_table_privilege('key_reader', 'keyed_opens', 'SELECT')"
            ).fetchone() == (True, True)
            assert conn.execute("SELECT pg_typeof(event_key)::text FROM keyed LIMIT 1").fetchone() == ("uuid",)
        finally:
            conn.execute("DROP VIEW IF EXISTS keyed_opens, keyed, whole")
            conn.execute("DROP ROLE key_reader")


def test_a_key_that_is_not_hex_is_kept_as_its_md5(scratch_database_url: str) -> None:
    apply_migrations(scratch_database_url, target=BEFORE)
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source, payload)"
            " VALUES ('typed-by-hand', 'opened', 'open', %s, %s, 'webhook', '{}')",
            (WHEN, WHEN),
        )
    apply_migrations(scratch_database_url)
    with psycopg.connect(scratch_database_url) as conn:
        assert conn.execute("SELECT event_key = md5('typed-by-hand')::uuid FROM events").fetchone() == (True,)
