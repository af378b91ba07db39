"""The store's direct COPY into `events` and its fallback through the stage: one row per event
whichever way the rows go, rejects kept, nothing stored twice or lost when the COPY is undone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from common.envelope import Envelope
from tests.keys import key_name, name_key, stored
from workers.events.model import Event
from workers.storage import partitions, store, writer

WHEN = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)


def _event(key: str, occurred: datetime = WHEN, **values: Any) -> Event:
    received = values.pop("received_at", WHEN + timedelta(seconds=5, microseconds=250))
    return Event(
        event_key=name_key(key),
        event_type="opened",
        copernica_type="open",
        occurred_at=occurred,
        received_at=received,
        source="webhook",
        message_id=key,
        recipient="a@example.com",
        payload={"id": key},
        **values,
    )


def _untimed(key: str) -> Event:
    """No usable time: occurred_at is the time of receipt, so the row goes through the stage."""
    return _event(key, WHEN, received_at=WHEN)


def _keys(db: psycopg.Connection) -> list[str]:
    return sorted(key_name(row[0]) for row in db.execute("SELECT event_key FROM events"))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with store.connect(database_url) as connection:
        yield connection


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which way rows went: 'direct' (COPY into events) or 'staged'."""
    ways: list[str] = []
    real_copy, real_stage = writer.Writer._copy, store.insert_staged

    def copy(self: writer.Writer, data: bytes, rows: int) -> None:
        ways.append("direct")
        real_copy(self, data, rows)

    def stage(cur: psycopg.Cursor, data: bytes, *, staged: bool, current: bool, short_key: bool) -> int:
        ways.append("staged")
        return real_stage(cur, data, staged=staged, current=current, short_key=short_key)

    monkeypatch.setattr(writer.Writer, "_copy", copy)
    monkeypatch.setattr(store, "insert_staged", stage)
    return ways


def test_new_events_go_straight_into_events(db: psycopg.Connection, conn: psycopg.Connection, spy: list[str]) -> None:
    result = store.store_chunks(conn, [([_event("a"), _event("b")], None, []), ([_event("c")], None, [])])
    assert (result.stored, result.duplicates) == (3, 0)
    assert spy == ["direct", "direct"]
    assert _keys(db) == ["a", "b", "c"]


def test_a_stored_event_sends_the_batch_through_the_stage_and_stays_one_row(
    db: psycopg.Connection, conn: psycopg.Connection, spy: list[str]
) -> None:
    store.store(conn, [_event("a")])
    spy.clear()
    result = store.store_chunks(conn, [([_event("b")], None, []), ([_event("a"), _event("c")], None, [])])
    assert (result.stored, result.duplicates) == (2, 1)
    assert spy[:2] == ["direct", "direct"] and "staged" in spy  # tried, undone, redone
    assert _keys(db) == ["a", "b", "c"]


def test_after_a_collision_the_direct_copy_pauses_then_resumes(conn: psycopg.Connection, spy: list[str]) -> None:
    store.store(conn, [_event("a")])
    store.store(conn, [_event("a")])  # collides: paused for the next transaction
    spy.clear()
    assert store.store(conn, [_event("b")]).stored == 1
    assert spy == ["staged"]
    spy.clear()
    assert store.store(conn, [_event("c")]).stored == 1
    assert spy == ["direct"]
    store.store(conn, [_event("c")])  # another collision after a success: paused for one again
    spy.clear()
    store.store(conn, [_event("d")])
    assert spy == ["staged"]


def test_pauses_double_while_collisions_go_on(conn: psycopg.Connection) -> None:
    store.store(conn, [_event("a")])
    for _ in range(3):  # collide, then one staged transaction, collide again, then two, ...
        store.store(conn, [_event("a")])
        while writer._pause[conn][0]:
            store.store(conn, [_event("a")])
    assert writer._pause[conn][1] == 4


def test_one_key_in_two_chunks_of_a_transaction_is_one_row_without_a_fallback(
    db: psycopg.Connection, conn: psycopg.Connection, spy: list[str]
) -> None:
    later = _event("a", received_at=WHEN + timedelta(seconds=9))  # a retry of the same call
    result = store.store_chunks(conn, [([_event("a")], None, []), ([later, _event("b")], None, [])])
    assert (result.stored, result.duplicates) == (2, 1)
    assert "staged" not in spy
    assert _keys(db) == ["a", "b"]


@pytest.mark.usefixtures("spy")
def test_staged_rows_before_a_fallback_are_stored_once(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    """The savepoint undoes the staged rows sent after it too: they are redone with the rest."""
    store.store(conn, [_event("dup")])
    chunks = [([_event("a")], None, []), ([_untimed("u")], None, []), ([_event("dup"), _event("b")], None, [])]
    result = store.store_chunks(conn, chunks)
    assert (result.stored, result.duplicates) == (3, 1)
    assert _keys(db) == ["a", "b", "dup", "u"]
    assert db.execute("SELECT count(*) FROM events WHERE event_key = %s", (stored("u"),)).fetchone()[0] == 1


def test_an_untimed_event_stored_twice_is_one_row(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    store.store(conn, [_untimed("u")])
    again = _event("u", WHEN + timedelta(seconds=30), received_at=WHEN + timedelta(seconds=30))
    assert store.store(conn, [again]).stored == 0
    assert _keys(db) == ["u"]


def test_rejects_are_kept_beside_directly_copied_rows(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    bad = store.Rejected(Envelope(body=b"junk", content_type="text/plain", received_at=1.0), "unsupported")
    result = store.store_chunks(conn, [([_event("a")], None, [bad]), ([_event("b")], None, [])])
    assert (result.stored, result.rejected) == (2, 1)
    assert db.execute("SELECT reason FROM rejected_events").fetchall() == [("unsupported",)]


def test_a_row_postgresql_refuses_in_the_direct_copy_becomes_a_reject(
    db: psycopg.Connection, conn: psycopg.Connection
) -> None:
    odd = _event("odd", ip="not an address")  # the model never makes this; inet refuses it
    result = store.store_chunks(conn, [([_event("a"), odd], None, []), ([_event("b")], None, [])])
    assert (result.stored, result.rejected) == (2, 1)
    assert _keys(db) == ["a", "b"]
    assert db.execute("SELECT reason LIKE 'refused by PostgreSQL%' FROM rejected_events").fetchone() == (True,)


def test_a_month_without_a_partition_mid_transaction_gets_one(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    """The open COPY is ended for the partition to be made, then goes on."""
    later = partitions.add_months(partitions.month_of(datetime.now(UTC)), partitions.AHEAD + 2)
    name = f"events_p{later:%Y%m}"
    moment = datetime(later.year, later.month, 4, 5, 6, 7, tzinfo=UTC)
    db.execute(f"DROP TABLE IF EXISTS {name}")
    partitions.forget(conn)
    try:
        chunks = [([_event("a")], None, []), ([_event("b", moment)], None, []), ([_event("c")], None, [])]
        assert store.store_chunks(conn, chunks).stored == 3
        assert _keys(db) == ["a", "b", "c"]
        assert (
            db.execute("SELECT tableoid::regclass::text FROM events WHERE event_key = %s", (stored("b"),)).fetchone()[0]
            == name
        )
    finally:
        db.execute(f"DROP TABLE IF EXISTS {name}")
        partitions.forget(conn)


def test_a_failing_producer_rolls_the_direct_copy_back(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    def chunks() -> Iterator[store.Chunk]:
        yield [_event("a")], None, []
        raise RuntimeError("parser broke")

    with pytest.raises(RuntimeError):
        store.store_chunks(conn, chunks())
    assert _keys(db) == []
    assert store.store(conn, [_event("b")]).stored == 1  # the connection is usable


def test_meanwhile_runs_once_every_chunk_is_handed_over(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    handed: list[str] = []
    seen: list[list[str]] = []

    def chunks() -> Iterator[store.Chunk]:
        for key in ("a", "b"):
            handed.append(key)
            yield [_event(key)], None, []

    result = store.store_chunks(conn, chunks(), lambda: seen.append(list(handed)))
    assert seen == [["a", "b"]]
    assert result.stored == 2 and _keys(db) == ["a", "b"]


def test_meanwhile_is_skipped_when_the_producer_fails(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    def chunks() -> Iterator[store.Chunk]:
        yield [_event("a")], None, []
        raise RuntimeError("parser broke")

    called: list[int] = []
    with pytest.raises(RuntimeError):
        store.store_chunks(conn, chunks(), lambda: called.append(1))
    assert called == [] and _keys(db) == []


def test_connect_bounds_each_host_attempt_unless_the_url_says_otherwise() -> None:
    url = "postgresql://u@10.0.0.1:5432,10.0.0.2:5432/ingest?target_session_attrs=read-write"
    assert store.connect_options(url) == store.CONNECT_DEFAULTS
    assert int(store.CONNECT_DEFAULTS["connect_timeout"]) <= 15
    own = store.connect_options(url + "&connect_timeout=3&keepalives=0")
    assert "connect_timeout" not in own and "keepalives" not in own and own["keepalives_idle"] == "15"


def test_connect_applies_the_defaults(database_url: str) -> None:
    with store.connect(database_url) as conn:
        assert conn.info.get_parameters()["connect_timeout"] == store.CONNECT_DEFAULTS["connect_timeout"]
        assert conn.info.get_parameters()["keepalives_idle"] == "15"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "2min"
