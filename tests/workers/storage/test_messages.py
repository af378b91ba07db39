"""`messages` kept by the writer against `events`: any order of arrival, any split into
transactions, duplicates and backfills give the row `messages_rebuild()` makes from the stored
events, and `mailing_stats` equals a plain count over `events`."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.keys import key_name, name_key, stored
from workers.events import machine
from workers.events.model import Event
from workers.storage import messages, store
from workers.storage.reports import MAILING_STATS_COLUMNS

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
GENERIC = "Mozilla/5.0"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/120.0"

# The plain count over `events` that `mailing_stats` answered before `messages` (0005): each event
# under its own mailing id, or its message's `sent` event's.
PLAIN_COUNT = """
SELECT mailing_id,
    count(*) FILTER (WHERE event_type = 'sent'), count(*) FILTER (WHERE event_type = 'delivered'),
    count(*) FILTER (WHERE event_type = 'opened'), count(DISTINCT message_id) FILTER (WHERE event_type = 'opened'),
    count(*) FILTER (WHERE event_type = 'clicked'), count(DISTINCT message_id) FILTER (WHERE event_type = 'clicked'),
    count(*) FILTER (WHERE event_type = 'bounced'), count(*) FILTER (WHERE event_type = 'autoresponded'),
    count(*) FILTER (WHERE event_type = 'failed'), count(*) FILTER (WHERE event_type = 'deferred'),
    count(*) FILTER (WHERE event_type = 'unsubscribed'), count(*) FILTER (WHERE event_type = 'complained')
FROM (
    SELECT e.event_key, e.occurred_at, e.mailing_id, e.event_type, e.message_id FROM events e
    WHERE e.mailing_id IS NOT NULL
    UNION ALL
    SELECT DISTINCT e.event_key, e.occurred_at, s.mailing_id, e.event_type, e.message_id
    FROM events s JOIN events e ON e.message_id = s.message_id
    WHERE s.event_type = 'sent' AND s.mailing_id IS NOT NULL AND e.mailing_id IS NULL
) AS attributed
GROUP BY mailing_id ORDER BY mailing_id
"""
COUNTED = (
    "mailing_id, sent, delivered, opens, unique_opens, clicks, unique_clicks, bounces, autoreplies, failures,"
    " deferrals, unsubscribes, complaints"
)


def event(
    key: str,
    kind: str,
    message_id: str | None,
    second: float,
    *,
    mailing: int | None = None,
    ip: str | None = None,
    agent: str | None = None,
    url: str | None = None,
    code: int | None = None,
    description: str | None = None,
    recipient: str | None = "a@example.com",
    profile: int | None = None,
) -> Event:
    occurred = T0 + timedelta(seconds=second)
    verdict = machine.classify(kind, ip, agent)
    return Event(
        name_key(key),
        kind,
        kind,
        occurred,
        occurred + timedelta(hours=1),
        "logfile",
        message_id,
        recipient,
        {"id": message_id, "k": key},
        ip=ip,
        user_agent=agent,
        url=url,
        mailing_id=mailing,
        profile_id=profile,
        smtp_code=code,
        description=description,
        machine=verdict[0],
        machine_rule=verdict[1],
    )


def message_events(mid: str, mailing: int) -> list[Event]:
    """One message's life, every type the row counts: sent, delivered, opens (a person, Apple's
    proxy, unknown), clicks (a scanner right after delivery, two links in one second, a person),
    a soft and a hard bounce, a deferral, an automatic reply, an unsubscribe and a complaint."""
    return [
        event(f"{mid}-sent", "sent", mid, 0, mailing=mailing, profile=7, recipient="A@example.com"),
        event(f"{mid}-delivered", "delivered", mid, 10, recipient=None),
        event(f"{mid}-open1", "opened", mid, 60, ip="192.0.2.1", agent=BROWSER),
        event(f"{mid}-open2", "opened", mid, 61, ip="17.58.1.2", agent=GENERIC),
        event(f"{mid}-open3", "opened", mid, 62, recipient=None),
        event(f"{mid}-click1", "clicked", mid, 12, ip="198.51.100.7", agent=BROWSER, url="https://x/1"),
        event(f"{mid}-click2", "clicked", mid, 300, ip="192.0.2.1", agent=BROWSER, url="https://x/1"),
        event(f"{mid}-click3", "clicked", mid, 300, ip="192.0.2.9", agent=BROWSER, url="https://x/2"),
        event(f"{mid}-click4", "clicked", mid, 900, ip="192.0.2.1", agent=BROWSER, url="https://x/3"),
        event(f"{mid}-defer", "deferred", mid, 5),
        event(f"{mid}-soft", "bounced", mid, 20, code=421, description="try later"),
        event(f"{mid}-hard", "failed", mid, 30, code=550, description="no such user"),
        event(f"{mid}-hard2", "bounced", mid, 30, code=550, description="mailbox unknown"),
        event(f"{mid}-auto", "autoresponded", mid, 40),
        event(f"{mid}-unsub", "unsubscribed", mid, 1000),
        event(f"{mid}-abuse", "complained", mid, 2000),
    ]


def _messages(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {messages.COLUMNS} FROM messages ORDER BY message_id").fetchall()


def _stats(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    columns = ", ".join((*MAILING_STATS_COLUMNS, "human_opens", "unique_human_opens", "human_clicks"))
    return conn.execute(f"SELECT {columns} FROM mailing_stats ORDER BY mailing_id").fetchall()


def _rebuilt(conn: psycopg.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What messages_rebuild() makes of the stored events (rolled back after)."""
    with conn.transaction(force_rollback=True):
        messages.rebuild(conn)
        return _messages(conn), _stats(conn)


@pytest.fixture
def conn(database_url: str) -> Any:
    with store.connect(database_url) as connection:
        yield connection


ALL = message_events("m1", 1) + message_events("m2", 1) + message_events("m3", 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(range(len(ALL))),
    cuts=st.lists(st.integers(0, len(ALL)), max_size=4),
    repeats=st.lists(st.integers(0, len(ALL) - 1), max_size=6),
)
def test_any_order_and_split_gives_the_rebuilt_row(
    conn: psycopg.Connection, order: list[int], cuts: list[int], repeats: list[int]
) -> None:
    conn.execute("TRUNCATE events, messages, mailing_totals")
    conn.commit()
    arrived = [ALL[i] for i in order] + [ALL[i] for i in repeats]  # a re-delivery changes nothing
    bounds = sorted({0, len(arrived), *cuts})
    for start, end in itertools.pairwise(bounds):
        store.store(conn, arrived[start:end])
    kept, stats = _messages(conn), _stats(conn)
    assert (kept, stats) == _rebuilt(conn)
    # the same row whatever the order: compare with everything stored in one transaction, in order
    conn.execute("TRUNCATE events, messages, mailing_totals")
    conn.commit()
    store.store(conn, ALL)
    assert _messages(conn) == kept
    assert _stats(conn) == stats


def test_the_row_of_a_message(conn: psycopg.Connection) -> None:
    store.store(conn, message_events("m1", 1))
    row = conn.execute(
        "SELECT mailing_id, recipient, profile_id, sent_at, delivered_at, opened_at, clicked_at, bounced_at,"
        " unsubscribed_at, complained_at, sent, delivered, opens, clicks, human_opens, human_clicks, bounces,"
        " failures, deferrals, autoreplies, unsubscribes, complaints, last_bounce_at, last_bounce_reason"
        " FROM messages WHERE message_id = 'm1'"
    ).fetchone()
    at = [T0 + timedelta(seconds=s) for s in (0, 10, 60, 12, 20, 1000, 2000)]
    # human: one open of three (Apple's proxy is a machine, the third unknown); one click of four
    # (at 12 s, 2 s after the delivery: a machine; at 300 s, two links in one second: machines)
    assert row[:3] == (1, "A@example.com", 7)
    assert list(row[3:10]) == at
    assert row[10:22] == (1, 1, 3, 4, 1, 1, 2, 1, 1, 1, 1, 1)
    # two bounces in the same second: the latest by (time, reason) is the same whatever the order
    assert row[22:] == (T0 + timedelta(seconds=30), "no such user")
    rules = {
        key_name(key): rule
        for key, rule in conn.execute(
            "SELECT event_key, machine_rule FROM events WHERE event_type IN ('opened', 'clicked')"
        )
    }
    assert rules == {
        "m1-open1": None,
        "m1-open2": "apple_proxy",
        "m1-open3": None,
        "m1-click1": "click_near_delivery",
        "m1-click2": "link_burst",
        "m1-click3": "link_burst",
        "m1-click4": None,
    }


def test_a_burst_across_transactions_is_caught_when_its_second_click_arrives(conn: psycopg.Connection) -> None:
    """The click rules run again for a message whose clicks a statement changed: two links of a
    message clicked within a second, stored by two transactions long after the delivery."""
    store.store(conn, [event("b-sent", "sent", "b", 0, mailing=3), event("b-delivered", "delivered", "b", 1)])
    conn.commit()
    for key, second, url in (("b-click1", 600, "https://x/1"), ("b-click2", 600.5, "https://x/2")):
        store.store(conn, [event(key, "clicked", "b", second, ip="192.0.2.1", agent=BROWSER, url=url)])
        conn.commit()
    rules = conn.execute("SELECT machine_rule FROM events WHERE event_type = 'clicked' ORDER BY event_key").fetchall()
    assert rules == [("link_burst",), ("link_burst",)]
    assert conn.execute("SELECT clicks, human_clicks FROM messages WHERE message_id = 'b'").fetchone() == (2, 0)


CLICK_RULE = "SELECT machine_rule FROM events WHERE event_key = %s"


def test_a_delivery_after_the_clicks_runs_the_rules_again(conn: psycopg.Connection) -> None:
    """A click stored before its message's delivery is judged again when the delivery arrives."""
    store.store(conn, [event("d-click", "clicked", "d", 12, ip="192.0.2.1", agent=BROWSER, url="https://x/1")])
    conn.commit()
    assert conn.execute(CLICK_RULE, (stored("d-click"),)).fetchone() == (None,)
    store.store(conn, [event("d-delivered", "delivered", "d", 10)])
    conn.commit()
    assert conn.execute(CLICK_RULE, (stored("d-click"),)).fetchone() == ("click_near_delivery",)
    assert conn.execute("SELECT clicks, human_clicks FROM messages WHERE message_id = 'd'").fetchone() == (1, 0)


def test_events_before_their_sent_are_attributed_when_it_arrives(conn: psycopg.Connection) -> None:
    life = message_events("m1", 9)
    store.store(conn, life[1:])
    assert conn.execute("SELECT mailing_id FROM messages").fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM mailing_stats").fetchone() == (0,)
    store.store(conn, life[:1])
    assert conn.execute("SELECT mailing_id FROM messages").fetchone() == (9,)
    row = conn.execute("SELECT sent, delivered, opens, unique_opens, clicks FROM mailing_stats").fetchone()
    assert row == (1, 1, 3, 1, 4)


def test_a_backfill_of_stored_events_changes_nothing(conn: psycopg.Connection) -> None:
    life = message_events("m1", 1)
    store.store(conn, life)
    before = _messages(conn), _stats(conn)
    assert store.store(conn, life).stored == 0  # through the stage this time
    assert store.store(conn, life[3:9]).stored == 0
    assert (_messages(conn), _stats(conn)) == before


def test_two_workers_folding_one_message_count_it_once(conn: psycopg.Connection, database_url: str) -> None:
    """The totals come from what each fold returns: a second transaction waiting on the first's
    lock of the message folds into the row as the first committed it, so the message opened in
    both counts once as a unique open."""
    life = message_events("m1", 4)
    store.store(conn, life[:1])  # sent
    opens = [e for e in life if e.event_type == "opened"][:2]
    with store.connect(database_url) as other:
        with conn.transaction():
            store.store(conn, opens[:1])  # holds the message's row until the commit
            waiting = threading.Thread(target=store.store, args=(other, opens[1:]))
            waiting.start()
            pid = other.info.backend_pid
            for _ in range(200):  # until the second fold waits on the row lock
                row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the second transaction never waited for the first")
        waiting.join(30)
    assert not waiting.is_alive()
    stats = conn.execute("SELECT opens, unique_opens FROM mailing_stats WHERE mailing_id = 4").fetchone()
    assert stats == (2, 1)
    assert (_messages(conn), _stats(conn)) == _rebuilt(conn)


def test_mailing_stats_equal_a_plain_count_over_events(conn: psycopg.Connection) -> None:
    rng = __import__("random").Random(17)
    events: list[Event] = []
    for n in range(60):
        mid = f"r{n}"
        life = message_events(mid, rng.randint(1, 5))
        events += rng.sample(life, rng.randint(1, len(life)))
    # an unsubscribe webhook: the mailing and the profile, no message id
    events.append(event("webhook-unsub", "unsubscribed", None, 3, mailing=3, profile=11, recipient=None))
    rng.shuffle(events)
    for start in range(0, len(events), 97):
        store.store(conn, events[start : start + 97])
    got = conn.execute(f"SELECT {COUNTED} FROM mailing_stats ORDER BY mailing_id").fetchall()
    assert got == conn.execute(PLAIN_COUNT).fetchall()
    assert got  # not vacuous


def test_rebuild_of_one_mailing_leaves_the_others(conn: psycopg.Connection) -> None:
    store.store(conn, message_events("m1", 1) + message_events("m2", 2))
    before = _messages(conn), _stats(conn)
    conn.execute("UPDATE messages SET opens = 0, mailing_id = NULL WHERE message_id = 'm1'")  # damage
    conn.execute("UPDATE messages SET opens = 99 WHERE message_id = 'm2'")
    assert messages.rebuild(conn, [1]) == 1
    after = _messages(conn)
    assert after[0] == before[0][0]
    assert after[1][14] == 99  # mailing 2 untouched


def test_migration_of_a_database_with_events(scratch_database_url: str) -> None:
    """0006 on a database holding events: every event kept, each message gets its row, machine
    opens of Apple's proxy are marked, and mailing_stats keeps its figures."""
    from workers.storage.schema import apply_migrations

    apply_migrations(scratch_database_url, target=5)
    lives = message_events("m1", 1) + message_events("m2", 2)
    lives.append(event("webhook-unsub", "unsubscribed", None, 3, mailing=2, profile=11, recipient=None))
    with store.connect(scratch_database_url) as conn:
        assert store.store(conn, lives).stored == len(lives)  # the old schema: no machine columns
        conn.commit()
        before_events = conn.execute("SELECT id, event_key FROM events ORDER BY id").fetchall()
        before_stats = conn.execute(f"SELECT {COUNTED} FROM mailing_stats ORDER BY mailing_id").fetchall()
        conn.commit()
    assert [m.version for m in apply_migrations(scratch_database_url, target=6)] == [6]
    with store.connect(scratch_database_url) as conn:
        assert conn.execute("SELECT id, event_key FROM events ORDER BY id").fetchall() == before_events
        assert conn.execute(f"SELECT {COUNTED} FROM mailing_stats ORDER BY mailing_id").fetchall() == before_stats
        assert conn.execute(PLAIN_COUNT).fetchall() == before_stats
        kept, stats = _messages(conn), _stats(conn)
        assert [r[0] for r in kept] == ["m1", "m2"]
        # before 0011 the key is the whole text (workers.storage.keys)
        open2 = conn.execute("SELECT machine_rule FROM events WHERE event_key = %s", (name_key("m1-open2"),))
        assert open2.fetchone() == ("apple_proxy",)
        # between 0006 and 0010 (`messages` without its trigger) a worker refuses to store: its job is retried
        with pytest.raises(messages.SchemaInMigration):
            store.store(conn, [event("m1-open9", "opened", "m1", 5000, ip="192.0.2.3", agent=BROWSER)])
        conn.rollback()
    apply_migrations(scratch_database_url)
    with store.connect(scratch_database_url) as conn:
        assert (kept, stats) == _rebuilt(conn)  # the rows 0006 made are those the rebuild makes
        # 0012: the stored user agents are kept once, each row by its hash, read through the row
        one = conn.execute("SELECT e.user_agent FROM events e WHERE event_key = %s", (stored("m1-open1"),))
        assert one.fetchone() == (BROWSER,)
        assert conn.execute("SELECT count(*) FROM user_agents").fetchone() == (2,)
        # and once migrated, PostgreSQL keeps `messages` from now on
        store.store(conn, [event("m1-open9", "opened", "m1", 5000, ip="192.0.2.3", agent=BROWSER)])
        assert conn.execute("SELECT opens, human_opens FROM messages WHERE message_id = 'm1'").fetchone() == (4, 2)
