"""Migration 0002: a database holding core-schema (0001) rows upgrades without losing any, the
new columns are filled from the payload; and the `mailing_stats` view it creates."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from tests.fixtures_copernica import MESSAGE, OCCURRED, TIME, TZ, WEBHOOK_CASES, log_record, out_of_office, wire
from workers.events.model import Event, from_logfile, from_webhook
from workers.storage import store
from workers.storage.reports import HUMAN_COLUMNS, MAILING_STATS_COLUMNS, mailing_stats_row
from workers.storage.schema import apply_migrations

RECEIVED = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


@pytest.fixture
def fresh_url(migrated_database_url: str) -> Iterator[str]:
    """An empty database of its own on the test server."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = make_conninfo(migrated_database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(migrated_database_url, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def core_key(event_type: str, message_id: str, second: int, ip: str | None) -> str:
    """The key rule of the core schema (0001), as it was: rows stored by it carry these keys."""
    parts = [event_type, message_id, str(second)] + ([ip] if ip else [])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


OLD_ROWS = [  # (event_key, event_type, copernica_type, message_id, recipient, source, payload)
    (
        core_key("opened", MESSAGE, TIME, "192.0.2.1"),
        "opened",
        "open",
        MESSAGE,
        "a@example.com",
        "webhook",
        {
            "id": MESSAGE,
            "type": "open",
            "time": str(TIME),
            "ip": "192.0.2.1",
            "tags": "news;weekly",
            "profile": "1001",
            "mailing": "42",
            "useragent": "Mozilla/5.0",
        },
    ),
    (
        core_key("failed", "m2", TIME, None),
        "failed",
        "failure",
        "m2",
        "b@example.com",
        "webhook",
        {
            "id": "m2",
            "type": "failure",
            "action": "failed",
            "state": "bounce",
            "code": "550",
            "extended": "5.1.1",
            "description": "mailbox unknown",
            "time": str(TIME),
        },
    ),
    (
        core_key("failed", "m3", TIME, None),
        "failed",
        "failure",
        "m3",
        "c@example.com",
        "webhook",
        {"id": "m3", "type": "failure", "state": "rcpt", "code": "5.7.1", "time": str(TIME)},
    ),
    (
        core_key("clicked", "m4", TIME, "not-an-ip"),
        "clicked",
        "click",
        "m4",
        None,
        "webhook",
        {
            "id": "m4",
            "type": "click",
            "ip": "not-an-ip",
            "mailing": "abc",
            "tags": ["x", "y", 3],
            "original": "https://example.com/",
            "email": "d@example.com",
            "time": str(TIME),
        },
    ),
    (
        "k-logfile",
        "sent",
        "cdm-attempts",
        "m5",
        None,
        "logfile",
        {
            "id": "m5",
            "time": "2026-11-26 13:00:01",
            "mailingid": "42",
            "profileid": "1001",
            "templateid": "77",
            "email": "e@example.com",
            "tags": "",
        },
    ),
    (
        "k-profile",
        "profile_updated",
        "update",
        None,
        None,
        "webhook",
        {"type": "update", "profile": "1001", "database": "5", "fields": {"name": "Ann"}, "time": str(TIME)},
    ),
    (
        "k-odd",
        "unknown",
        "",
        None,
        None,
        "webhook",
        {
            "ip": 1234,
            "profile": {"a": 1},
            "mailing": "99999999999999999999",
            "collection": 7.5,
            "tags": {"a": 1},
            "template": " 12 ",
        },
    ),
]


def _insert_core_rows(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for key, etype, ctype, mid, recipient, source, payload in OLD_ROWS:
            conn.execute(
                "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
                " message_id, recipient, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (key, etype, ctype, OCCURRED, RECEIVED, source, mid, recipient, Jsonb(payload)),
            )
        conn.execute(
            "INSERT INTO rejected_events (call_key, received_at, reason, body) VALUES ('c1', now(), 'x', 'abc')"
        )


def test_upgrade_from_core_keeps_every_row_and_fills_columns(fresh_url: str) -> None:
    assert [m.version for m in apply_migrations(fresh_url, target=1)] == [1]
    _insert_core_rows(fresh_url)
    with psycopg.connect(fresh_url) as conn:
        before = conn.execute(
            "SELECT id, event_key, copernica_type, occurred_at, received_at, source, message_id,"
            " payload FROM events ORDER BY id"
        ).fetchall()

    assert [m.version for m in apply_migrations(fresh_url, target=2)] == [2]

    with psycopg.connect(fresh_url) as conn:
        after = conn.execute(
            "SELECT id, event_key, copernica_type, occurred_at, received_at, source, message_id,"
            " payload FROM events ORDER BY id"
        ).fetchall()
        assert len(after) == len(before) == len(OLD_ROWS)
        # every row, every original value; only the failure re-labelled `bounced` is re-keyed
        assert [r[:1] + r[2:] for r in after] == [r[:1] + r[2:] for r in before]
        assert [r[1] for r in after if r[6] != "m2"] == [r[1] for r in before if r[6] != "m2"]
        assert next(r[1] for r in after if r[6] == "m2") == core_key("bounced", "m2", TIME, None)
        assert conn.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 1
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT message_id, event_type, host(ip), user_agent, url, mailing_id, profile_id, template_id, tags,"
                " smtp_code, smtp_status, description, recipient, collection_id"
                " FROM events WHERE message_id IS NOT NULL"
            )
        }
        odd = conn.execute(
            "SELECT ip, profile_id, mailing_id, collection_id, tags, template_id FROM events WHERE event_key = 'k-odd'"
        ).fetchone()
        profile = conn.execute("SELECT profile_id, database_id FROM events WHERE event_key = 'k-profile'").fetchone()
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]

    assert rows[MESSAGE] == (
        "opened",
        "192.0.2.1",
        "Mozilla/5.0",
        None,
        42,
        1001,
        None,
        ["news", "weekly"],
        None,
        None,
        None,
        "a@example.com",
        None,
    )
    assert rows["m2"][0] == "bounced"  # failure with state bounce
    assert rows["m2"][8:11] == (550, "5.1.1", "mailbox unknown")
    assert rows["m3"][0] == "failed"
    assert rows["m3"][8:10] == (None, "5.7.1")  # `5.7.1` is no reply code: an enhanced status code
    assert rows["m4"][1:] == (
        None,
        None,
        "https://example.com/",
        None,
        None,
        None,
        ["x", "y", "3"],
        None,
        None,
        None,
        "d@example.com",
        None,
    )
    assert rows["m5"][1:] == (None, None, None, 42, 1001, 77, None, None, None, None, "e@example.com", None)
    assert odd == (None, None, None, None, None, 12)
    assert profile == (1001, 5)
    assert {
        "events_mailing_type_idx",
        "events_message_id_idx",
        "events_recipient_idx",
        "events_occurred_at_idx",
    } <= indexes
    assert versions == [1, 2]


def test_redelivery_after_upgrade_matches_a_core_row(fresh_url: str) -> None:
    """Message-event keys are built as in 0001: the same open arriving again is no new row."""
    apply_migrations(fresh_url, target=1)
    _insert_core_rows(fresh_url)
    apply_migrations(fresh_url, target=2)
    case = next(c for c in WEBHOOK_CASES if c.name == "open")
    event = from_webhook(case.form, wire(case, "form"), TZ)
    bounce = from_webhook(OLD_ROWS[1][6], wire(case, "form"), TZ)  # the failure 0002 re-labelled `bounced`
    assert bounce.event_type == "bounced"
    with store.connect(fresh_url) as conn:
        result = store.store(conn, [event, bounce])
    assert (result.stored, result.duplicates) == (0, 2)


def test_rekeying_never_collides_with_a_stored_bounce(fresh_url: str) -> None:
    apply_migrations(fresh_url, target=1)
    failure = {"id": "m9", "type": "failure", "state": "bounce", "time": str(TIME)}
    bounce = {"id": "m9", "type": "bounce", "mime": "x", "time": str(TIME)}
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        for key, etype, ctype, payload in [
            (core_key("failed", "m9", TIME, None), "failed", "failure", failure),
            (core_key("bounced", "m9", TIME, None), "bounced", "bounce", bounce),
        ]:
            conn.execute(
                "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
                " message_id, payload) VALUES (%s, %s, %s, %s, %s, 'webhook', 'm9', %s)",
                (key, etype, ctype, OCCURRED, RECEIVED, Jsonb(payload)),
            )
    apply_migrations(fresh_url, target=2)
    with psycopg.connect(fresh_url) as conn:
        rows = conn.execute("SELECT copernica_type, event_type, event_key FROM events ORDER BY id").fetchall()
    assert rows == [
        ("failure", "bounced", core_key("failed", "m9", TIME, None)),
        ("bounce", "bounced", core_key("bounced", "m9", TIME, None)),
    ]


def test_migrations_are_idempotent(fresh_url: str) -> None:
    assert [m.version for m in apply_migrations(fresh_url, target=2)] == [1, 2]
    assert apply_migrations(fresh_url, target=2) == []


# --- mailing_stats -----------------------------------------------------------------------------------


def _log(log_type: str, **values: str) -> Event:
    return from_logfile(log_record(log_type, **values), log_type, TZ, RECEIVED)


def _hook(**fields: str) -> Event:
    base = {"time": str(TIME), "recipient": "a@example.com"}
    return from_webhook({**base, **fields}, wire(WEBHOOK_CASES[0], "form"), TZ)


def test_mailing_stats_resolves_mailing_through_sent(db: psycopg.Connection) -> None:
    events = [
        _log("cdm-attempts", id="m1", mailingid="42"),
        _log("cdm-attempts", id="m2", mailingid="42"),
        _log("cdm-attempts", id="m3", mailingid="42"),
        _log("cdm-attempts", id="m4", mailingid="43"),
        # a second stored `sent` for m1 (another second): m1's other events still count once
        _log("cdm-attempts", id="m1", mailingid="42", time="2026-11-26 13:05:00"),
        _log("cdm-delivery", id="m1"),
        _log("cdm-delivery", id="m2"),
        _log("cdm-delivery", id="m3"),
        _hook(type="open", id="m1", ip="192.0.2.1"),
        _hook(type="open", id="m1", ip="192.0.2.2"),
        _log("cdm-impression", id="m2"),
        _hook(type="click", id="m1", ip="192.0.2.1", original="https://x", mailing="42"),
        _hook(type="failure", id="m3", state="bounce"),
        _hook(type="unsubscribe", id="u1", profile="1001", mailing="42"),  # its id is its own, not m2's
        _hook(type="bounce", id="m2", mime=out_of_office()),  # an automatic reply: no bounce
        _log("cdm-abuse", id="m1"),
        _hook(type="failure", id="m4", state="rcpt"),
        _hook(type="open", id="m-unknown", ip="192.0.2.1"),  # no sent event, no mailing: in no row
    ]
    assert store.store(db, events).stored == len(events)

    row42 = mailing_stats_row(db, 42)
    assert row42 is not None
    assert {k: row42[k] for k in MAILING_STATS_COLUMNS} == {
        "mailing_id": 42,
        "sent": 4,
        "delivered": 3,
        "opens": 3,
        "unique_opens": 2,
        "clicks": 1,
        "unique_clicks": 1,
        "bounces": 1,
        "autoreplies": 1,
        "failures": 0,
        "deferrals": 0,
        "unsubscribes": 1,
        "complaints": 1,
        "open_rate": Decimal("0.6667"),
        "click_rate": Decimal("0.3333"),
    }
    row43 = mailing_stats_row(db, 43)
    assert (row43["sent"], row43["delivered"], row43["failures"]) == (1, 0, 1)
    assert (row43["open_rate"], row43["click_rate"]) == (None, None)  # nothing delivered: no rate
    assert mailing_stats_row(db, 999) is None
    assert list(row42) == [*MAILING_STATS_COLUMNS, *HUMAN_COLUMNS]
    assert db.execute("SELECT count(*) FROM mailing_stats").fetchone()[0] == 2
