"""`ingest reconcile --date`: Copernica's log of its failed calls (`feedback-loop-errors`), against
the fake Copernica API and a real PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import orjson
import pytest

from tests.commands import count, run, send_webhooks, set_api_env
from tests.fake_copernica import ZONE, FakeCopernica, local_time, make_records
from workers.backfill.api import CopernicaClient, RetryPolicy
from workers.backfill.failed_calls import FailedCalls, failed_calls
from workers.backfill.files import Run
from workers.storage import store

TZ = "Europe/Amsterdam"
DAY = date(2026, 11, 25)
FILE = "feedback-loop-errors.2026-11-25.log"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, fake: FakeCopernica) -> None:
    set_api_env(monkeypatch, tmp_path, fake, DATABASE_URL=database_url, COPERNICA_TIMEZONE=TZ)


def reconcile_json(capsys: pytest.CaptureFixture) -> tuple[int, dict]:
    code, out, err = run(capsys, "reconcile", "--date", DAY.isoformat(), "--json")
    assert err.count("Traceback") == 0, err
    return code, orjson.loads(out)


def at(hour: int, minute: int, second: int = 0) -> int:
    return int(datetime(DAY.year, DAY.month, DAY.day, hour, minute, second, tzinfo=ZONE).timestamp())


def failed(unix: int, response: object, header: str = "") -> dict:
    """One feedback-loop-errors record, its time in Copernica's (Amsterdam) local time."""
    return {
        "time": local_time(unix),
        "response": response,
        "recipient": "198.51.100.7",
        "header": header,
        "_unix": unix,
    }


def a_day_with_failed_calls(fake: FakeCopernica, database_url: str) -> list[dict]:
    """80 clicks 08:00:00-08:09:13, one every 7 s; the webhooks brought the first 40 (to
    08:04:33), the logfile holds all. Copernica logged five failed calls: three in minutes of
    clicks the webhooks brought (08:00, 08:03), one in a minute only the logfile has (08:07),
    one at 23:10 when no event occurred."""
    clicks = make_records("cdm-click", DAY, 80)
    fake.add_file("cdm-click", DAY, clicks)
    send_webhooks(database_url, "cdm-click", clicks[:40])
    calls = [
        failed(at(8, 0, 10), "503"),
        failed(at(8, 0, 40), 503),
        failed(at(8, 3, 5), "504"),
        failed(at(8, 7, 30), "timeout"),
        failed(at(23, 10), "503"),
    ]
    fake.add_file("feedback-loop-errors", DAY, calls)
    return clicks


@pytest.mark.usefixtures("env")
def test_failed_calls_by_response_first_last_and_stored_minutes(capsys, db, fake, database_url) -> None:
    a_day_with_failed_calls(fake, database_url)
    code, report = reconcile_json(capsys)
    assert report["missing"] == 40  # the logfile pass ran first
    assert report["failed_calls"] == {
        "total": 5,
        "by_response": {"503": 3, "504": 1, "timeout": 1},
        "first": "2026-11-25T08:00:10+01:00",  # read in Copernica's zone, shown in it
        "last": "2026-11-25T23:10:00+01:00",
        "minutes": 4,
        # 08:00 and 08:03 (webhooks), 08:07 (only just stored from the logfile); not 23:10
        "minutes_with_events_stored": 3,
        "files": [FILE],
        "rejected": 0,
        "with_message_id": 0,
        "message_ids_stored": 0,
        "error": None,
    }
    assert code == 1
    # not events: nothing of the file is in `events`, nothing rejected
    assert count(db, "SELECT count(*) FROM events") == 80
    assert count(db, "SELECT count(*) FROM events WHERE copernica_type = 'feedback-loop-errors'") == 0
    assert count(db, "SELECT count(*) FROM rejected_events") == 0
    assert db.execute("SELECT log_type, records, stored FROM backfill_files WHERE name = %s", (FILE,)).fetchone() == (
        "feedback-loop-errors",
        5,
        0,
    )

    # Nothing missing any more, but the calls failed all the same: still exit 1.
    code, report = reconcile_json(capsys)
    assert report["missing"] == 0 and report["failed_calls"]["total"] == 5
    assert code == 1


@pytest.mark.usefixtures("env")
def test_failed_calls_table_after_the_per_type_table(capsys, fake, database_url) -> None:
    a_day_with_failed_calls(fake, database_url)
    run(capsys, "reconcile", "--date", DAY.isoformat())  # store what was missing
    code, out, _ = run(capsys, "reconcile", "--date", DAY.isoformat())
    assert code == 1
    assert "nothing was missing" in out
    assert out.index("reconcile 2026-11-25") < out.index("Copernica's failed calls to this receiver, 2026-11-25")
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.split("Copernica's failed calls")[1].splitlines()
        if line.startswith("│")
    }
    assert rows == {"503": "3", "504": "1", "timeout": "1", "total": "5"}
    assert "first 2026-11-25 08:00:10+01:00, last 2026-11-25 23:10:00+01:00" in out
    assert "4 minute(s) with failed calls; events stored for 3 of them, none for 1" in out


@pytest.mark.usefixtures("env")
def test_a_day_without_the_file_logs_none_and_exits_as_before(capsys, fake, database_url) -> None:
    clicks = make_records("cdm-click", DAY, 30)
    fake.add_file("cdm-click", DAY, clicks)
    send_webhooks(database_url, "cdm-click", clicks)
    code, out, _ = run(capsys, "reconcile", "--date", DAY.isoformat())
    assert code == 0
    assert "nothing was missing" in out
    assert "failed calls (feedback-loop-errors): none logged" in out
    code, report = reconcile_json(capsys)
    assert code == 0
    assert report["failed_calls"]["total"] == 0 and report["failed_calls"]["files"] == []
    assert report["failed_calls"]["by_response"] == {} and report["failed_calls"]["first"] is None
    assert any(h.query.get("type") == "feedback-loop-errors" for h in fake.hits if h.path == "/v4/logfiles")


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("fmt", ["json", "csv", "xml"])
def test_unreadable_lines_are_kept_and_the_rest_counted(capsys, db, fake, fmt) -> None:
    calls = [failed(at(9, 0, n), "503") for n in range(4)]
    calls.insert(2, {"time": "yesterday", "response": "503", "recipient": "", "header": "", "_unix": 0})
    fake.add_file("feedback-loop-errors", DAY, calls, malformed_after=1)
    argv = ["reconcile", "--date", DAY.isoformat(), "--format", fmt, "--json"]
    code, out, _ = run(capsys, *argv)
    report = orjson.loads(out)["failed_calls"]
    assert code == 1
    assert (report["total"], report["rejected"], report["minutes"]) == (4, 2, 1)
    assert report["minutes_with_events_stored"] == 0
    rows = db.execute("SELECT target, reason, source FROM rejected_events ORDER BY target").fetchall()
    # the fake's malformed record comes after the first; the bad time is the fourth record
    first_line = {"json": 2, "xml": 2, "csv": 3}[fmt]  # CSV: line 1 is the header
    assert [r[0] for r in rows] == [f"{FILE}:{first_line}", f"{FILE}:{first_line + 2}"]
    assert all(r[2] == "logfile" for r in rows)
    assert any("no usable time" in r[1] for r in rows)
    assert count(db, "SELECT count(*) FROM events") == 0
    # read again: kept once
    run(capsys, *argv)
    assert count(db, "SELECT count(*) FROM rejected_events") == 2


@pytest.mark.usefixtures("env")
def test_a_download_that_fails_is_reported_and_exits_1(capsys, db, fake) -> None:
    fake.add_file("feedback-loop-errors", DAY, [failed(at(9, 0), "503")])
    fake.fail("/v4/logfile/feedback-loop-errors", 500)
    code, out, _ = run(capsys, "reconcile", "--date", DAY.isoformat())
    assert code == 1
    assert "failed feedback-loop-errors" in out and "none logged" not in out
    assert db.execute("SELECT last_error FROM backfill_files WHERE name = %s", (FILE,)).fetchone()[0]


def test_result_object_and_message_ids_from_the_header(database_url, fake) -> None:
    clicks = make_records("cdm-click", DAY, 3)
    send_webhooks(database_url, "cdm-click", clicks[:1])
    fake.add_file(
        "feedback-loop-errors",
        DAY,
        [
            failed(at(12, 0), "503", f"id={clicks[0]['id']}&type=click&time=1795694401"),  # stored
            failed(at(12, 0, 5), "503", f'{{"id": "{clicks[1]["id"]}", "type": "click"}}'),  # not stored
            failed(at(12, 1), "503", 'X-Copernica-ID: 12345; Signature: keyId="a.copernica.com"'),  # no message id
        ],
    )
    client = CopernicaClient(fake.token, fake.api_url, fake.auth_url, policy=RetryPolicy(base_delay=0.01))
    with store.connect(database_url) as conn:
        result = failed_calls(Run(conn, TZ, client=client), DAY)
    assert isinstance(result, FailedCalls)
    assert (result.total, result.with_message_id, result.message_ids_stored) == (3, 2, 1)
    assert result.first is not None and result.first.utcoffset() is not None
    assert result.by_response == {"503": 3}


def test_a_listing_that_fails_is_an_error_not_a_crash(database_url, fake) -> None:
    fake.fail("/v4/logfiles", 500)
    client = CopernicaClient(fake.token, fake.api_url, fake.auth_url, policy=RetryPolicy(base_delay=0.01))
    with store.connect(database_url) as conn:
        result = failed_calls(Run(conn, TZ, client=client), DAY)
    assert result.error is not None and "feedback-loop-errors" in result.error
    assert (result.total, result.logged) == (0, False)
