"""Per-mailing statistics: fetching them from the fake Copernica API (Marketing Suite, then
Publisher, retries), the pure comparison, and our counts against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
import pytest

from tests.fake_copernica import FakeCopernica, make_records
from workers.backfill.api import ApiError, CopernicaClient, RetriesExhausted, RetryPolicy
from workers.backfill.statistics import (
    MEASURES,
    MailingStatistics,
    Measure,
    UnknownMailing,
    any_missing,
    compare,
    fetch_statistics,
    parse_statistics,
)
from workers.events.model import from_logfile
from workers.storage import store
from workers.storage.mailing_counts import mailing_counts
from workers.storage.reports import mailing_stats_row

TZ = "Europe/Amsterdam"
DAY = date(2026, 11, 25)

STATS = {
    "destinations": 10,
    "deliveries": {"total": 10},
    "impressions": {"total": 7, "unique": 5},
    "clicks": {"total": 4, "unique": 3},
    "errors": {"total": 2, "unique": 2},
    "unsubscribes": {"total": 0, "unique": 0},
    "abuses": {"total": 0, "unique": 0},
    "retries": {"total": 1},
    "unknown": {"total": 0},
}


def client(fake: FakeCopernica, retries: int = 3) -> CopernicaClient:
    return CopernicaClient(
        fake.token, fake.api_url, fake.auth_url, policy=RetryPolicy(retries=retries, base_delay=0.01)
    )


# --- parse and compare (pure) -------------------------------------------------------------------


def test_parse_reads_nested_flat_and_numeric_strings() -> None:
    stats = parse_statistics(42, "ms", STATS)
    assert stats.destinations == 10
    assert stats.figure("impressions", "unique") == 5 and stats.figure("retries", "total") == 1
    flat = parse_statistics(7, "publisher", {"deliveries.total": "12", "clicks": {"total": "x", "unique": -1}})
    assert flat.figure("deliveries", "total") == 12
    assert flat.figure("clicks", "total") is None and flat.figure("clicks", "unique") is None
    assert flat.figure("abuses", "total") is None and flat.destinations is None
    with pytest.raises(ApiError, match="not an object"):
        parse_statistics(7, "ms", [1, 2])


def test_compare_reports_missing_and_extra_apart_and_skips_absent_figures() -> None:
    stats = MailingStatistics(42, "ms", 10, {"deliveries.total": 10, "impressions.total": 7, "clicks.total": 4})
    measures = {m.name: m for m in compare(stats, {"delivered": 8, "opens": 9})}
    assert list(measures) == list(MEASURES)
    assert (measures["deliveries"].missing, measures["deliveries"].extra) == (2, 0)
    assert (measures["impressions"].missing, measures["impressions"].extra) == (0, 2)
    assert (measures["clicks"].missing, measures["clicks"].stored) == (4, 0)
    assert measures["abuses"] == Measure("abuses", None, 0) and measures["abuses"].missing == 0
    assert any_missing(list(measures.values()))
    assert not any_missing(compare(stats, {"delivered": 10, "opens": 7, "clicks": 5}))


# --- fetching ---------------------------------------------------------------------------------------


def test_marketing_suite_first_then_publisher_then_unknown(fake: FakeCopernica) -> None:
    fake.add_statistics(42, STATS)
    fake.add_statistics(43, {"deliveries": {"total": 3}}, publisher=True)
    api = client(fake)
    ms = fetch_statistics(api, 42)
    assert (ms.source, ms.figure("deliveries", "total")) == ("ms", 10)
    publisher = fetch_statistics(api, 43)
    assert (publisher.source, publisher.figure("deliveries", "total")) == ("publisher", 3)
    with pytest.raises(UnknownMailing, match="unknown to Copernica"):
        fetch_statistics(api, 999)
    paths = [h.path for h in fake.statistics_hits()]
    assert paths == [
        "/v4/ms/emailing/42/statistics",
        "/v4/ms/emailing/43/statistics",
        "/v4/html/emailing/43/statistics",
        "/v4/ms/emailing/999/statistics",
        "/v4/html/emailing/999/statistics",
    ]


def test_begintime_is_sent_in_copernicas_format(fake: FakeCopernica) -> None:
    fake.add_statistics(42, STATS)
    fetch_statistics(client(fake), 42, begin=datetime(2026, 11, 26, 0, 0))
    assert fake.statistics_hits()[0].query == {"begintime": "2026-11-26 00:00:00"}


def test_429_and_503_are_retried_then_given_up(fake: FakeCopernica) -> None:
    fake.add_statistics(42, STATS)
    fake.fail("/statistics", (429, 0), 503)
    api = client(fake)
    assert fetch_statistics(api, 42).figure("deliveries", "total") == 10
    assert api.retried == 2 and len(fake.statistics_hits()) == 3
    fake.fail("/statistics", 503, 503, 503, 503)
    with pytest.raises(RetriesExhausted, match="still failing"):
        fetch_statistics(client(fake, retries=3), 42)


# --- our counts ---------------------------------------------------------------------------------------


def store_records(database_url: str, log_type: str, records: list[dict]) -> None:
    received = datetime.now(UTC)
    events = [from_logfile({k: v for k, v in r.items() if k != "_unix"}, log_type, TZ, received) for r in records]
    with store.connect(database_url) as conn:
        store.store(conn, events)


def mailing_of(mailing: int, n: int, day: date = DAY) -> dict[str, list[dict]]:
    """Logfile records of one mailing of `n` messages: attempts (with the mailing id), deliveries,
    opens (message 0 twice), clicks, one error; the other logs join on the message id."""
    ids = [f"msg{mailing}-{i:04d}" for i in range(n)]
    plan = {
        "cdm-attempts": list(range(n)),
        "cdm-delivery": list(range(n)),
        "cdm-impression": [0, 0, 1, 2],
        "cdm-click": [0, 1],
        "cdm-error": [n - 1],
    }
    records: dict[str, list[dict]] = {}
    for hour, (log_type, which) in enumerate(plan.items(), start=8):
        made = make_records(log_type, day, len(which), start_hour=hour, seed=mailing)
        for record, index in zip(made, which, strict=True):
            record["id"] = ids[index]
            if "mailingid" in record:
                record["mailingid"] = str(mailing)
        records[log_type] = made
    return records


def test_counts_equal_the_mailing_stats_view_and_since_limits_them(database_url: str, db: psycopg.Connection) -> None:
    for mailing, day in ((42, DAY), (43, date(2026, 11, 27))):
        for log_type, records in mailing_of(mailing, 5, day).items():
            store_records(database_url, log_type, records)
    counts = mailing_counts(db, [42, 43, 44])
    view = mailing_stats_row(db, 42)
    assert view is not None
    c42 = counts[42]
    assert (c42.sent, c42.delivered, c42.opens, c42.unique_opens, c42.clicks, c42.unique_clicks) == (
        view["sent"],
        view["delivered"],
        view["opens"],
        view["unique_opens"],
        view["clicks"],
        view["unique_clicks"],
    )
    assert c42.errors == view["failures"] + view["bounces"] == 1
    assert (c42.sent, c42.delivered, c42.opens, c42.unique_opens, c42.clicks, c42.unique_clicks) == (5, 5, 4, 3, 2, 2)
    assert c42.first is not None and c42.last is not None
    assert c42.first.astimezone(UTC).date() == DAY and c42.last > c42.first
    assert counts[44].delivered == 0 and counts[44].first is None
    since = datetime(2026, 11, 26, tzinfo=UTC)
    later = mailing_counts(db, [42, 43], since)
    assert later[42].delivered == 0 and later[42].first is None
    assert later[43].as_counts() == counts[43].as_counts()
