"""User agents stored once (migration 0012): each row holds its user agent's hash, the text is in
`user_agents`, added in the transaction that stores the row; against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.keys import key_name, name_key, stored
from workers.events.model import Event
from workers.storage import agents, store

WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1"


def _event(n: int, **values: Any) -> Event:
    base = Event(
        event_key=name_key(f"ua-{n}"),
        event_type="opened",
        copernica_type="open",
        occurred_at=WHEN + timedelta(seconds=n),
        received_at=WHEN + timedelta(hours=1),
        source="webhook",
        message_id=f"m{n}",
        recipient="a@example.com",
        payload={"id": f"m{n}"},
    )
    return dataclasses.replace(base, **values)


@pytest.fixture
def conn(database_url: str) -> Any:
    with store.connect(database_url) as connection:
        yield connection


def _texts(conn: psycopg.Connection) -> dict[str, str | None]:
    rows = conn.execute("SELECT event_key, e.user_agent FROM events e ORDER BY event_key").fetchall()
    return {key_name(key): agent for key, agent in rows}


@pytest.mark.parametrize("text", ["Mozilla/5.0", BROWSER, "é ü 中文 \u2028 tab\there", "x" * 3000, ""])
def test_the_python_hash_is_the_sql_one(db: psycopg.Connection, text: str) -> None:
    assert db.execute("SELECT agent_hash(%s)", (text,)).fetchone() == (agents.agent_hash(text),)


def test_each_text_is_stored_once_and_read_through_the_row(conn: psycopg.Connection) -> None:
    events = [_event(1, user_agent=BROWSER), _event(2, user_agent=BROWSER), _event(3, user_agent="Mozilla/5.0")]
    events.append(_event(4))  # none
    assert store.store(conn, events).stored == 4
    conn.commit()
    assert conn.execute("SELECT count(*) FROM user_agents").fetchone() == (2,)
    assert _texts(conn) == {"ua-1": BROWSER, "ua-2": BROWSER, "ua-3": "Mozilla/5.0", "ua-4": None}
    assert conn.execute("SELECT user_agent_hash FROM events WHERE event_key = %s", (stored("ua-1"),)).fetchone() == (
        agents.agent_hash(BROWSER),
    )
    # a later transaction of the same worker names the text without adding it again
    assert agents.agent_hash(BROWSER) in agents.known(conn)
    assert store.store(conn, [_event(5, user_agent=BROWSER)]).stored == 1
    conn.commit()
    assert conn.execute("SELECT count(*) FROM user_agents").fetchone() == (2,)
    assert _texts(conn)["ua-5"] == BROWSER


def test_a_text_added_by_a_rolled_back_transaction_is_added_again(conn: psycopg.Connection) -> None:
    """Only what a transaction that committed added is remembered: a store inside an outer
    transaction the caller rolls back leaves nothing, and the next store adds the text again."""
    with conn.transaction(force_rollback=True):
        store.store(conn, [_event(1, user_agent=BROWSER)])
    assert conn.execute("SELECT count(*) FROM user_agents").fetchone() == (0,)
    assert agents.agent_hash(BROWSER) not in agents.known(conn)
    store.store(conn, [_event(1, user_agent=BROWSER)])
    conn.commit()
    assert _texts(conn) == {"ua-1": BROWSER}


def test_texts_added_after_the_savepoint_survive_the_fallback(conn: psycopg.Connection) -> None:
    """A direct COPY that meets a stored row rolls back to its savepoint, taking the texts added
    since; the rows redone through the stage still find theirs."""
    store.store(conn, [_event(1, user_agent="Mozilla/5.0")])
    conn.commit()
    late = "Late/1.0 (a text first met in the second chunk)"
    chunks = [
        store.Chunk([_event(2, user_agent="Mozilla/5.0")], None, []),
        store.Chunk([_event(1, user_agent="Mozilla/5.0"), _event(3, user_agent=late)], None, []),
    ]
    result = store.store_chunks(conn, chunks)
    conn.commit()
    assert (result.stored, result.duplicates) == (2, 1)
    assert _texts(conn) == {"ua-1": "Mozilla/5.0", "ua-2": "Mozilla/5.0", "ua-3": late}


def test_two_texts_with_one_hash_are_refused_not_mixed_up(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO user_agents VALUES (%s, 'another text')", (agents.agent_hash(BROWSER),))
    conn.commit()
    with pytest.raises(agents.AgentHashClash):
        store.store(conn, [_event(1, user_agent=BROWSER)])
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
