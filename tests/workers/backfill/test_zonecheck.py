"""The time zone of logfiles, checked against stored webhooks before a file is stored."""

from __future__ import annotations

import io
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.commands import count, run, send_webhooks
from tests.fake_copernica import FakeCopernica, LogFile, make_records
from tests.workers.backfill.test_backfill import DAY, write
from workers.backfill import zonecheck
from workers.backfill.zonecheck import Sample, judge, zone_for

TZ = "Europe/Amsterdam"


@pytest.fixture
def copernica() -> Iterator[FakeCopernica]:
    server = FakeCopernica().start()
    yield server
    server.stop()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, copernica: FakeCopernica) -> None:
    values = {
        "DATABASE_URL": database_url,
        "COPERNICA_RETRY_DELAY": "0.01",
        "COPERNICA_RETRIES": "3",
        "INGEST_LOG_LEVEL": "WARNING",
        "COPERNICA_TIMEZONE": TZ,
        **copernica.env(),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ingest: ")
    return err


# --- through the commands, against real webhook rows ---------------------------------------------------


@pytest.mark.usefixtures("cli_env")
def test_backfill_and_reconcile_refuse_a_utc_logfile_then_timezone_utc_stores_it_once(
    capsys, db, copernica, database_url
) -> None:
    records = make_records("cdm-click", DAY, 100, zone=zoneinfo.ZoneInfo("UTC"))  # Amsterdam is UTC+1 in November
    copernica.add_file("cdm-click", DAY, records)
    send_webhooks(database_url, "cdm-click", records[:30])
    argv = ["backfill", "--since", "2026-11-25", "--until", "2026-11-25", "--types", "cdm-click"]
    code, _, err = run(capsys, *argv)
    assert code == 1
    line = one_line(err)
    assert "cdm-click.2026-11-25.log" in line and "-01:00" in line and "30 of 30 matches" in line
    assert "COPERNICA_TIMEZONE=UTC " in line and "--timezone UTC)" in line
    assert count(db, "SELECT count(*) FROM events") == 30  # nothing of the file
    assert "time zone mismatch" in db.execute("SELECT last_error FROM backfill_files").fetchone()[0]

    code, _, err = run(capsys, "reconcile", "--date", "2026-11-25", "--types", "cdm-click")
    assert code == 1 and "COPERNICA_TIMEZONE=UTC" in one_line(err)
    assert count(db, "SELECT count(*) FROM events") == 30

    code, out, err = run(capsys, *argv, "--timezone", "UTC")
    assert code == 0, out + err
    assert count(db, "SELECT count(*) FROM events") == 100  # not 130: each webhook met its record
    assert count(db, "SELECT count(DISTINCT message_id) FROM events") == 100
    assert count(db, "SELECT count(*) FROM events WHERE source = 'logfile'") == 70


@pytest.mark.parametrize(
    ("written_in", "offset", "zone"),
    [
        ("UTC", "-01:00", "UTC"),
        ("Asia/Kolkata", "+04:30", "Asia/Kolkata"),  # a half-hour offset
        ("Etc/GMT-3", "+02:00", "Etc/GMT-3"),  # UTC+3
        ("America/New_York", "-06:00", "Etc/GMT+5"),  # EST in November: UTC-5
    ],
)
@pytest.mark.usefixtures("cli_env")
def test_import_refuses_a_file_in_another_zone_and_names_the_one_that_fits(
    capsys, db, copernica, database_url, tmp_path, written_in, offset, zone
) -> None:
    records = make_records("cdm-impression", DAY, 60, zone=zoneinfo.ZoneInfo(written_in))
    send_webhooks(database_url, "cdm-impression", records[10:22])
    body = copernica.render(LogFile("x", "cdm-impression", DAY, records), "json")
    path = write(tmp_path, "cdm-impression.2026-11-25.json", body)
    code, _, err = run(capsys, "import", str(path))
    assert code == 1
    line = one_line(err)
    assert f"offset {offset}, 12 of 12 matches" in line and f"COPERNICA_TIMEZONE={zone} " in line
    assert count(db, "SELECT count(*) FROM events") == 12
    code, out, err = run(capsys, "import", "--timezone", zone, str(path))
    assert code == 0, out + err
    assert count(db, "SELECT count(*) FROM events") == 60


@pytest.mark.usefixtures("cli_env")
def test_fewer_than_five_matches_is_stored_as_before(capsys, db, copernica, database_url, tmp_path) -> None:
    records = make_records("cdm-click", DAY, 50, zone=zoneinfo.ZoneInfo("UTC"))
    send_webhooks(database_url, "cdm-click", records[:4])
    path = write(tmp_path, "cdm-click.2026-11-25.csv", copernica.render(LogFile("x", "cdm-click", DAY, records), "csv"))
    code, out, err = run(capsys, "import", str(path))
    assert code == 0, out + err
    assert count(db, "SELECT count(*) FROM events") == 54  # no verdict: the four are keyed apart, as before


@pytest.mark.usefixtures("cli_env")
def test_the_right_zone_goes_on(capsys, db, copernica, database_url, tmp_path) -> None:
    records = make_records("cdm-click", DAY, 40)  # Amsterdam, as configured
    send_webhooks(database_url, "cdm-click", records[:25])
    path = write(tmp_path, "cdm-click.2026-11-25.xml", copernica.render(LogFile("x", "cdm-click", DAY, records), "xml"))
    code, out, err = run(capsys, "import", str(path))
    assert code == 0, out + err
    assert count(db, "SELECT count(*) FROM events") == 40


@pytest.mark.usefixtures("cli_env")
def test_bad_timezone_option_is_one_line_exit_2(capsys, tmp_path) -> None:
    path = write(tmp_path, "cdm-click.2026-11-25.json", b"[]")
    for argv in (
        ["import", "--timezone", "Mars/Olympus", str(path)],
        ["backfill", "--since", "2026-11-25", "--timezone", "nowhere"],
        ["reconcile", "--date", "2026-11-25", "--timezone", "UTC+1"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "--timezone" in one_line(err)


# --- the judgement itself -------------------------------------------------------------------------

AT = datetime(2026, 11, 25, 9, tzinfo=UTC)


def pairs(n: int, offset: int, start: int = 0) -> tuple[list[Sample], list[Sample]]:
    logs, hooks = [], []
    for i in range(start, start + n):
        at = AT + timedelta(seconds=7 * i)
        hooks.append(Sample("opened", f"m{i}", "192.0.2.1", at))
        logs.append(Sample("opened", f"m{i}", "192.0.2.1", at + timedelta(seconds=offset)))
    return logs, hooks


def test_judge_thresholds() -> None:
    logs, hooks = pairs(5, -3600)
    verdict = judge(logs, hooks, TZ)
    assert verdict.mismatch and verdict.offset == -3600 and verdict.zone == "UTC"
    assert not judge(logs[:4], hooks, TZ).mismatch  # fewer than 5 matches
    more_logs, more_hooks = pairs(2, 0, start=100)  # 18 of 20 = 90 %: still refused
    logs, hooks = pairs(18, -3600)
    assert judge(logs + more_logs, hooks + more_hooks, TZ).mismatch
    more_logs, more_hooks = pairs(3, 0, start=100)  # 18 of 21: below 90 %
    verdict = judge(logs + more_logs, hooks + more_hooks, TZ)
    assert not verdict.mismatch and (verdict.matches, verdict.agreeing) == (21, 18)
    logs, hooks = pairs(20, 0)
    assert judge(logs, hooks, TZ).offset == 0 and not judge(logs, hooks, TZ).mismatch


def test_judge_matching_rules() -> None:
    logs, hooks = pairs(10, -3600)
    other_ip = [Sample(h.event_type, h.message_id, "198.51.100.7", h.occurred_at) for h in hooks]
    assert judge(logs, other_ip, TZ).matches == 0
    no_ip = [Sample(h.event_type, h.message_id, None, h.occurred_at) for h in hooks]
    assert judge(logs, no_ip, TZ).mismatch  # ip compared only where both have one
    other_type = [Sample("clicked", h.message_id, h.ip, h.occurred_at) for h in hooks]
    assert judge(logs, other_type, TZ).matches == 0
    odd = [Sample(s.event_type, s.message_id, s.ip, s.occurred_at + timedelta(seconds=17)) for s in logs]
    verdict = judge(odd, hooks, TZ)
    assert verdict.matches == 10 and not verdict.mismatch  # no whole quarter hour apart
    # A second open of the same message at the right time makes the record an exact match.
    both = hooks + [Sample(s.event_type, s.message_id, s.ip, s.occurred_at) for s in logs]
    assert judge(logs, both, TZ).offset == 0


def test_zone_for() -> None:
    assert zone_for(timedelta(0), AT) == "UTC"
    assert zone_for(timedelta(hours=2), AT) == "Etc/GMT-2"
    assert zone_for(timedelta(hours=-5), AT) == "Etc/GMT+5"
    assert zone_for(timedelta(hours=5, minutes=30), AT) == "Asia/Kolkata"
    assert zone_for(timedelta(hours=5, minutes=45), AT) == "Asia/Kathmandu"
    assert zone_for(timedelta(hours=20), AT) is None


def test_sample_reads_only_the_first_thousand_event_records() -> None:
    records = make_records("cdm-click", DAY, 1500)
    fake = FakeCopernica()
    body = fake.render(LogFile("x", "cdm-click", DAY, records, malformed_after=3), "csv")
    samples, events = zonecheck.sample(io.BytesIO(body), "cdm-click", "csv", TZ)
    assert events == 1000 and len(samples) == 1000
    assert samples[-1].message_id == records[999]["id"]
