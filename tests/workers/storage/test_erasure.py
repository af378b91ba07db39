"""Erasing a person (workers.storage.erasure) against a real PostgreSQL: every row of hers goes,
in every partition and table, her neighbours' stay, and the audit row names her only by hash."""

from __future__ import annotations

import re

import psycopg
import pytest

from tests.people import (
    ANNA,
    ANNA_AU,
    ANNA_NORMAL,
    ANNA_PROFILE,
    CARL,
    XANNA,
    count,
    rows_naming,
    store_everyone,
)
from tests.workers.storage.test_messages import COUNTED, PLAIN_COUNT
from workers.storage import erased
from workers.storage.erased import Selector
from workers.storage.erasure import Person, address_pattern, call_holds, erase, list_erasures


@pytest.fixture
def stored(database_url: str) -> str:
    store_everyone(database_url)
    return database_url


def test_an_erase_removes_her_from_every_partition_and_table_and_leaves_the_others(
    stored: str, db: psycopg.Connection, key: bytes
) -> None:
    months = count(db, "SELECT count(DISTINCT tableoid) FROM events WHERE lower(recipient) = %s", ANNA_NORMAL)
    assert months == 3  # her events lie in three monthly partitions
    assert rows_naming(db, ANNA)  # and she is in events and rejected_events
    neighbours = {a: rows_naming(db, a) for a in (XANNA, ANNA_AU, CARL)}
    assert all(neighbours.values())
    events_before = count(db, "SELECT count(*) FROM events")
    rejected_before = count(db, "SELECT count(*) FROM rejected_events")

    with psycopg.connect(stored, autocommit=True) as conn:
        result = erase(conn, Selector.email("  anna.smith+NEWS@example.COM "), key)

    assert rows_naming(db, ANNA) == []
    # Hers without her address: the open of her message, the unsubscribe and profile change of her profile.
    assert count(db, "SELECT count(*) FROM events WHERE message_id LIKE 'ma%%' OR profile_id = %s", ANNA_PROFILE) == 0
    assert result.removed == {"events": 6, "messages": 3, "rejected_events": 4}
    assert result.profiles == [ANNA_PROFILE]
    assert count(db, "SELECT count(*) FROM events") == events_before - 6
    assert count(db, "SELECT count(*) FROM rejected_events") == rejected_before - 4
    assert {a: rows_naming(db, a) for a in (XANNA, ANNA_AU, CARL)} == neighbours  # untouched


def test_the_audit_row_holds_a_keyed_hash_and_the_counts_never_the_person(
    stored: str, db: psycopg.Connection, key: bytes
) -> None:
    with psycopg.connect(stored, autocommit=True) as conn:
        erase(conn, Selector.email(ANNA), key)
        records = list_erasures(conn)
    assert len(records) == 1
    record = records[0]
    assert record.kind == "email" and record.total == 13
    assert record.removed == {"events": 6, "messages": 3, "rejected_events": 4}
    assert record.selector_hash == erased.keyed_hash(key, "email", ANNA_NORMAL)
    for table in ("erasures", "erased_selectors"):
        for (text,) in db.execute(f"SELECT row_to_json(t)::text FROM {table} t"):
            assert not re.search(r"anna|example|7001", text, re.IGNORECASE), text
    # The list holds her address and the profile found with it, each once.
    kinds = sorted(r[0] for r in db.execute("SELECT kind FROM erased_selectors"))
    assert kinds == ["email", "profile"]


def test_an_erase_is_safe_to_repeat_and_records_the_repeat(stored: str, db: psycopg.Connection, key: bytes) -> None:
    with psycopg.connect(stored, autocommit=True) as conn:
        first = erase(conn, Selector.email(ANNA), key)
        again = erase(conn, Selector.email(ANNA), key)
        nobody = erase(conn, Selector.email("nobody@example.org"), key)
    assert first.total == 13 and again.total == 0 and nobody.total == 0
    assert count(db, "SELECT count(*) FROM erasures") == 3
    assert count(db, "SELECT count(*) FROM erased_selectors") == 3  # anna, her profile, nobody


def test_a_dry_run_counts_what_would_go_and_changes_nothing(stored: str, db: psycopg.Connection) -> None:
    before = (count(db, "SELECT count(*) FROM events"), count(db, "SELECT count(*) FROM rejected_events"))
    with psycopg.connect(stored, autocommit=True) as conn:
        result = erase(conn, Selector.email(ANNA), None, dry_run=True)
    assert result.removed == {"events": 6, "messages": 3, "rejected_events": 4}
    assert (count(db, "SELECT count(*) FROM events"), count(db, "SELECT count(*) FROM rejected_events")) == before
    assert count(db, "SELECT count(*) FROM erasures") == 0
    assert count(db, "SELECT count(*) FROM erased_selectors") == 0


def test_a_profile_erase_takes_its_rows_and_messages_and_a_database_narrows_it(
    stored: str, db: psycopg.Connection, key: bytes
) -> None:
    with psycopg.connect(stored, autocommit=True) as conn:
        other_database = erase(conn, Selector.profile(ANNA_PROFILE, 13), key)
        assert other_database.removed["events"] == 0
        result = erase(conn, Selector.profile(ANNA_PROFILE, 12), key)
    # open ma1 + delivery ma3 (profile), unsubscribe, profile change; then the address found with
    # the profile: the click ma2, and the open of ma2 (her message)
    assert result.removed == {"events": 6, "messages": 3, "rejected_events": 4}
    assert result.addresses == 1
    assert rows_naming(db, ANNA) == []
    assert count(db, "SELECT count(*) FROM events WHERE profile_id = 7002") == 2  # Carl's stay
    assert sorted(r[0] for r in db.execute("SELECT kind FROM erased_selectors")) == ["email", "profile"]


def test_the_messages_table_is_erased_too_where_it_exists(stored: str, db: psycopg.Connection, key: bytes) -> None:
    if count(db, "SELECT count(*) FROM pg_class WHERE relname = 'messages' AND relkind = 'r'") == 0:
        pytest.skip("no messages table in this schema (migration 0006 not here)")
    assert count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'ma%%'") > 0
    others = count(db, "SELECT count(*) FROM messages WHERE message_id NOT LIKE 'ma%%'")
    with psycopg.connect(stored, autocommit=True) as conn:
        result = erase(conn, Selector.email(ANNA), key)
    assert result.removed["messages"] > 0
    assert count(db, "SELECT count(*) FROM messages WHERE message_id LIKE 'ma%%'") == 0
    assert count(db, "SELECT count(*) FROM messages WHERE message_id NOT LIKE 'ma%%'") == others


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"mime": "To: <anna.smith+news@example.com>"}', True),
        ('{"recipient": "ANNA.Smith+news@example.com"}', True),
        ('{"recipient": "xanna.smith+news@example.com"}', False),
        ('{"recipient": "anna.smith+news@example.com.au"}', False),
        ('{"recipient": "anna.smith+news@example.community"}', False),
        ('{"note": "write to anna.smith+news@example.com."}', True),
    ],
)
def test_the_payload_pattern_finds_the_address_as_a_whole(db: psycopg.Connection, text: str, found: bool) -> None:
    pattern = address_pattern(ANNA_NORMAL)
    assert db.execute("SELECT %s::jsonb::text ~* %s", (text, pattern)).fetchone()[0] is found


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b"recipient=Anna.Smith%2Bnews%40Example.com", True),
        (b"recipient=anna.smith+news@example.com", True),
        (b'{"r":"anna.smith+news\\u0040example.com"}', True),
        (b"recipient=xanna.smith%2Bnews%40example.com", False),
        (b"profile=7001&x=1", True),
        (b"profile=70011", False),
        (b'{"id": "ma3"}', True),
    ],
)
def test_a_raw_call_is_matched_in_every_encoding(body: bytes, found: bool) -> None:
    person = Person(profiles={ANNA_PROFILE}, messages={"ma3"})
    assert call_holds(body, Selector.email(ANNA), person) is found


def test_the_mailing_figures_lose_her_events_too(stored: str, db: psycopg.Connection, key: bytes) -> None:
    """Her events with a message id leave the totals through `messages`; her unsubscribe (a
    mailing and a profile, no message id) was counted for its mailing directly, and is taken
    off again (migration 0008)."""
    before = db.execute("SELECT unsubscribes FROM mailing_stats WHERE mailing_id = 9").fetchone()
    assert before is not None and before[0] == 2  # hers and Carl's
    with psycopg.connect(stored, autocommit=True) as conn:
        erase(conn, Selector.email(ANNA), key)
    assert db.execute("SELECT unsubscribes FROM mailing_stats WHERE mailing_id = 9").fetchone() == (1,)
    got = db.execute(f"SELECT {COUNTED} FROM mailing_stats ORDER BY mailing_id").fetchall()
    assert got == db.execute(PLAIN_COUNT).fetchall()
