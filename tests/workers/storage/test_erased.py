"""A person erased is not brought back (workers.storage.erased): webhooks delivered again, a
logfile import, a replayed reject store nothing of her, while everyone else is stored."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import psycopg
import pytest

from tests.commands import run
from tests.people import (
    ANNA,
    ANNA_NORMAL,
    ANNA_PROFILE,
    CARL,
    KEY,
    anna_calls,
    anna_rejects,
    count,
    other_calls,
    rows_naming,
    store_calls,
    store_everyone,
    store_rejects,
)
from workers.storage import erased, store
from workers.storage.erased import ErasureKeyError, Selector
from workers.storage.erasure import erase


@pytest.fixture
def anna_erased(database_url: str, key: bytes) -> str:
    store_everyone(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert erase(conn, Selector.email(ANNA), key).total == 13
    return database_url


def test_her_webhooks_delivered_again_store_nothing_of_her(anna_erased: str, db: psycopg.Connection) -> None:
    db.execute("DELETE FROM events WHERE recipient = %s", (CARL,))  # Carl's come again as new rows
    result = store_calls(anna_erased, anna_calls() + other_calls())
    # Hers: five by address or by the profile found with it; the sixth, an open of her message
    # that carries neither (no webhook Copernica documents does), comes back with only its IP.
    assert result.erased == 5
    assert result.stored == 3  # that open, Carl's open and click (deleted above)
    assert result.duplicates == 3  # the neighbours' and Carl's unsubscribe
    assert rows_naming(db, ANNA) == []
    assert count(db, "SELECT count(*) FROM events WHERE profile_id = %s OR message_id LIKE 'ma%%'", ANNA_PROFILE) == 1


def test_a_rejected_call_naming_her_is_not_kept_again(anna_erased: str, db: psycopg.Connection) -> None:
    before = count(db, "SELECT count(*) FROM rejected_events")
    result = store_rejects(anna_erased, anna_rejects())
    assert result.erased == 4 and count(db, "SELECT count(*) FROM rejected_events") == before
    assert rows_naming(db, ANNA) == []


def test_the_one_by_one_path_and_replay_leave_her_out(anna_erased: str, db: psycopg.Connection) -> None:
    from workers.jobs import parse_calls

    events, _, _ = parse_calls(anna_calls(), "Europe/Amsterdam")
    with store.connect(anna_erased) as conn, conn.transaction():
        assert store.insert_events(conn, events) == 1  # only the open without address or profile
    assert rows_naming(db, ANNA) == []


def logfile(tmp_path: Path) -> Path:
    """A cdm-impression logfile (JSON) of a day, holding her opens and Carl's."""
    records = [
        {"id": f"mi{n}", "time": f"2026-11-25 10:{n:02d}:00", "ip": "192.0.2.30", "header": "UA", "email": email,
         "profile": profile, "tags": "news"}
        for n, (email, profile) in enumerate([(ANNA, ANNA_PROFILE), (CARL, 7002)] * 4)
    ]  # fmt: skip
    path = tmp_path / "cdm-impression.2026-11-25.json"
    path.write_bytes(orjson.dumps(records))
    return path


def test_a_logfile_import_holding_her_stores_nothing_of_her(
    anna_erased: str, db: psycopg.Connection, capsys, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("DATABASE_URL", anna_erased)
    monkeypatch.setenv("INGEST_ERASURE_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    erased.set_key(None)  # the command reads it from its settings, as a process would
    code, _, err = run(capsys, "import", str(logfile(tmp_path)))
    assert code == 0, err
    assert count(db, "SELECT count(*) FROM events WHERE copernica_type = 'cdm-impression'") == 4  # Carl's
    assert count(db, "SELECT count(*) FROM events WHERE lower(recipient) = %s", ANNA_NORMAL) == 0


def test_a_worker_without_the_key_or_with_another_stores_nothing(
    anna_erased: str, db: psycopg.Connection, monkeypatch, tmp_path
) -> None:
    before = count(db, "SELECT count(*) FROM events")
    erased.set_key("another-key-0123456789")
    with pytest.raises(ErasureKeyError, match="not the key"):
        store_calls(anna_erased, other_calls())
    monkeypatch.delenv("INGEST_ERASURE_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env
    erased.set_key(None)  # read from the settings: unset
    with pytest.raises(ErasureKeyError, match="is not set"):
        store_calls(anna_erased, other_calls())
    assert count(db, "SELECT count(*) FROM events") == before


def test_an_erase_waits_for_the_store_transactions_that_read_the_list_before_it(
    database_url: str, db: psycopg.Connection, key: bytes
) -> None:
    store_everyone(database_url)
    with store.connect(database_url) as storing:
        erased.load(storing)  # a store transaction under way, on the list without her
        done = threading.Event()

        def erasing() -> None:
            with psycopg.connect(database_url, autocommit=True) as conn:
                erase(conn, Selector.email(ANNA), key)
            done.set()

        thread = threading.Thread(target=erasing)
        thread.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 30
        while not count(db, waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert count(db, waiting) == 1 and not done.is_set()  # the erase waits for it...
        assert count(db, "SELECT count(*) FROM events WHERE lower(recipient) = %s", ANNA_NORMAL) == 3
        storing.commit()  # ...and goes on once it has ended
        thread.join(30)
    assert done.is_set()
    assert rows_naming(db, ANNA) == []


def test_a_backfill_from_the_api_holding_her_stores_nothing_of_her(
    anna_erased: str, db: psycopg.Connection, capsys, monkeypatch, tmp_path, fake
) -> None:
    from datetime import date

    from tests.commands import set_api_env
    from tests.fake_copernica import make_records

    day = date(2026, 11, 25)
    records = make_records("cdm-impression", day, 8)
    for record in records[::2]:
        record["email"], record["profile"] = ANNA, str(ANNA_PROFILE)
    fake.add_file("cdm-impression", day, records)
    set_api_env(monkeypatch, tmp_path, fake, DATABASE_URL=anna_erased, INGEST_ERASURE_KEY=KEY)
    erased.set_key(None)
    code, _, err = run(
        capsys, "backfill", "--since", "2026-11-25", "--until", "2026-11-25", "--types", "cdm-impression"
    )
    assert code == 0, err
    assert count(db, "SELECT count(*) FROM events WHERE copernica_type = 'cdm-impression'") == 4
    assert count(db, "SELECT count(*) FROM events WHERE lower(recipient) = %s", ANNA_NORMAL) == 0
