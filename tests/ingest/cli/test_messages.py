"""`ingest messages rebuild` and the machine counts of `ingest stats`."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import psycopg
import pytest

from tests.commands import run
from tests.keys import stored
from tests.workers.storage.test_messages import BROWSER, event, message_events
from workers.events import machine
from workers.storage import store


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, database_url: str, tmp_path: object) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    yield
    machine.configure(None)


def _opens(db: psycopg.Connection) -> tuple:
    return db.execute("SELECT opens, human_opens FROM messages WHERE message_id = 'm1'").fetchone()


@pytest.mark.usefixtures("env")
def test_rebuild_applies_new_operator_networks(
    monkeypatch: pytest.MonkeyPatch, database_url: str, db: psycopg.Connection, capsys: pytest.CaptureFixture
) -> None:
    scanner = event("m1-scan", "opened", "m1", 70, ip="203.0.113.9", agent=BROWSER)
    with store.connect(database_url) as conn:
        store.store(conn, [*message_events("m1", 1), scanner])
    assert _opens(db) == (4, 2)  # the scanner counted as a person
    monkeypatch.setenv("INGEST_MACHINE_NETWORKS", "203.0.113.0/24")
    code, out, err = run(capsys, "messages", "rebuild", "--json")
    assert code == 0, err
    assert orjson.loads(out)["messages"] == 1
    assert _opens(db) == (4, 1)
    assert db.execute("SELECT machine_rule FROM events WHERE event_key = %s", (stored("m1-scan"),)).fetchone() == (
        "operator_network",
    )
    assert db.execute("SELECT human_opens FROM mailing_stats WHERE mailing_id = 1").fetchone() == (1,)
    # the rule withdrawn: the next rebuild gives the event back its per-event verdict
    monkeypatch.delenv("INGEST_MACHINE_NETWORKS")
    code, out, err = run(capsys, "messages", "rebuild", "--mailing", "1")
    assert (code, out.split()[:2]) == (0, ["rebuilt", "1"]), err
    assert _opens(db) == (4, 2)


@pytest.mark.usefixtures("env")
def test_stats_counts_each_machine_rule(database_url: str, capsys: pytest.CaptureFixture) -> None:
    with store.connect(database_url) as conn:
        store.store(conn, message_events("m1", 1) + message_events("m2", 1))
    code, out, err = run(capsys, "stats", "--json")
    assert code == 0, err
    assert orjson.loads(out)["machine"] == {
        "opened": {"apple_proxy": 2, "human": 2, "unknown": 2},
        "clicked": {"click_near_delivery": 2, "human": 2, "link_burst": 4},
    }
    code, out, err = run(capsys, "stats")
    assert code == 0 and "clicked by who" in out and "link_burst" in out


@pytest.mark.usefixtures("env")
def test_stats_mailing_shows_human_figures(database_url: str, capsys: pytest.CaptureFixture) -> None:
    with store.connect(database_url) as conn:
        store.store(conn, message_events("m1", 5))
    code, out, err = run(capsys, "stats", "--mailing", "5", "--json")
    assert code == 0, err
    row = orjson.loads(out)
    assert (row["opens"], row["human_opens"], row["unique_human_opens"], row["human_clicks"]) == (3, 1, 1, 1)
