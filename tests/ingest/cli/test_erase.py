"""`ingest erase`: the command's input, output and exit codes, and an erase killed half-way."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.commands import run
from tests.people import ANNA, ANNA_NORMAL, ANNA_PROFILE, KEY, count, rows_naming, store_everyone
from tests.processes import Process, ingest_env
from workers.storage import erased


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Iterator[str]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("INGEST_ERASURE_KEY", KEY)
    monkeypatch.setenv("INGEST_LOG_LEVEL", "WARNING")
    monkeypatch.chdir(tmp_path)
    store_everyone(database_url)
    yield database_url
    erased.set_key(None)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: "), err
    return lines[0]


@pytest.mark.usefixtures("env")
def test_erase_prints_per_person_and_a_summary_and_nothing_stored_exits_0(capsys, db) -> None:
    code, out, err = run(capsys, "erase", "--email", ANNA, "--email", "nobody@example.org")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"{ANNA_NORMAL}: removed 13 row(s) (events 6, messages 3, rejected_events 4)")
    assert f"with profile(s) {ANNA_PROFILE}" in lines[0]
    assert lines[1] == "nobody@example.org: nothing stored"
    assert lines[2] == "2 people: removed 13 row(s) (events 6, messages 3, rejected_events 4); 1 had nothing stored"
    assert rows_naming(db, ANNA) == []
    code, out, _ = run(capsys, "erase", "--email", ANNA)  # again: safe, exit 0
    assert code == 0 and out.startswith(f"{ANNA_NORMAL}: nothing stored")


@pytest.mark.usefixtures("env")
def test_dry_run_shows_per_table_and_changes_nothing(capsys, db) -> None:
    before = count(db, "SELECT count(*) FROM events")
    code, out, _ = run(capsys, "erase", "--dry-run", "--json", "--email", ANNA)
    assert code == 0
    report = json.loads(out)
    assert report["dry_run"] is True
    assert report["people"][0]["removed"] == {"events": 6, "messages": 3, "rejected_events": 4}
    assert count(db, "SELECT count(*) FROM events") == before
    assert count(db, "SELECT count(*) FROM erasures") == 0
    code, out, _ = run(capsys, "erase", "--dry-run", "--email", ANNA)
    assert "would remove 13 row(s)" in out and out.strip().splitlines()[-1].startswith("dry run, nothing changed")


@pytest.mark.usefixtures("env")
def test_from_file_and_list_show_hashes_never_the_person(capsys, tmp_path, db) -> None:
    people = tmp_path / "people.txt"
    people.write_text(f"# erasure requests\n{ANNA}\n\n7002  # carl's profile\n")
    code, out, err = run(capsys, "erase", "--from-file", str(people))
    assert code == 0, err
    assert count(db, "SELECT count(*) FROM events WHERE profile_id IN (%s, 7002)", ANNA_PROFILE) == 0
    code, out, _ = run(capsys, "erase", "--list")
    assert code == 0
    assert "anna" not in out.lower() and "7002" not in out and "7001" not in out
    assert erased.keyed_hash(KEY.encode(), "email", ANNA_NORMAL)[:16] in out
    assert len(out.strip().splitlines()) == 3  # header + two erasures
    code, out, _ = run(capsys, "erase", "--list", "--json")
    rows = json.loads(out)["erasures"]
    assert [r["kind"] for r in rows] == ["profile", "email"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --email ADDRESS, --profile ID or --from-file FILE"),
        (["--email", "not-an-address"], "not an e-mail address"),
        (["--profile", "12x"], "not a profile id"),
        (["--profile", "1", "--database", "x"], "not a database id"),
        (["--list", "--email", "a@example.com"], "--list takes no address"),
        (["--from-file", "/nonexistent/people.txt"], "cannot read"),
    ],
)
@pytest.mark.usefixtures("env")
def test_bad_input_is_a_usage_error_before_anything_is_erased(capsys, db, argv, message) -> None:
    code, _, err = run(capsys, "erase", *argv)
    assert code == 2
    assert message in one_line(err)
    assert count(db, "SELECT count(*) FROM erasures") == 0


@pytest.mark.usefixtures("env")
def test_a_bad_line_of_the_file_is_named_and_nothing_is_erased(capsys, tmp_path, db) -> None:
    people = tmp_path / "people.txt"
    people.write_text(f"{ANNA}\nwhat is this\n")
    code, _, err = run(capsys, "erase", "--from-file", str(people))
    assert code == 2 and f"{people}:2: not a profile id" in one_line(err)
    assert count(db, "SELECT count(*) FROM events WHERE lower(recipient) = %s", ANNA_NORMAL) == 3


@pytest.mark.usefixtures("env")
def test_without_a_key_erase_refuses_in_one_line(capsys, monkeypatch, db) -> None:
    monkeypatch.delenv("INGEST_ERASURE_KEY")
    code, _, err = run(capsys, "erase", "--email", ANNA)
    assert code == 2 and "INGEST_ERASURE_KEY is not set" in one_line(err)
    assert count(db, "SELECT count(*) FROM events WHERE lower(recipient) = %s", ANNA_NORMAL) == 3
    monkeypatch.setenv("INGEST_ERASURE_KEY", "short")
    code, _, err = run(capsys, "erase", "--email", ANNA)
    assert code == 2 and "INGEST_ERASURE_KEY is not valid" in one_line(err) and "short" not in err


BIG = "big.person@example.com"
BIG_ROWS = 300_000


def store_a_big_person(db: psycopg.Connection) -> None:
    """Many rows of one address over three months (SQL: quicker than parsing them)."""
    db.execute(
        "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source, message_id,"
        " recipient, payload)"
        " SELECT md5('big' || n)::uuid, 'opened', 'open', ts, ts, 'webhook', 'mb' || n, %s,"
        "        jsonb_build_object('id', 'mb' || n, 'recipient', %s::text, 'ip', '192.0.2.1')"
        " FROM generate_series(1, %s) AS n,"
        "      LATERAL (SELECT timestamptz '2026-09-10 00:00:00+00' + (n %% 80) * interval '1 day') AS t(ts)",
        (BIG, BIG, BIG_ROWS),
    )


def test_an_erase_killed_half_way_leaves_the_person_whole_then_a_rerun_removes_them(
    env: str, redis_url: str, db: psycopg.Connection
) -> None:
    store_a_big_person(db)
    others = count(db, "SELECT count(*) FROM events WHERE recipient <> %s", BIG)
    proc = Process(["erase", "--email", BIG], ingest_env(redis_url, env, INGEST_ERASURE_KEY=KEY)).start()
    deleting = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.popen is not None and proc.popen.poll() is None:
        deleting = bool(
            count(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'DELETE FROM events%%'"
                " AND pid <> pg_backend_pid()",
            )
        )
        if deleting:
            break
        time.sleep(0.005)
    assert deleting, "the erase ended before its DELETE was seen"
    proc.popen.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    # The server ends the dead client's transaction: wait for it, then look.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and count(
        db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DELETE FROM events%%' AND pid <> pg_backend_pid()"
    ):
        time.sleep(0.05)
    left = count(db, "SELECT count(*) FROM events WHERE recipient = %s", BIG)
    assert left in (0, BIG_ROWS), left  # whole or gone, never half
    assert left == BIG_ROWS  # killed inside the transaction: whole
    assert count(db, "SELECT count(*) FROM erasures") == 0  # no audit row of an erase that did not happen
    assert count(db, "SELECT count(*) FROM events WHERE recipient <> %s", BIG) == others
    done = Process(["erase", "--email", BIG], ingest_env(redis_url, env, INGEST_ERASURE_KEY=KEY)).start()
    assert done.wait(300) == 0
    assert count(db, "SELECT count(*) FROM events WHERE recipient = %s", BIG) == 0
    assert count(db, "SELECT count(*) FROM erasures") == 1
