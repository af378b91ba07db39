"""`ingest reconcile --follow`: the scheduled reconcile against the fake Copernica API and a real
PostgreSQL: its rounds, the gauges it serves, a round with the API down, SIGTERM, bad input."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.cli import main
from ingest.processes import free_port, wait_for_port
from tests.commands import count, send_webhooks, set_api_env
from tests.fake_copernica import ZONE, FakeCopernica, make_records
from tests.ingest.cli.test_reconcile_mailings import STATS_42
from tests.workers.backfill.test_failed_calls import failed
from tests.workers.backfill.test_statistics import TZ, mailing_of, store_records
from workers.backfill import reconcile_metrics
from workers.backfill.runs import today_in
from workers.backfill.schedule import seconds_to_next
from workers.storage.mailing_counts import recent_mailings

MISSING = "copernica_ingest_reconcile_missing_events"
FAILED_CALLS = "copernica_ingest_copernica_failed_calls"
LAST_SUCCESS = "copernica_ingest_reconcile_last_success_timestamp_seconds"

# What the scenario below makes Copernica know beyond what is stored.
CLICKS_MISSING = 40  # yesterday's clicks the webhooks did not bring (the logfile has them)
FAILED = 7  # failed calls Copernica logged: 5 yesterday, 2 today
# Mailing 42 (three days ago, outside the logfile pass): the webhooks brought 6 of 10 deliveries
# and 1 of 4 opens, no click (2), no error (1): 4 + 3 + 2 + 1 events short of its statistics.
STATISTICS_MISSING = 10


@pytest.fixture(autouse=True)
def fresh_gauges() -> None:
    """The gauges are module state: every test starts from a process that has run no round."""
    reconcile_metrics.record_logfile_missing(0)
    reconcile_metrics.record_statistics_missing(0)
    reconcile_metrics.record_failed_calls(0)
    reconcile_metrics.LAST_SUCCESS.set(0)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, fake: FakeCopernica) -> dict[str, str]:
    return set_api_env(
        monkeypatch, tmp_path, fake, DATABASE_URL=database_url, COPERNICA_TIMEZONE=TZ, INGEST_RECONCILE_METRICS_PORT="0"
    )


def gauges() -> dict[str, float]:
    """The gauges as this process holds them."""
    value = reconcile_metrics.REGISTRY.get_sample_value
    return {
        "logfile": value(MISSING, {"source": "logfile"}),
        "statistics": value(MISSING, {"source": "statistics"}),
        "failed_calls": value(FAILED_CALLS),
        "last_success": value(LAST_SUCCESS),
    }


def scrape(port: int) -> dict[str, float]:
    """The gauges as a process serves them on `port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {
        (s.name, s.labels.get("source")): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    return {
        "logfile": samples[(MISSING, "logfile")],
        "statistics": samples[(MISSING, "statistics")],
        "failed_calls": samples[(FAILED_CALLS, None)],
        "last_success": samples[(LAST_SUCCESS, None)],
    }


def wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def at(day: date, hour: int, minute: int) -> int:
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZONE).timestamp())


def a_week_with_gaps(fake: FakeCopernica, database_url: str) -> date:
    """Yesterday: 80 clicks in the logfile, 40 of them brought by webhooks; 5 failed calls logged
    (today 2 more). Three days ago: mailing 42, partly brought by webhooks (with its id),
    Copernica's statistics counting all of it. Returns yesterday."""
    today = today_in(TZ)
    yesterday = today - timedelta(days=1)
    clicks = make_records("cdm-click", yesterday, 80, seed=7, start_hour=1)
    fake.add_file("cdm-click", yesterday, clicks)
    send_webhooks(database_url, "cdm-click", clicks[:40])
    calls = [failed(at(yesterday, 1, n), "503") for n in range(5)]
    fake.add_file("feedback-loop-errors", yesterday, calls)
    fake.add_file("feedback-loop-errors", today, [failed(at(today, 0, 0), "timeout"), failed(at(today, 0, 1), 504)])

    earlier = today - timedelta(days=3)
    records = mailing_of(42, 10, day=earlier)
    for log_type, items in records.items():
        fake.add_file(log_type, earlier, items)  # for --fix; the logfile pass reads only yesterday and today
    send_webhooks(database_url, "cdm-delivery", records["cdm-delivery"][:6], mailing="42")
    send_webhooks(database_url, "cdm-impression", records["cdm-impression"][:1], mailing="42")
    fake.add_statistics(42, STATS_42)
    return yesterday


def follow(*extra: str) -> int:
    return main(["reconcile", "--follow", "--interval", "0.2", *extra])


def round_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("reconcile round")]


# --- the rounds and their gauges ------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_two_rounds_set_the_gauges_to_what_each_found(caplog, db, database_url, fake) -> None:
    caplog.set_level(logging.INFO)
    a_week_with_gaps(fake, database_url)
    before = time.time()
    assert follow("--max-rounds", "2") == 0
    lines = round_lines(caplog)
    assert len(lines) == 2, lines
    # Round 1 stored the 40 clicks the webhooks missed; round 2 found the gap filled.
    assert f"{CLICKS_MISSING} event(s) missing from the logfiles (now stored), {FAILED} failed call(s)" in lines[0]
    assert f"1 mailing(s) compared: {STATISTICS_MISSING} event(s) missing from their statistics" in lines[0]
    assert "0 event(s) missing from the logfiles" in lines[1]
    assert count(db, "SELECT count(*) FROM events WHERE event_type = 'clicked'") == 80
    found = gauges()
    assert found["logfile"] == 0  # what the last round found
    assert found["statistics"] == STATISTICS_MISSING  # without --fix, nothing of mailing 42 is filled
    assert found["failed_calls"] == FAILED
    assert before <= found["last_success"] <= time.time()
    assert not fake.downloads("cdm-delivery"), "the days of the mailing are not read without --fix"
    stored = db.execute("SELECT mailing_id, missing, fixed FROM mailing_reconciliations ORDER BY id").fetchall()
    assert stored == [(42, True, False), (42, True, False)]  # each round's comparison, for the console


@pytest.mark.usefixtures("env")
def test_fix_fills_the_mailings_days_and_reports_what_is_left(caplog, db, database_url, fake) -> None:
    caplog.set_level(logging.INFO)
    a_week_with_gaps(fake, database_url)
    assert follow("--fix", "--max-rounds", "1") == 0
    assert gauges()["statistics"] == 0
    assert gauges()["logfile"] == CLICKS_MISSING
    assert count(db, "SELECT count(*) FROM events WHERE event_type = 'delivered'") == 10
    assert fake.downloads("cdm-delivery")
    stored = db.execute("SELECT mailing_id, missing, fixed FROM mailing_reconciliations ORDER BY id").fetchall()
    assert stored == [(42, True, False), (42, False, True)]  # before and after the fix


def test_recent_mailings_by_their_id_or_through_their_sent_event(database_url, db) -> None:
    now = datetime.now(UTC)
    today = today_in(TZ)
    old = today - timedelta(days=30)
    # Mailing 43 was sent 30 days ago (attempts carry its id); a click on it came in yesterday,
    # without the id. Mailing 44 has only old events. Mailing 45 has a recent delivery with its id.
    m43 = mailing_of(43, 3, day=old)
    store_records(database_url, "cdm-attempts", m43["cdm-attempts"])
    click = make_records("cdm-click", today - timedelta(days=1), 1, seed=43)
    click[0]["id"] = m43["cdm-attempts"][0]["id"]
    store_records(database_url, "cdm-click", click)
    store_records(database_url, "cdm-attempts", mailing_of(44, 3, day=old)["cdm-attempts"])
    send_webhooks(
        database_url, "cdm-delivery", mailing_of(45, 3, day=today - timedelta(days=2))["cdm-delivery"], mailing="45"
    )
    with psycopg.connect(database_url) as conn:
        assert recent_mailings(conn, now - timedelta(days=7)) == [43, 45]
        assert recent_mailings(conn, now - timedelta(days=60)) == [43, 44, 45]
    assert count(db, "SELECT count(*) FROM events WHERE mailing_id IS NULL AND event_type = 'clicked'") == 1


# --- a failing round ------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_a_round_with_the_api_down_keeps_the_gauges_and_the_next_goes_on(
    caplog, monkeypatch, database_url, fake
) -> None:
    caplog.set_level(logging.INFO)
    a_week_with_gaps(fake, database_url)
    assert follow("--max-rounds", "1") == 0
    first = gauges()
    assert first["last_success"] > 0 and first["logfile"] == CLICKS_MISSING

    # The API is down (nothing listens there): the round fails, one warning, nothing changes.
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("COPERNICA_API_URL", f"{dead}/v4")
    monkeypatch.setenv("COPERNICA_AUTH_URL", f"{dead}/authenticate")
    caplog.clear()
    assert follow("--max-rounds", "1") == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "workers.backfill.schedule"]
    assert len(warnings) == 1 and warnings[0].startswith("reconcile round 1 failed: "), warnings
    assert "the gauges keep their values" in warnings[0]
    assert gauges() == first

    # Back up, but its first listing still answers 503 through every retry: round 1 fails,
    # round 2 (0.2 s later) succeeds and sets the gauges again.
    monkeypatch.setenv("COPERNICA_API_URL", fake.api_url)
    monkeypatch.setenv("COPERNICA_AUTH_URL", fake.auth_url)
    fake.fail("/v4/logfiles", 503, 503, 503, 503)
    caplog.clear()
    assert follow("--max-rounds", "2") == 0
    lines = round_lines(caplog)
    assert lines[0].startswith("reconcile round 1 failed: ") and "still failing after 3 retries" in lines[0]
    assert lines[1].startswith("reconcile round 2 (") and len(lines) == 2
    after = gauges()
    assert after["last_success"] > first["last_success"]
    assert after["logfile"] == 0 and after["statistics"] == STATISTICS_MISSING and after["failed_calls"] == FAILED
    assert fake.token not in caplog.text and not any(jwt in caplog.text for jwt in fake.issued)


# --- a real process: its metrics port, SIGTERM --------------------------------------------------


def test_the_process_serves_its_gauges_and_stops_on_sigterm(env, database_url, fake, tmp_path) -> None:
    a_week_with_gaps(fake, database_url)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "reconcile", "--follow", "--interval", "3"],
        env={**os.environ, **env, "INGEST_RECONCILE_METRICS_PORT": str(port)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for_port(port, proc, timeout=30), "the metrics port did not open"
        wait_for(lambda: scrape(port)["last_success"] > 0)
        first = scrape(port)
        assert first["logfile"] == CLICKS_MISSING
        assert first["statistics"] == STATISTICS_MISSING
        assert first["failed_calls"] == FAILED
        assert abs(first["last_success"] - time.time()) < 30
        # The next round finds the clicks stored: the logfile gauge goes back to 0.
        wait_for(lambda: scrape(port)["last_success"] > first["last_success"], timeout=30)
        second = scrape(port)
        assert second["logfile"] == 0 and second["statistics"] == STATISTICS_MISSING
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - stopped < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 0, text
    assert "SIGTERM" in text and "Traceback" not in text and not out
    assert text.count("reconcile round ") >= 2 and "stopped after" in text
    assert fake.token not in text and not any(jwt in text for jwt in fake.issued)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--follow", "--interval", "abc"], "--interval 'abc' is not a number"),
        (["--follow", "--interval", "0"], "positive number of seconds"),
        (["--follow", "--interval", "-5"], "positive number of seconds"),
        (["--follow", "--interval", "nan"], "positive number of seconds"),
        (["--follow", "--interval", "inf"], "positive number of seconds"),
        (["--follow", "--days-back", "0"], "--days-back '0'"),
        (["--follow", "--days-back", "x"], "--days-back 'x'"),
        (["--follow", "--date", "2026-11-25"], "leave out --date"),
        (["--follow", "--mailing", "42"], "leave out --date/--mailing"),
        (["--follow", "--json"], "leave out --json"),
        (["--date", "2026-11-25", "--interval", "60"], "--interval goes with --follow"),
        (["--mailing", "42", "--days-back", "3"], "--days-back goes with --follow"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, fake, argv, says) -> None:
    code = main(["reconcile", *argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("ingest: ") and err.count("\n") == 1 and says in err, err
    assert not out and not fake.hits, "nothing is asked before the input is checked"


@pytest.mark.usefixtures("env")
def test_no_token_is_a_usage_error(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COPERNICA_ACCESS_TOKEN", "")
    code = main(["reconcile", "--follow", "--max-rounds", "1"])
    assert code == 2 and "COPERNICA_ACCESS_TOKEN is not set" in capsys.readouterr().err


def test_rounds_keep_a_fixed_cadence() -> None:
    assert seconds_to_next(100.0, 10.0, 103.0) == pytest.approx(7.0)  # a short round
    assert seconds_to_next(100.0, 10.0, 100.0) == pytest.approx(10.0)
    assert seconds_to_next(100.0, 10.0, 125.0) == pytest.approx(5.0)  # an overrun skips the missed ticks
