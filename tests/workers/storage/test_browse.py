"""The console's queries (workers.storage.browse): paged, through indexes, the mailings as
mailing_stats attributes their events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.console.conftest import store_bodies
from tests.console.test_pages import mailing_events
from tests.payloads import BASE_TIME, webhook_body
from workers.storage import browse


def test_a_search_needs_a_field_and_a_type_needs_more(db: psycopg.Connection) -> None:
    with pytest.raises(ValueError):
        browse.search_events(db, browse.Search())
    with pytest.raises(ValueError, match="a type alone"):
        browse.search_events(db, browse.Search(event_type="complained"))
    assert browse.search_events(db, browse.Search(event_type="complained", since=datetime.now(UTC))) == []


@pytest.mark.parametrize("seconds", [2, 0], ids=["pairs-of-one-second", "all-of-one-second"])
def test_search_pages_by_occurred_at_and_event_key(database_url: str, db: psycopg.Connection, seconds: int) -> None:
    """Pages of 4 across events that share their second (pairs of them, or all 9): the key
    orders those of one time, so no event is left out or shown twice between pages."""
    store_bodies(
        database_url,
        *(
            webhook_body("open", id=f"m{n}", time=str(BASE_TIME + (n // seconds if seconds else 0)), recipient="r")
            for n in range(9)
        ),
    )
    for search in (browse.Search(recipient="r"), browse.Search(since=datetime.fromtimestamp(BASE_TIME, UTC))):
        pages, after = [], None
        while True:
            rows = browse.search_events(db, search, after=after, limit=4)
            if not rows:
                break
            pages.append([row["message_id"] for row in rows])
            after = (rows[-1]["occurred_at"], rows[-1]["event_key"])
        flat = [m for page in pages for m in page]
        newest_first = [
            m for (m,) in db.execute("SELECT message_id FROM events ORDER BY occurred_at DESC, event_key DESC")
        ]
        assert [len(p) for p in pages] == [4, 4, 1] and flat == newest_first, search


def test_recent_mailings_pages_and_leaves_old_ones_out(database_url: str, db: psycopg.Connection) -> None:
    recent = int((datetime.now(UTC) - timedelta(days=1)).timestamp())
    old = int((datetime.now(UTC) - timedelta(days=200)).timestamp())
    for mailing in (10, 20, 30, 40):
        mailing_events(database_url, mailing, recent, recipients=1)
    mailing_events(database_url, 35, old, recipients=1)
    since = datetime.now(UTC) - timedelta(days=90)
    assert browse.recent_mailings(db, since, limit=2) == [40, 30]
    assert browse.recent_mailings(db, since, before=30, limit=2) == [20, 10]
    assert browse.recent_mailings(db, since, before=10) == []
    stats = browse.mailing_stats_rows(db, [40, 30])
    assert set(stats) == {40, 30} and stats[40]["sent"] == 1 and stats[40]["opens"] == 1
    assert browse.mailing_stats_rows(db, []) == {}


def test_the_timeline_counts_events_attributed_through_the_sent_event(
    database_url: str, db: psycopg.Connection
) -> None:
    mailing_events(database_url, 7, BASE_TIME, recipients=2)
    timeline = browse.mailing_timeline(db, 7)
    assert [(o, c) for _t, o, c in timeline] == [(2, 0), (0, 1)]
    assert browse.mailing_first_sent(db, 7) == datetime.fromtimestamp(BASE_TIME, UTC)
    assert browse.mailing_bounce_reasons(db, 7) == [("5.1.1", "user unknown", 1)]
