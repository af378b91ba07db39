"""`ingest rejected list` and `ingest rejected replay`: kept calls shown, re-parsed after a fix,
stored and removed in one transaction."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from common.envelope import Envelope
from ingest.cli import main
from tests.fixtures_copernica import RECEIVED, TZ, WEBHOOK_CASES, encode_log, envelope, log_record, wire
from workers.events.model import from_webhook
from workers.storage import rejected, store

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


def keep(db: psycopg.Connection, env: Envelope, reason: str, source: str = "webhook") -> int:
    store.store(db, [], [store.Rejected(env, reason, source)])
    return db.execute("SELECT id FROM rejected_events WHERE call_key = %s", (store.call_key(env),)).fetchone()[0]


def open_call(received_at: float = RECEIVED) -> Envelope:
    return wire(next(c for c in WEBHOOK_CASES if c.name == "open"), "form", received_at=received_at)


def garbage(received_at: float = RECEIVED) -> Envelope:
    return envelope(b"\x00\x01 not a form \xff", FORM, received_at=received_at)


def logfile_call() -> Envelope:
    """How the store keeps a logfile record PostgreSQL refused: its fields as JSON, target names the log."""
    body = orjson.dumps(log_record("cdm-impression", id="from-log"))
    return Envelope(
        body=body, content_type="application/json", received_at=RECEIVED + 5, target="logfile:cdm-impression"
    )


def counts(db: psycopg.Connection) -> tuple[int, int]:
    return (
        db.execute("SELECT count(*) FROM events").fetchone()[0],
        db.execute("SELECT count(*) FROM rejected_events").fetchone()[0],
    )


def test_list_shows_newest_first_with_first_bytes(db: psycopg.Connection) -> None:
    keep(db, garbage(RECEIVED), "form body is not valid UTF-8")
    keep(db, open_call(RECEIVED + 10), "old parser bug")
    listed = rejected.list_rejected(db)
    assert [c.reason for c in listed] == ["old parser bug", "form body is not valid UTF-8"]
    assert listed[0].preview.startswith("id=b4icbaqjswyrb7tc&type=open") and listed[0].preview.endswith("…")
    assert listed[1].preview == "\\x00\\x01 not a form \ufffd"
    assert rejected.list_rejected(db, limit=1)[0].reason == "old parser bug"


@pytest.mark.usefixtures("cli_env")
def test_cli_list(db: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rejected", "list"]) == 0
    assert "no rejected calls" in capsys.readouterr().out
    first = keep(db, garbage(), "form body is not valid UTF-8")
    keep(db, open_call(RECEIVED + 10), "old parser bug")
    assert main(["rejected", "list", "--limit", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["id", "received"]
    assert "old parser bug" in out[1] and "id=b4icbaqjswyrb7tc" in out[1]
    assert out[-1] == "(1 of 2 shown; --limit N shows more)"
    assert main(["rejected", "list"]) == 0
    assert any(line.lstrip().startswith(f"{first} ") for line in capsys.readouterr().out.splitlines())


def test_replay_all_stores_what_now_parses_and_removes_it(db: psycopg.Connection) -> None:
    fixed = keep(db, open_call(), "old parser bug")
    broken = keep(db, garbage(), "stale reason")
    from_log = keep(db, logfile_call(), "refused by PostgreSQL: old", source="logfile")
    already = envelope(wire(WEBHOOK_CASES[2], "json").body, "application/json", received_at=RECEIVED + 1)
    store.store(db, [from_webhook(orjson.loads(already.body), already, TZ)])
    dup = keep(db, already, "old parser bug")
    assert counts(db) == (1, 4)

    result = rejected.replay(db, TZ)

    assert (result.replayed, result.removed, result.stored, result.duplicates, result.still_rejected) == (4, 3, 2, 1, 1)
    assert counts(db) == (3, 1)
    left = db.execute("SELECT id, reason FROM rejected_events").fetchone()
    assert left == (broken, "form body is not valid UTF-8")  # kept, with today's reason
    rows = dict(db.execute("SELECT message_id, source FROM events").fetchall())
    assert rows == {"b4icbaqjswyrb7tc": "webhook", "from-log": "logfile"} | {WEBHOOK_CASES[2].json["id"]: "webhook"}
    assert db.execute("SELECT account FROM events WHERE event_type = 'opened' AND source = 'webhook'").fetchone() == (
        "1234",
    )  # the stored headers are read again
    assert {fixed, from_log, dup}.isdisjoint({r[0] for r in db.execute("SELECT id FROM rejected_events")})


def test_replay_one_touches_only_that_call(db: psycopg.Connection) -> None:
    first = keep(db, open_call(), "old parser bug")
    keep(db, open_call(RECEIVED + 100), "old parser bug")  # another call, same event
    result = rejected.replay(db, TZ, only=first)
    assert (result.replayed, result.removed) == (1, 1)
    assert counts(db) == (1, 1)


def test_replay_keeps_the_call_when_the_store_refuses(db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    good = keep(db, open_call(), "old parser bug")
    refused = keep(db, open_call(RECEIVED + 1), "old parser bug")
    real = store.insert_events
    calls = iter([False, True])

    def flaky(conn: psycopg.Connection, events: list) -> int:
        if next(calls):
            real(conn, events)  # written, then refused: the savepoint must undo it
            raise psycopg.errors.InvalidTextRepresentation("refused for the test")
        return real(conn, events)

    monkeypatch.setattr(store, "insert_events", flaky)
    result = rejected.replay(db, TZ)
    assert (result.removed, result.still_rejected) == (1, 1)
    assert counts(db) == (1, 1)
    assert db.execute("SELECT id, reason FROM rejected_events").fetchone() == (
        refused,
        "refused by PostgreSQL: refused for the test",
    )
    assert good != refused


@pytest.mark.usefixtures("cli_env")
def test_cli_replay(db: psycopg.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    one = keep(db, open_call(), "old parser bug")
    keep(db, garbage(), "x")
    assert main(["rejected", "replay", "--id", str(one)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("replayed 1: 1 now stored (1 new events, 0 already stored), 0 still rejected")
    assert main(["rejected", "replay", "--all"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "replayed 1: 0 now stored (0 new events, 0 already stored), 1 still rejected"
    assert "form body is not valid UTF-8" in out[1]
    assert counts(db) == (1, 1)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["rejected", "replay"], 2, "give --id N or --all"),
        (["rejected", "replay", "--id", "1", "--all"], 2, "not both"),
        (["rejected", "replay", "--id", "12345"], 1, "no rejected call with id 12345"),
        (["rejected", "list", "--limit", "0"], 2, "--limit must be at least 1"),
    ],
)
@pytest.mark.usefixtures("cli_env")
def test_cli_bad_usage_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("ingest: ")


@pytest.mark.parametrize("fmt", ["csv", "json", "xml"])
def test_replay_reads_records_kept_by_the_backfill(db: psycopg.Connection, fmt: str) -> None:
    """The backfill keeps a raw record with its format as content type and `file:line` as target."""
    good = log_record("cdm-impression", id="kept-record")
    no_time = log_record("cdm-impression", id="no-time", time="")
    types = {"csv": "text/csv", "json": "application/json", "xml": "application/xml"}
    for number, record in enumerate((good, no_time), start=1):
        raw = encode_log("cdm-impression", [record], fmt)
        if fmt == "xml":
            raw = raw[raw.index(b"<record>") : raw.index(b"</record>") + len(b"</record>")]
        if fmt == "json":
            raw = orjson.dumps(record)
        env = Envelope(
            body=raw,
            content_type=types[fmt],
            received_at=RECEIVED,
            method="FILE",
            target=f"cdm-impression.2026-11-26.log:{number}",
        )
        keep(db, env, "an older reason", source="logfile")

    result = rejected.replay(db, TZ)

    assert (result.removed, result.still_rejected) == (1, 1)
    row = db.execute("SELECT message_id, source, copernica_type, event_type, host(ip) FROM events").fetchone()
    assert row == ("kept-record", "logfile", "cdm-impression", "opened", "192.0.2.1")
    assert "no usable time" in db.execute("SELECT reason FROM rejected_events").fetchone()[0]


def test_replay_of_a_record_whose_log_is_unknown_keeps_it(db: psycopg.Connection) -> None:
    keep(
        db,
        Envelope(body=b"a,b", content_type="text/csv", received_at=RECEIVED, target="mystery.csv:1"),
        "x",
        source="logfile",
    )
    result = rejected.replay(db, TZ)
    assert result.still_rejected == 1 and "log type" in next(iter(result.reasons))


@pytest.mark.usefixtures("cli_env")
def test_prune_deletes_the_rejected_calls_older_than_the_age(db: psycopg.Connection, capsys) -> None:
    import time

    now = time.time()
    keep(db, garbage(now - 100 * 86400), "old")
    keep(db, garbage(now - 10 * 86400), "recent")
    assert main(["prune", "--older-than", "90d", "--dry-run"]) == 0
    assert "would delete 1 rejected call(s) received before" in capsys.readouterr().out
    assert [r.reason for r in rejected.list_rejected(db)] == ["recent", "old"]
    assert main(["prune", "--older-than", "90d"]) == 0
    assert "deleted 1 rejected call(s) received before" in capsys.readouterr().out
    assert [r.reason for r in rejected.list_rejected(db)] == ["recent"]
