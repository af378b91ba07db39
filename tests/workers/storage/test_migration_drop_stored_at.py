"""Migration 0015: `events.stored_at` goes. Every row kept as it was but for that column, and a
view of an operator's on the column stops it first, named, changing nothing."""

from __future__ import annotations

import psycopg
import pytest

from tests.workers.storage.test_messages import message_events
from workers.storage import store
from workers.storage.schema import apply_migrations

LIVES = message_events("m1", 1) + message_events("m2", 2)
ROWS = "SELECT to_jsonb(e) - 'stored_at', event_fields(e) FROM events e ORDER BY event_key, occurred_at"
HAS_COLUMN = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'stored_at'"
    " AND NOT attisdropped"
)


@pytest.fixture
def before_0015(scratch_database_url: str) -> str:
    apply_migrations(scratch_database_url, target=14)
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, LIVES).stored == len(LIVES)
    return scratch_database_url


def test_rows_are_kept_and_a_view_on_the_column_stops_it_named(before_0015: str) -> None:
    with psycopg.connect(before_0015, autocommit=True) as conn:
        rows = conn.execute(ROWS).fetchall()
        conn.execute("CREATE VIEW ops_lag AS SELECT stored_at - received_at AS lag FROM events")
        conn.execute("CREATE VIEW ops_types AS SELECT event_type FROM events")  # not on the column
        with pytest.raises(psycopg.errors.RaiseException, match=r"views read events\.stored_at \(ops_lag\)"):
            apply_migrations(before_0015, target=15)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (14,)
        assert conn.execute(HAS_COLUMN).fetchone() == (1,)
        conn.execute("DROP VIEW ops_lag")
    assert [m.version for m in apply_migrations(before_0015, target=15)] == [15]
    with psycopg.connect(before_0015, autocommit=True) as conn:
        assert conn.execute(HAS_COLUMN).fetchone() == (0,)
        assert conn.execute(ROWS).fetchall() == rows
        assert conn.execute("SELECT count(*) FROM ops_types").fetchone() == (len(LIVES),)
    with store.connect(before_0015) as conn:  # and the workers store on
        assert store.store(conn, LIVES).duplicates == len(LIVES)
        more = message_events("m3", 3)
        assert store.store(conn, more).stored == len(more)
