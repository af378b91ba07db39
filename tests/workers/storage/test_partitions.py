"""Monthly partitions of `events`: made by workers for a batch's months (cached), made ahead by
migrate, rows moved out of the default partition, one row per event across partitions, and
`ingest prune` dropping whole months only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from common.envelope import Envelope
from ingest.cli import main
from tests.fixtures_copernica import TZ
from tests.keys import stored
from workers.events.model import Event, from_webhook
from workers.storage import partitions, store
from workers.storage.keys import key_text
from workers.storage.schema import apply_migrations

NOW = datetime.now(UTC)


def _open(message: str, moment: datetime | None, *, received: float | None = None, **extra: str) -> Event:
    fields = {"type": "open", "id": message, "ip": "192.0.2.1", **extra}
    if moment is not None:
        fields["time"] = str(int(moment.timestamp()))
    envelope = Envelope(
        body=b"x",
        content_type="application/x-www-form-urlencoded",
        received_at=NOW.timestamp() if received is None else received,
    )
    return from_webhook(fields, envelope, TZ)


def _where(db: psycopg.Connection, message: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT tableoid::regclass::text FROM events WHERE message_id = %s", (message,))]


def _drop_partition(db: psycopg.Connection, month: date) -> None:
    db.execute(f"DROP TABLE IF EXISTS events_p{month:%Y%m}")


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with store.connect(database_url) as connection:
        yield connection


# --- the months of a batch ------------------------------------------------------------------------


def test_worker_makes_the_partition_of_a_new_month_before_inserting(
    db: psycopg.Connection, conn: psycopg.Connection
) -> None:
    moment = datetime(2019, 3, 10, 12, tzinfo=UTC)  # a backfill of an old month: no partition yet
    _drop_partition(db, date(2019, 3, 1))
    assert store.store(conn, [_open("m-2019", moment)]).stored == 1
    assert _where(db, "m-2019") == ["events_p201903"]


@pytest.mark.usefixtures("db")
def test_known_months_cost_no_query(conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    store.store(conn, [_open("m1", NOW)])

    def no_catalogue(*_: object) -> None:
        raise AssertionError("the catalogue was read for a known month")

    monkeypatch.setattr(partitions, "list_partitions", no_catalogue)
    monkeypatch.setattr(partitions, "is_partitioned", no_catalogue)
    assert store.store(conn, [_open("m2", NOW), _open("m3", NOW - timedelta(seconds=1))]).stored == 2


def test_a_rolled_back_partition_is_made_again(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    """A batch that made a partition and then rolled back must not leave the month cached."""
    moment = datetime(2019, 5, 10, tzinfo=UTC)
    _drop_partition(db, date(2019, 5, 1))
    with conn.transaction(force_rollback=True):
        store.insert_events(conn, [_open("m-rolled", moment)])
        assert _where(conn, "m-rolled") == ["events_p201905"]
    assert db.execute("SELECT to_regclass('events_p201905')").fetchone()[0] is None
    assert store.store(conn, [_open("m-again", moment)]).stored == 1
    assert _where(db, "m-again") == ["events_p201905"]


def test_far_future_rows_go_to_the_default_partition(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    far = NOW + timedelta(days=31 * (partitions.HORIZON + 2))
    assert store.store(conn, [_open("m-far", far)]).stored == 1
    assert _where(db, "m-far") == ["events_default"]
    assert db.execute("SELECT to_regclass(%s)", (f"events_p{far:%Y%m}",)).fetchone()[0] is None


def test_a_locked_default_partition_does_not_stop_the_batch(
    db: psycopg.Connection, conn: psycopg.Connection, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Making a partition waits WORKER_LOCK_TIMEOUT at most; then the rows go to the default
    partition, and `create_ahead` (ingest migrate) moves them out later."""
    moment = datetime(2019, 7, 4, tzinfo=UTC)
    _drop_partition(db, date(2019, 7, 1))
    with psycopg.connect(database_url) as other:
        other.execute("LOCK TABLE events_default IN ACCESS SHARE MODE")  # a long reader of events
        with caplog.at_level(logging.WARNING, logger="workers.storage.partitions"):
            assert store.store(conn, [_open("m-locked", moment)]).stored == 1
        other.rollback()
    assert "could not lock events" in caplog.text
    assert _where(db, "m-locked") == ["events_default"]
    row_before = db.execute("SELECT to_jsonb(e) FROM events e WHERE message_id = 'm-locked'").fetchone()

    assert date(2019, 7, 1) in partitions.create_ahead(db)
    assert _where(db, "m-locked") == ["events_p201907"]
    assert db.execute("SELECT to_jsonb(e) FROM events e WHERE message_id = 'm-locked'").fetchone() == row_before
    assert db.execute("SELECT count(*) FROM events_default WHERE message_id = 'm-locked'").fetchone()[0] == 0


def test_create_ahead_is_idempotent(db: psycopg.Connection) -> None:
    partitions.create_ahead(db)
    names = [p.name for p in partitions.list_partitions(db)]
    assert partitions.create_ahead(db) == []
    assert [p.name for p in partitions.list_partitions(db)] == names
    current = partitions.month_of(NOW)
    for n in range(-partitions.BEHIND, partitions.AHEAD + 1):
        assert f"events_p{partitions.add_months(current, n):%Y%m}" in names


# --- one row per event ------------------------------------------------------------------------------


@pytest.mark.usefixtures("db")
def test_timed_event_is_one_row_however_often_it_comes(conn: psycopg.Connection) -> None:
    moment = NOW.replace(microsecond=0)
    first = _open("m-timed", moment, received=NOW.timestamp())
    again = _open("m-timed", moment, received=NOW.timestamp() + 3600)  # another delivery, an hour later
    assert first.event_key == again.event_key and first.occurred_at == again.occurred_at
    assert store.store(conn, [first]).stored == 1
    assert (store.store(conn, [again]).stored, store.store(conn, [first, again]).stored) == (0, 0)


def test_untimed_events_keep_one_row_per_key(db: psycopg.Connection, conn: psycopg.Connection) -> None:
    """No usable time: occurred_at is the time of receipt, different for each delivery, while the
    key is the same (a message event within the same second; a payload-keyed event always)."""
    base = NOW.replace(microsecond=100_000).timestamp()
    message = [_open("m-untimed", None, received=base), _open("m-untimed", None, received=base + 0.5)]
    payload = [
        from_webhook(
            {"type": "mystery", "x": "1"}, Envelope(body=b"x", content_type="", received_at=base + hours * 3600), TZ
        )
        for hours in (0, 24 * 40)
    ]  # even a month apart: another partition
    for first, again in (message, payload):
        assert first.event_key == again.event_key and first.occurred_at != again.occurred_at
        assert store.store(conn, [first]).stored == 1
        assert store.store(conn, [again]).stored == 0
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 2


# --- prune --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "age"), [("90d", timedelta(days=90)), ("12w", timedelta(weeks=12)), (" 1D ", timedelta(days=1))]
)
def test_parse_age(text: str, age: timedelta) -> None:
    assert partitions.parse_age(text) == age


@pytest.mark.parametrize("text", ["", "90", "6m", "0d", "-5d", "1.5d", "90 days", "d"])
def test_parse_age_refuses(text: str) -> None:
    with pytest.raises(partitions.RetentionError):
        partitions.parse_age(text)


@pytest.fixture
def pruned_db(scratch_database_url: str) -> Iterator[psycopg.Connection]:
    """A migrated database of its own with one row in each month of 2026 to date, plus one in
    the default partition (a row of April 2026 that came while the month had no partition)."""
    apply_migrations(scratch_database_url)
    with psycopg.connect(scratch_database_url, autocommit=True) as conn:
        for month in range(1, 12):
            moment = datetime(2026, month, 15, 12, tzinfo=UTC)
            partitions.create_months(conn, [partitions.month_of(moment)], "1s")
            conn.execute(
                "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
                " payload) VALUES (%s, 'opened', 'open', %s, %s, 'webhook', '{}')",
                (stored(f"k{month}"), moment, moment),
            )
        conn.execute("ALTER TABLE events DETACH PARTITION events_p202604")
        conn.execute(
            "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source,"
            " payload) SELECT md5(event_key::text || '-late')::uuid, event_type, copernica_type, occurred_at,"
            " received_at, source, payload FROM events_p202604"
        )
        conn.execute("DROP TABLE events_p202604")
        yield conn


PRUNE_NOW = datetime(2026, 11, 20, tzinfo=UTC)


def test_prune_drops_whole_months_only(pruned_db: psycopg.Connection) -> None:
    before = {key_text(r[0]) for r in pruned_db.execute("SELECT event_key FROM events")}
    assert pruned_db.execute("SELECT count(*) FROM events_default").fetchone()[0] == 1
    # cutoff 2026-08-22: July ended before it, August did not
    result = partitions.prune(pruned_db, timedelta(days=90), now=PRUNE_NOW)
    assert result.cutoff == datetime(2026, 8, 22, tzinfo=UTC)
    assert result.moved_months == [date(2026, 4, 1)]  # out of the default partition, then dropped with April
    assert [p.name for p in result.dropped] == [f"events_p2026{m:02d}" for m in range(1, 8)]
    left = {key_text(r[0]) for r in pruned_db.execute("SELECT event_key FROM events")}
    assert left == {stored(f"k{m}") for m in (8, 9, 10, 11)} and left < before
    assert result.default_rows == 0
    names = {p.name for p in partitions.list_partitions(pruned_db)}
    assert "events_p202608" in names and "events_p202607" not in names
    assert partitions.prune(pruned_db, timedelta(days=90), now=PRUNE_NOW).dropped == []  # nothing left to drop


def test_prune_dry_run_drops_nothing(pruned_db: psycopg.Connection) -> None:
    names = [p.name for p in partitions.list_partitions(pruned_db)]
    result = partitions.prune(pruned_db, timedelta(weeks=20), now=PRUNE_NOW, dry_run=True)
    # cutoff 2026-07-03; April's row waits in the default partition (a dry run moves nothing)
    assert [p.name for p in result.dropped] == [
        "events_p202601",
        "events_p202602",
        "events_p202603",
        "events_p202605",
        "events_p202606",
    ]
    assert [p.name for p in partitions.list_partitions(pruned_db)] == names
    assert pruned_db.execute("SELECT count(*) FROM events").fetchone()[0] == 11


def test_prune_command(
    pruned_db: psycopg.Connection,
    scratch_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", scratch_database_url)
    age = f"{(datetime.now(UTC) - datetime(2026, 6, 1, tzinfo=UTC)).days}d"  # May and older go
    assert main(["prune", "--older-than", age, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would drop 4 partition(s)" in out and "events_p202605" in out
    assert main(["prune", "--older-than", age]) == 0
    out = capsys.readouterr().out
    assert "dropped 5 partition(s)" in out and "events_p202604" in out
    assert pruned_db.execute("SELECT min(occurred_at) FROM events").fetchone()[0] >= datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize("age", ["6m", "0d", "soon"])
def test_prune_bad_age_is_one_line(age: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--older-than", age]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ingest: prune --older-than:")
