"""Migration 0005: stored unsubscribes re-keyed by the rule of `workers.events.model.event_key` (the SQL
and the Python must agree), webhook unsubscribes lose their non-message `message_id`, and
`mailing_stats` gains `autoreplies`."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.fixtures_copernica import (
    MESSAGE,
    OCCURRED,
    TIME,
    TZ,
    UNSUBSCRIBE,
    WEBHOOK_CASES,
    log_record,
    out_of_office,
    wire,
)
from workers.events.model import Event, event_key, from_logfile, from_webhook
from workers.storage import store
from workers.storage.reports import MAILING_STATS_COLUMNS, mailing_stats_row
from workers.storage.schema import apply_migrations

RECEIVED = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
ENVELOPE = wire(WEBHOOK_CASES[0], "form")


def old_key(message_id: str, occurred: datetime) -> str:
    """How unsubscribes were keyed before 0005: as message events, on whatever `id` they had."""
    parts = ["unsubscribed", message_id, str(int(occurred.timestamp()))]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _webhook(profile: object = "1001", time: int = TIME, uid: str = UNSUBSCRIBE) -> Event:
    fields = {"id": uid, "type": "unsubscribe", "time": str(time), "database": "5", "mailing": "42"}
    if profile is not None:
        fields["profile"] = profile
    return from_webhook(fields, ENVELOPE, TZ)


def _record(log_type: str = "cdm-unsubscribe", **values: str) -> Event:
    return from_logfile(log_record(log_type, **values), log_type, TZ, RECEIVED)


def _as_stored_before(event: Event, occurred: datetime | None = None) -> Event:
    """The event as the code before 0005 stored it: the `id` as message id, keyed on it."""
    mid = event.message_id or event.payload["id"]
    occurred = occurred or event.occurred_at
    return dataclasses.replace(event, event_key=old_key(mid, occurred), message_id=mid, occurred_at=occurred)


@pytest.fixture
def at_0004(scratch_database_url: str) -> str:
    apply_migrations(scratch_database_url, target=4)
    return scratch_database_url


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, event_key, source, message_id, profile_id, event_type FROM events ORDER BY id"
        ).fetchall()


def test_stored_unsubscribes_get_the_python_key(at_0004: str) -> None:
    """The SQL rule of 0005 against `event_key`, row by row: profiles sent as text, padded text
    and numbers, logfile and webhook, a fractional second, the largest bigint."""
    fraction = OCCURRED + timedelta(microseconds=750_000)
    new = [
        _webhook("1001"),
        _webhook(" 0012 ", TIME + 5, "u2"),
        _webhook(9_223_372_036_854_775_807, TIME + 6, "u3"),
        _record("pom-unsubscribes", profile="3003", time="2026-11-26 13:00:09"),
        _record(profile="4004", id="m5"),
    ]
    stored = [_as_stored_before(e) for e in new[:-1]] + [_as_stored_before(new[-1], fraction)]
    with store.connect(at_0004) as conn:
        assert store.store(conn, stored).stored == len(stored)

    assert [m.version for m in apply_migrations(at_0004, target=5)] == [5]

    rows = _rows(at_0004)
    expected = [e.event_key for e in new[:-1]]
    expected.append(dataclasses.replace(new[-1], occurred_at=fraction).event_key)  # floor of the second
    assert expected[-1] == event_key("unsubscribed", None, fraction, new[-1].payload)
    assert [r[1] for r in rows] == expected
    assert [r[3] for r in rows] == [None, None, None, MESSAGE, "m5"]  # webhook ids are no message ids
    assert [r[4] for r in rows] == [1001, 12, 9_223_372_036_854_775_807, 3003, 4004]

    # and the events arriving again after the upgrade are no new rows
    with store.connect(at_0004) as conn:
        result = store.store(conn, new[:-1])
    assert (result.stored, result.duplicates) == (0, 4)


def test_webhook_and_logfile_stored_apart_keep_both_rows_one_rekeyed(at_0004: str) -> None:
    webhook, record = _webhook(), _record()
    assert webhook.event_key == record.event_key
    with store.connect(at_0004) as conn:
        assert store.store(conn, [_as_stored_before(webhook), _as_stored_before(record)]).stored == 2

    apply_migrations(at_0004, target=5)

    rows = _rows(at_0004)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (webhook.event_key, "webhook", None),
        (old_key(MESSAGE, OCCURRED), "logfile", MESSAGE),
    ]
    with store.connect(at_0004) as conn:  # either arriving again meets the re-keyed row
        result = store.store(conn, [webhook, record])
    assert (result.stored, result.duplicates) == (0, 2)


def test_what_0005_leaves_alone(at_0004: str) -> None:
    no_profile = _webhook(None)
    opened = from_webhook(
        {"id": MESSAGE, "type": "open", "time": str(TIME), "ip": "192.0.2.1", "profile": "1001"}, ENVELOPE, TZ
    )
    bounce = from_webhook({"id": MESSAGE, "type": "bounce", "time": str(TIME), "mime": out_of_office()}, ENVELOPE, TZ)
    old_bounce = dataclasses.replace(bounce, event_type="bounced", event_key="k-bounce")  # stored before 0005
    with store.connect(at_0004) as conn:
        store.store(conn, [_as_stored_before(no_profile), opened, old_bounce])
    before = _rows(at_0004)

    apply_migrations(at_0004, target=5)

    after = _rows(at_0004)
    assert [r[1] for r in after] == [r[1] for r in before]  # no key changed
    assert after[0][1] == no_profile.event_key  # the fallback rule is the old rule
    assert after[0][3] is None and after[1][3] == MESSAGE
    assert after[2][5] == "bounced"  # not re-read
    assert apply_migrations(at_0004, target=5) == []


def test_mailing_stats_counts_autoreplies_apart_and_keeps_grants(at_0004: str) -> None:
    with psycopg.connect(at_0004, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ingest_reader')"
            " THEN CREATE ROLE ingest_reader; END IF; END $$"
        )
        conn.execute("GRANT SELECT ON mailing_stats TO ingest_reader")

    apply_migrations(at_0004, target=5)

    hook = {"type": "bounce", "time": str(TIME), "mailing": "42"}
    events = [
        from_webhook({**hook, "id": "m1", "mime": out_of_office()}, ENVELOPE, TZ),
        from_webhook({**hook, "id": "m2", "mime": out_of_office()}, ENVELOPE, TZ),
        from_webhook({**hook, "id": "m3", "mime": "From: MAILER-DAEMON\n\nUser unknown"}, ENVELOPE, TZ),
    ]
    with store.connect(at_0004) as conn:
        assert store.store(conn, events).stored == 3
        row = mailing_stats_row(conn, 42)
        granted = conn.execute("SELECT has_table_privilege('ingest_reader', 'mailing_stats', 'SELECT')").fetchone()[0]
    assert (row["bounces"], row["autoreplies"]) == (1, 2)
    assert list(row) == list(MAILING_STATS_COLUMNS)
    assert granted
