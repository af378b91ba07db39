"""Events reach PostgreSQL through COPY text the worker writes itself: every value comes back
as it was (NULs dropped), whatever characters COPY or array literals give a meaning to."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from tests.keys import key_name, name_key
from workers.events.compact import compact
from workers.events.model import Event
from workers.storage import agents, copy_text, store
from workers.storage.copy_text import COPY_COLUMNS, EVENT_COLUMNS, copy_line
from workers.storage.keys import key_text, stored_key

WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)
ODD = ["\\", "\\N", "\t", "\n", "\r", "\\t", '"', "'", ",", "{", "}", "NULL", "null", " ", "é", "\u2028", "x\x00y"]


def _event(n: int, **values: Any) -> Event:
    base = Event(
        event_key=name_key(f"key-{n}"),
        event_type="opened",
        copernica_type="open",
        occurred_at=WHEN,
        received_at=WHEN + timedelta(microseconds=123_456),
        source="webhook",
        message_id=f"m{n}",
        recipient="a@example.com",
        payload={"id": f"m{n}"},
    )
    return dataclasses.replace(base, **values)


def _stored(db: psycopg.Connection, events: list[Event]) -> dict[str, dict[str, Any]]:
    """The stored rows of `events`, by their key's name (`key-1`)."""
    db.execute("TRUNCATE events")
    result = store.store(db, events)
    assert (result.stored, result.rejected) == (len(events), 0)
    with db.cursor(row_factory=dict_row) as cur:
        # the payload as sent: the stored one less what the columns hold (workers.events.compact)
        rows = cur.execute("SELECT *, e.user_agent AS user_agent, event_fields(e) AS fields FROM events e").fetchall()
    return {key_name(row["event_key"]): row for row in rows}


def _expected(event: Event) -> dict[str, Any]:
    row = {}
    for name in EVENT_COLUMNS:
        value = getattr(event, name)
        if isinstance(value, str):
            value = value.replace("\x00", "")
        elif isinstance(value, list):
            value = [item.replace("\x00", "") if isinstance(item, str) else item for item in value]
        row[name] = value
    row["event_key"] = stored_key(event.event_key)  # what `events` keeps (workers.storage.keys)
    return row


def _as_read(row: dict[str, Any]) -> dict[str, Any]:
    got = {name: row[name] for name in EVENT_COLUMNS}
    got["event_key"] = key_text(row["event_key"])
    got["ip"] = str(row["ip"]) if row["ip"] is not None else None
    got["payload"] = row["fields"]
    return got


def test_plain_event_comes_back_column_for_column(db: psycopg.Connection) -> None:
    event = _event(
        1,
        ip="192.0.2.1",
        user_agent="Mozilla/5.0 (X11)",
        url="https://x.example/?a=1&b=2",
        link_id="7",
        mailing_id=4242,
        profile_id=2**63 - 1,
        subprofile_id=0,
        database_id=12,
        collection_id=3,
        template_id=9,
        tags=["newsletter", "weekly"],
        smtp_code=550,
        smtp_status="5.1.1",
        description="user unknown",
        account="1234",
    )
    row = _stored(db, [event])["key-1"]
    assert _as_read(row) == _expected(event)


@pytest.mark.parametrize("odd", ODD)
def test_characters_with_a_meaning_in_copy_or_arrays_come_back_as_sent(db: psycopg.Connection, odd: str) -> None:
    text = f"a{odd}b"
    clean = text.replace("\x00", "")  # a NUL in the payload is dropped: test_null_tag_element_and_nul_in_payload
    events = [
        _event(1, recipient=text, user_agent=odd, description=text, smtp_status=odd, account=text),
        _event(2, tags=[odd, text, "", "plain"], url=text, copernica_type=text),
        _event(3, payload={"v": clean, clean: [clean, None, 1]}, message_id=text),
    ]
    rows = _stored(db, events)
    for event in events:
        assert _as_read(rows[key_name(event.event_key)]) == _expected(event)


def test_null_tag_element_and_nul_in_payload(db: psycopg.Connection) -> None:
    event = _event(1, tags=[None, "NULL"], payload={"body": "a\x00b"})
    row = _stored(db, [event])["key-1"]
    assert row["tags"] == [None, "NULL"]
    assert row["payload"] == {"body": "ab"}


def test_times_keep_their_instant(db: psycopg.Connection) -> None:
    amsterdam = timezone(timedelta(hours=1))
    event = _event(
        1,
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=amsterdam),
        received_at=datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    row = _stored(db, [event])["key-1"]
    assert row["occurred_at"] == event.occurred_at and row["received_at"] == event.received_at


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=12), min_size=1, max_size=4), st.text(max_size=30))
def test_any_text_comes_back(db: psycopg.Connection, tags: list[str], text: str) -> None:
    event = _event(1, tags=tags, description=text or None, payload={"t": text.replace("\x00", "")})
    row = _stored(db, [event])["key-1"]
    assert _as_read(row) == _expected(event)


def test_a_row_is_escaped_only_when_it_needs_it() -> None:
    plain = copy_line(_event(1, tags=["a b"]))
    assert plain.count("\t") == len(EVENT_COLUMNS) - 1 and plain.endswith("\n")
    assert '\t{"a b"}\t' in plain and "\\\\" not in plain
    odd = copy_line(_event(1, description="x\ty\\N"))
    assert "\tx\\ty\\\\N\t" in odd and odd.count("\t") == len(EVENT_COLUMNS) - 1


def test_each_value_is_written_in_its_own_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """copy_line reads the fields by name: with every field a different value, each lands in
    COPY_COLUMNS' place for it, by the fast way (the general one is not called)."""
    event = _event(
        1,
        ip="192.0.2.1",
        user_agent="ua",
        url="https://u.example/",
        link_id="link",
        mailing_id=11,
        profile_id=12,
        subprofile_id=13,
        database_id=14,
        collection_id=15,
        template_id=16,
        tags=["tag"],
        smtp_code=550,
        smtp_status="5.1.1",
        description="desc",
        account="acct",
        machine=True,
        machine_rule="apple_proxy",
    )

    def general(_values: tuple[Any, ...]) -> str:
        raise AssertionError("the general way was taken")

    monkeypatch.setattr(copy_text, "_escaped_line", general)
    cells = copy_line(event).removesuffix("\n").split("\t")
    stored = {"payload": compact(event.payload, event), "user_agent": agents.agent_hash("ua")}  # 0006, 0012
    assert dict(zip(COPY_COLUMNS, cells, strict=True)) == {
        name: copy_text._cell(stored.get(name, getattr(event, name))) for name in COPY_COLUMNS
    } | {"event_key": stored_key(event.event_key)}


def test_chunks_of_one_transaction_share_one_stage(db: psycopg.Connection) -> None:
    """Only the first chunk with staged rows makes the staging table; later ones find it (and empty)."""
    db.execute("TRUNCATE events")
    made: list[bool] = []
    real = store.insert_staged

    def spy(cur: psycopg.Cursor, data: bytes, *, staged: bool, current: bool, short_key: bool) -> int:
        made.append(staged)
        return real(cur, data, staged=staged, current=current, short_key=short_key)

    def untimed(n: int) -> Event:  # no usable time: occurred_at is the time of receipt, staged
        return _event(n, occurred_at=WHEN, received_at=WHEN)

    chunks = [([], None, []), ([untimed(1)], None, []), ([untimed(2), untimed(3)], None, []), ([untimed(1)], None, [])]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "insert_staged", spy)
        result = store.store_chunks(db, chunks)
    assert (result.stored, result.duplicates) == (3, 1)
    assert made == [False, True]  # the empty chunk and the repeat stage nothing
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 3


def test_a_rolled_back_transaction_leaves_the_next_one_a_stage(db: psycopg.Connection) -> None:
    db.execute("TRUNCATE events")
    with pytest.raises(RuntimeError):
        store.store_chunks(db, _then_fail([([_event(1)], None, [])]))
    assert store.store(db, [_event(2)]).stored == 1  # the stage went with the rollback: made again


def _then_fail(chunks: list) -> Any:
    yield from chunks
    raise RuntimeError("parser broke")


def test_switch_interval_is_lowered_only_while_storing(db: psycopg.Connection) -> None:
    import sys

    seen: list[float] = []

    def chunks() -> Any:
        seen.append(sys.getswitchinterval())
        yield [_event(1)], None, []

    before = sys.getswitchinterval()
    db.execute("TRUNCATE events")
    store.store_chunks(db, chunks())
    assert seen == [min(before, store.WRITER_SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError):
        store.store_chunks(db, _then_fail([]))
    assert sys.getswitchinterval() == before


def test_the_cyclic_gc_is_off_only_while_storing(db: psycopg.Connection) -> None:
    import gc

    seen: list[bool] = []

    def chunks() -> Any:
        seen.append(gc.isenabled())
        yield [_event(1)], None, []

    assert gc.isenabled()
    db.execute("TRUNCATE events")
    store.store_chunks(db, chunks())
    assert seen == [False] and gc.isenabled()
    with pytest.raises(RuntimeError):
        store.store_chunks(db, _then_fail([]))
    assert gc.isenabled()


def test_one_key_twice_in_a_chunk_is_one_row(db: psycopg.Connection) -> None:
    """An event without a usable time: each delivery's occurred_at is its time of receipt, so
    the unique constraint (event_key, occurred_at) alone would keep both copies."""
    first = _event(1, occurred_at=WHEN, received_at=WHEN)
    again = _event(1, occurred_at=WHEN + timedelta(seconds=3), received_at=WHEN + timedelta(seconds=3))
    other = _event(2)
    db.execute("TRUNCATE events")
    result = store.store(db, [first, other, again])
    assert result.stored == 2
    rows = sorted((key_name(k), t) for k, t in db.execute("SELECT event_key, occurred_at FROM events"))
    assert rows == [("key-1", WHEN), ("key-2", WHEN)]  # the first delivery's row
    assert store.store(db, [again]).stored == 0  # and a later delivery finds it


def test_payload_loses_only_real_nul_characters(db: psycopg.Connection) -> None:
    """jsonb cannot hold NUL: the character goes, a text that merely reads `\\u0000` stays."""
    payload = {"literal": "x\\u0000y", "nul": "p\x00q", "key\x00": ["\x00", "\\u0000", 1, None]}
    row = _stored(db, [_event(1, payload=payload)])["key-1"]
    assert row["payload"] == {"literal": "x\\u0000y", "nul": "pq", "key": ["", "\\u0000", 1, None]}
    plain = {"literal": "x\\u0000y"}  # no NUL at all: stored as it is
    assert _stored(db, [_event(2, payload=plain)])["key-2"]["payload"] == plain
