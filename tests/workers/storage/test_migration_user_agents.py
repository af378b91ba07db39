"""Migration 0012: user agents stored once. Stored rows keep their user agent (read through the
row), each text once in `user_agents`, and views on the column are made again with their grants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from workers.events.model import Event, event_key
from workers.storage import agents, store
from workers.storage.schema import apply_migrations

LEGACY = 5  # before `messages` (0006): a schema every version of the worker stores into
WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/121.0"


def _open(n: int, agent: str | None) -> Event:
    message = f"m-{n}"
    occurred = WHEN + timedelta(seconds=n)
    return Event(
        event_key=event_key("opened", message, occurred, {"id": message}),
        event_type="opened",
        copernica_type="open",
        occurred_at=occurred,
        received_at=occurred + timedelta(seconds=2),
        source="webhook",
        message_id=message,
        recipient="a@example.com",
        user_agent=agent,
        payload={"id": message},
    )


EVENTS = [_open(1, BROWSER), _open(2, BROWSER), _open(3, "Mozilla/5.0"), _open(4, None)]


def test_stored_user_agents_are_kept_once_and_read_through_the_row(scratch_database_url: str) -> None:
    apply_migrations(scratch_database_url, target=LEGACY)
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, EVENTS).stored == len(EVENTS)  # the text in the column, as before
        conn.commit()
    apply_migrations(scratch_database_url, target=12)
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT message_id, e.user_agent FROM events e").fetchall())
        assert rows == {"m-1": BROWSER, "m-2": BROWSER, "m-3": "Mozilla/5.0", "m-4": None}
        assert conn.execute("SELECT count(*) FROM user_agents").fetchone() == (2,)  # each text once
        assert conn.execute("SELECT user_agent_hash FROM events WHERE message_id = 'm-1'").fetchone() == (
            agents.agent_hash(BROWSER),
        )
    apply_migrations(scratch_database_url)
    with store.connect(scratch_database_url) as conn:  # and the workers store on, by hash
        assert store.store(conn, [_open(5, BROWSER)]).stored == 1
        conn.commit()
        assert conn.execute("SELECT count(*) FROM user_agents").fetchone() == (2,)


def test_a_view_on_the_column_stops_the_migration_and_is_named(scratch_database_url: str) -> None:
    """Its definition names `user_agent` bare, which would be no column after: the migration stops
    before changing anything and says which views to make again."""
    apply_migrations(scratch_database_url, target=LEGACY)
    with store.connect(scratch_database_url) as conn:
        store.store(conn, EVENTS)
        conn.commit()
    apply_migrations(scratch_database_url, target=11)
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        conn.execute("CREATE VIEW whole AS SELECT * FROM events")
        with pytest.raises(psycopg.errors.RaiseException, match=r"views read events.user_agent \(whole\)"):
            apply_migrations(scratch_database_url, target=12)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (11,)
        assert conn.execute("SELECT count(*) FROM events WHERE user_agent = %s", (BROWSER,)).fetchone() == (2,)
        conn.execute("DROP VIEW whole")
    assert [m.version for m in apply_migrations(scratch_database_url, target=12)] == [12]
