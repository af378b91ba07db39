"""The stored per-mailing reconcile results (workers.storage.reconciliations, migration 0009)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from workers.backfill.statistics import Measure
from workers.storage import reconciliations
from workers.storage.reconciliations import record


def measures(deliveries: int, opens: int, unique_opens: int) -> list[Measure]:
    """Copernica counting 10 deliveries, 4 opens of 3 messages, no abuse figure; ours as given."""
    return [
        Measure("deliveries", 10, deliveries),
        Measure("impressions", 4, opens),
        Measure("unique_impressions", 3, unique_opens),
        Measure("abuses", None, 0),
    ]


def test_the_latest_of_a_mailing_with_its_measures(db: psycopg.Connection) -> None:
    assert reconciliations.latest(db, 42) is None
    before = datetime.now(UTC) - timedelta(seconds=1)
    record(db, 42, measures(6, 5, 1), source="ms", since=date(2026, 11, 25))
    record(db, 42, measures(10, 5, 3), source="ms", since=date(2026, 11, 25), fixed=True)
    record(db, 43, measures(10, 4, 3), source="publisher")

    latest = reconciliations.latest(db, 42)
    assert latest is not None
    assert latest.fixed and not latest.missing and latest.source == "ms" and latest.since == date(2026, 11, 25)
    assert before <= latest.checked_at <= datetime.now(UTC)
    assert latest.measures == [
        {"name": "deliveries", "copernica": 10, "stored": 10, "missing": 0, "extra": 0},
        {"name": "impressions", "copernica": 4, "stored": 5, "missing": 0, "extra": 1},
        {"name": "unique_impressions", "copernica": 3, "stored": 3, "missing": 0, "extra": 0},
        {"name": "abuses", "copernica": None, "stored": 0, "missing": 0, "extra": 0},
    ]

    first = reconciliations.history(db, 42)[-1]
    assert first.missing and not first.fixed
    assert [m["missing"] for m in first.measures] == [4, 0, 2, 0]
    assert first.events_missing == 4  # the unique opens are no events of their own
    assert len(reconciliations.history(db, 42)) == 2


def test_latest_many_reads_each_mailings_newest_in_one_query(db: psycopg.Connection) -> None:
    record(db, 42, measures(6, 4, 3), source="ms")
    record(db, 42, measures(9, 4, 3), source="ms")
    record(db, 43, measures(10, 4, 3), source="publisher")
    found = reconciliations.latest_many(db, [42, 43, 44, 42])
    assert set(found) == {42, 43}  # 44 never reconciled
    assert found[42].measures[0]["stored"] == 9 and found[42].events_missing == 1
    assert not found[43].missing and found[43].source == "publisher"
    assert reconciliations.latest_many(db, []) == {}


def test_a_mailing_keeps_its_newest_rows(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciliations, "KEEP", 3)
    for stored in range(5):
        record(db, 42, measures(stored, 4, 3), source="ms")
    record(db, 43, measures(10, 4, 3), source="ms")
    kept = reconciliations.history(db, 42)
    assert [r.measures[0]["stored"] for r in kept] == [4, 3, 2]
    assert db.execute("SELECT count(*) FROM mailing_reconciliations").fetchone() == (4,)
