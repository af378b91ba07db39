"""INGEST_IP_PRIVACY (workers.events.privacy): a reader's address truncated or dropped before
anything is stored, its payload included, while a webhook and a logfile record still meet."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from common.envelope import wire
from tests.payloads import BASE_TIME, FORM, webhook_body
from workers.events import privacy
from workers.events.model import from_logfile
from workers.jobs import parse_calls
from workers.storage import store

V4, V4_KEPT = "192.0.2.77", "192.0.2.0"
V6, V6_KEPT = "2001:db8:abcd:12::1", "2001:db8:abcd::"
RECEIVED = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)


@pytest.fixture
def setting(request: pytest.FixtureRequest) -> Iterator[str]:
    privacy.set_mode(request.param)
    yield request.param
    privacy.set_mode(None)


@pytest.mark.parametrize(
    ("ip", "mode", "kept"),
    [
        (V4, "full", V4),
        (V4, "truncate", V4_KEPT),
        (V6, "truncate", V6_KEPT),
        ("2001:db8::1", "truncate", "2001:db8::"),
        (V4, "drop", None),
        (None, "truncate", None),
    ],
)
def test_what_is_kept_of_an_address(ip: str | None, mode: str, kept: str | None) -> None:
    assert privacy.address(ip, mode) == kept


def opens(ip: str, message: str = "b4icbaqjswyrb7tc") -> list:
    """One open as a webhook (form) and as its cdm-impression record (local Amsterdam time)."""
    body = webhook_body("open", id=message, time=str(BASE_TIME), recipient="a@example.com", ip=ip, useragent="UA")
    events, _, rejects = parse_calls([wire(body, FORM, BASE_TIME + 5, "127.0.0.1", "POST", "/copernica", {})], "UTC")
    assert not rejects
    record = {"id": message, "time": "2026-11-26 13:00:01", "ip": ip, "header": "UA", "email": "a@example.com"}
    return [*events, from_logfile(record, "cdm-impression", "Europe/Amsterdam", RECEIVED)]


def everything(conn: psycopg.Connection) -> str:
    """Every row of every table, every column, as text."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
    ]
    return "\n".join(row[0] for table in tables for row in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t"))


@pytest.mark.parametrize("setting", ["truncate"], indirect=True)
def test_truncate_stores_no_full_address_anywhere_and_webhook_and_logfile_meet(
    setting: str, database_url: str, db: psycopg.Connection
) -> None:
    assert setting == "truncate"
    events = opens(V4) + opens(V6, "m6")
    with store.connect(database_url) as conn:
        result = store.store(conn, events)
    assert (result.stored, result.duplicates) == (2, 2)  # each webhook met its logfile record
    rows = sorted(db.execute("SELECT host(ip), event_fields(e)->>'ip' FROM events e").fetchall())
    assert rows == sorted([(V4_KEPT, V4_KEPT), (V6_KEPT, V6_KEPT)])
    stored = everything(db)
    assert V4 not in stored and "2001:db8:abcd:12" not in stored
    with store.connect(database_url) as conn:  # delivered again under the same setting: no new row
        assert store.store(conn, opens(V4) + opens(V6, "m6")).stored == 0


@pytest.mark.parametrize("setting", ["drop"], indirect=True)
def test_drop_keeps_no_address_and_webhook_and_logfile_still_meet(
    setting: str, database_url: str, db: psycopg.Connection
) -> None:
    assert setting == "drop"
    with store.connect(database_url) as conn:
        assert store.store(conn, opens(V4)).stored == 1
    assert db.execute("SELECT ip, event_fields(e) ? 'ip' FROM events e").fetchall() == [(None, False)]
    assert V4 not in everything(db)


def test_full_keeps_the_address_and_a_switch_makes_a_second_row(database_url: str, db: psycopg.Connection) -> None:
    privacy.set_mode("full")
    try:
        with store.connect(database_url) as conn:
            assert store.store(conn, opens(V4)).stored == 1
        assert db.execute("SELECT host(ip), event_fields(e)->>'ip' FROM events e").fetchall() == [(V4, V4)]
        privacy.set_mode("truncate")  # the same open delivered again after the switch: keyed apart
        with store.connect(database_url) as conn:
            assert store.store(conn, opens(V4)).stored == 1
    finally:
        privacy.set_mode(None)


def test_the_callers_fields_are_left_as_they_were() -> None:
    fields = {"ip": V4, "id": "x"}
    assert privacy.payload(fields, V4_KEPT, "truncate") == {"ip": V4_KEPT, "id": "x"}
    assert fields == {"ip": V4, "id": "x"}
