"""Event keys as `events` stores them (workers.storage.keys): the first 128 bits, read back and
typed in in every form, and the schema's key type found per connection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from workers.events.model import Event, event_key
from workers.storage import copy_text, keys, store

WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)
KEY = event_key("opened", "m-1", WHEN, {"id": "m-1"})


def test_the_stored_key_is_the_first_128_bits_of_the_model_key() -> None:
    assert len(KEY) == 64
    assert keys.stored_key(KEY) == KEY[:32]
    assert uuid.UUID(keys.stored_key(KEY)).hex == KEY[:32]  # what PostgreSQL's uuid input reads


@pytest.mark.parametrize(
    "given",
    [KEY, KEY[:32], KEY.upper(), str(uuid.UUID(KEY[:32])), "{" + str(uuid.UUID(KEY[:32])) + "}", f"  {KEY}\n"],
)
def test_a_key_is_taken_in_each_form_a_user_may_copy(given: str) -> None:
    assert keys.parse_key(given) == KEY[:32]


@pytest.mark.parametrize("given", ["", "abc", KEY[:31], KEY + "0", KEY[:48], "g" * 32, "k-1", KEY[:30] + "--"])
def test_anything_else_is_no_key(given: str) -> None:
    assert keys.parse_key(given) is None


def test_a_stored_key_reads_back_as_32_hex_digits() -> None:
    assert keys.key_text(uuid.UUID(KEY[:32])) == KEY[:32]
    assert keys.key_text(KEY) == KEY[:32]  # a text key, before migration 0011


def _open() -> Event:
    return Event(
        event_key=KEY,
        event_type="opened",
        copernica_type="open",
        occurred_at=WHEN,
        received_at=WHEN + timedelta(seconds=1),
        source="webhook",
        message_id="m-1",
        recipient="a@example.com",
        payload={"id": "m-1"},
    )


def test_copy_text_carries_the_stored_key_in_both_ways_of_writing() -> None:
    """The fast line and the escaped one (a tab in a column) both write the stored form; before
    0011 (`short_key=False`) the whole key."""
    event = _open()
    odd = Event(**{**{f: getattr(event, f) for f in copy_text.EVENT_COLUMNS}, "description": "a\tb"})
    for each in (event, odd):
        assert copy_text.copy_line(each).split("\t", 1)[0] == KEY[:32]
        assert copy_text.copy_line(each, short_key=False).split("\t", 1)[0] == KEY


def test_the_schema_key_type_is_found_and_remembered(database_url: str) -> None:
    with store.connect(database_url) as conn:
        assert not keys.known_uuid(conn)
        assert keys.uuid_keys(conn)
        assert keys.known_uuid(conn)
        conn.rollback()


def test_a_stored_key_is_the_uuid_of_its_first_32_digits(database_url: str, db: psycopg.Connection) -> None:
    """What `store` writes is what a search by the stored key finds, and a re-delivery is one row."""
    event = _open()
    with store.connect(database_url) as conn:
        assert store.store(conn, [event]).stored == 1
        assert store.store(conn, [event]).duplicates == 1
    assert db.execute("SELECT event_key FROM events").fetchall() == [(uuid.UUID(KEY[:32]),)]
    assert db.execute("SELECT pg_typeof(event_key)::text FROM events").fetchone() == ("uuid",)
