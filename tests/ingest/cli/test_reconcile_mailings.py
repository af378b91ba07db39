"""`ingest reconcile --mailing`: Copernica's per-mailing statistics against the stored events,
`--fix` from the logfiles, against the fake Copernica API and a real PostgreSQL."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson
import pytest

from tests.commands import count, send_webhooks, set_api_env
from tests.commands import run as run_ingest
from tests.fake_copernica import FakeCopernica
from tests.workers.backfill.test_statistics import TZ, mailing_of, store_records

DAY = date(2026, 11, 25)
# What Copernica counts for mailing_of(42, 10): 10 deliveries, 4 opens of 3 messages, 2 clicks of
# 2 messages, 1 error.
STATS_42 = {
    "destinations": 10,
    "deliveries": {"total": 10},
    "impressions": {"total": 4, "unique": 3},
    "clicks": {"total": 2, "unique": 2},
    "errors": {"total": 1, "unique": 1},
    "unsubscribes": {"total": 0, "unique": 0},
    "abuses": {"total": 0, "unique": 0},
    "retries": {"total": 0},
    "unknown": {"total": 0},
}

# The order the command prints and stores its measures in (written out: the tests check it).
MEASURE_ORDER = [
    "deliveries",
    "impressions",
    "unique_impressions",
    "clicks",
    "unique_clicks",
    "errors",
    "unsubscribes",
    "abuses",
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, fake: FakeCopernica) -> dict[str, str]:
    return set_api_env(monkeypatch, tmp_path, fake, DATABASE_URL=database_url, COPERNICA_TIMEZONE=TZ)


def run(capsys: pytest.CaptureFixture, fake: FakeCopernica, *argv: str) -> tuple[int, str, str]:
    """`ingest reconcile ARGV`; neither the access token nor a JWT is ever printed."""
    code, out, err = run_ingest(capsys, "reconcile", *argv)
    for secret in (fake.token, *fake.issued):
        assert secret not in out and secret not in err
    return code, out, err


def serve(fake: FakeCopernica, records: dict[str, list[dict]], day: date = DAY) -> None:
    for log_type, items in records.items():
        fake.add_file(log_type, day, items)


def by_mailing(out: str) -> dict[int, dict]:
    return {item["mailing"]: item for item in orjson.loads(out)}


@pytest.mark.usefixtures("env")
def test_a_mailing_stored_exactly_exits_0(capsys, database_url, fake) -> None:
    for log_type, records in mailing_of(42, 10).items():
        store_records(database_url, log_type, records)
    fake.add_statistics(42, STATS_42)
    code, out, err = run(capsys, fake, "--mailing", "42")
    assert code == 0, out + err
    assert "mailing 42: every count matches" in out
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert [c.strip() for c in rows["deliveries"].split("│")[3:7]] == ["10", "10", "0", "0"]
    assert not fake.downloads()


@pytest.mark.usefixtures("env")
def test_missing_webhooks_are_filled_by_fix_from_the_logfiles(capsys, db, database_url, fake) -> None:
    records = mailing_of(42, 10)
    serve(fake, records)
    send_webhooks(database_url, "cdm-delivery", records["cdm-delivery"][:6], mailing="42")
    send_webhooks(database_url, "cdm-impression", records["cdm-impression"][:1], mailing="42")
    fake.add_statistics(42, STATS_42)

    code, out, _ = run(capsys, fake, "--mailing", "42", "--json")
    assert code == 1
    before = by_mailing(out)[42]
    assert before["status"] == "missing" and "fix" not in before
    assert before["measures"]["deliveries"] == {"copernica": 10, "stored": 6, "missing": 4, "extra": 0}
    assert before["measures"]["unique_impressions"] == {"copernica": 3, "stored": 1, "missing": 2, "extra": 0}
    assert not fake.downloads() and count(db, "SELECT count(*) FROM events") == 7
    code, out, _ = run(capsys, fake, "--mailing", "42")
    assert code == 1 and "mailing 42: fewer stored than Copernica counts (deliveries -4, impressions -3," in out

    code, out, err = run(capsys, fake, "--mailing", "42", "--fix")
    assert code == 1, out + err  # things had been missing: reported like `reconcile --date`
    assert "backfilled the logfiles of 2026-11-25..2026-11-25: 10 event(s) added" in out
    assert "every count matches" in out
    assert {h.path.split("/")[3] for h in fake.downloads()} >= {"cdm-delivery.2026-11-25.log"}
    assert count(db, "SELECT count(*) FROM events WHERE event_type = 'delivered'") == 10
    assert count(db, "SELECT count(*) FROM events WHERE event_type = 'sent'") == 10

    code, out, _ = run(capsys, fake, "--mailing", "42", "--fix", "--json")
    assert code == 0
    again = by_mailing(out)[42]
    assert again["status"] == "ok" and again["fix"]["days"] == [] and again["fix"]["added"] == 0


def stored_checks(db) -> list[tuple]:
    """The stored reconcile results, oldest first: (mailing, source, since, missing, fixed, measures by name)."""
    rows = db.execute(
        "SELECT mailing_id, source, since, missing, fixed, measures FROM mailing_reconciliations ORDER BY id"
    ).fetchall()
    return [(*row[:5], {m.pop("name"): m for m in row[5]}) for row in rows]


@pytest.mark.usefixtures("env")
def test_each_comparison_is_stored_the_one_after_fix_too(capsys, db, database_url, fake) -> None:
    records = mailing_of(42, 10)
    serve(fake, records)
    send_webhooks(database_url, "cdm-delivery", records["cdm-delivery"][:6], mailing="42")
    fake.add_statistics(42, STATS_42)
    fake.add_statistics(43, {"deliveries": {"total": 0}}, publisher=True)

    code, _, _ = run(capsys, fake, "--mailing", "42", "--mailing", "999", "--mailing", "43", "--since", "2026-11-01")
    assert code == 1
    checks = stored_checks(db)
    assert [c[:5] for c in checks] == [
        (42, "ms", DAY.replace(day=1), True, False),
        (43, "publisher", DAY.replace(day=1), False, False),
    ]
    assert checks[0][5]["deliveries"] == {"copernica": 10, "stored": 6, "missing": 4, "extra": 0}
    assert checks[0][5]["unique_impressions"] == {"copernica": 3, "stored": 0, "missing": 3, "extra": 0}
    assert checks[1][5]["impressions"] == {"copernica": None, "stored": 0, "missing": 0, "extra": 0}
    assert list(checks[0][5]) == MEASURE_ORDER

    db.execute("DELETE FROM mailing_reconciliations")
    code, _, _ = run(capsys, fake, "--mailing", "42", "--fix")
    assert code == 1  # things had been missing
    before, after = stored_checks(db)
    assert before[:5] == (42, "ms", None, True, False) and before[5]["deliveries"]["stored"] == 6
    assert after[:5] == (42, "ms", None, False, True)
    assert after[5]["deliveries"] == {"copernica": 10, "stored": 10, "missing": 0, "extra": 0}

    db.execute("DELETE FROM mailing_reconciliations")
    fake.fail("/statistics", 503, 503, 503, 503)
    code, _, _ = run(capsys, fake, "--mailing", "42")
    assert code == 1 and stored_checks(db) == []  # no statistics, nothing to store


@pytest.mark.usefixtures("env")
def test_counts_above_copernicas_are_reported_and_left_alone(capsys, db, database_url, fake) -> None:
    for log_type, records in mailing_of(42, 10).items():
        store_records(database_url, log_type, records)
    fake.add_statistics(42, STATS_42 | {"deliveries": {"total": 8}, "clicks": {"total": 1, "unique": 1}})
    events = count(db, "SELECT count(*) FROM events")
    code, out, _ = run(capsys, fake, "--mailing", "42", "--fix", "--json")
    assert code == 0
    item = by_mailing(out)[42]
    assert item["status"] == "extra"
    assert item["measures"]["deliveries"] == {"copernica": 8, "stored": 10, "missing": 0, "extra": 2, "added": 0}
    assert item["measures"]["unique_clicks"]["extra"] == 1
    assert item["fix"] == {"days": [], "added": 0, "failed_files": [], "note": None}
    assert not fake.downloads() and count(db, "SELECT count(*) FROM events") == events
    code, out, _ = run(capsys, fake, "--mailing", "42")
    assert code == 0 and "more stored than Copernica counts (deliveries +2, clicks +1, unique_clicks +1)" in out


@pytest.mark.usefixtures("env")
def test_unknown_mailing_among_known_ones(capsys, database_url, fake) -> None:
    for log_type, records in mailing_of(42, 10).items():
        store_records(database_url, log_type, records)
    fake.add_statistics(42, STATS_42)
    fake.add_statistics(43, {"deliveries": {"total": 0}}, publisher=True)
    code, out, _ = run(capsys, fake, "--mailing", "999", "--mailing", "42", "--mailing", "43", "--json")
    assert code == 1
    found = by_mailing(out)
    assert list(found) == [999, 42, 43]
    assert found[999]["status"] == "unknown" and found[999]["measures"] == {} and "404" in found[999]["error"]
    assert found[42]["status"] == "ok" and found[42]["source"] == "ms"
    assert found[43]["status"] == "ok" and found[43]["source"] == "publisher"
    code, out, _ = run(capsys, fake, "--mailing", "999", "--mailing", "42")
    assert code == 1 and "mailing 999: unknown to Copernica" in out and "mailing 42: every count" in out


@pytest.mark.usefixtures("env")
def test_429_is_retried_and_an_api_that_stays_down_is_reported(capsys, caplog, db, database_url, fake) -> None:
    records = mailing_of(42, 10)
    serve(fake, records)
    for log_type, items in records.items():
        store_records(database_url, log_type, items)
    fake.add_statistics(42, STATS_42)
    fake.fail("/statistics", (429, 0), (429, 0))
    code, _, _ = run(capsys, fake, "--mailing", "42")
    assert code == 0 and "HTTP 429; retry 2/3" in caplog.text
    assert len(fake.statistics_hits()) == 3

    db.execute("DELETE FROM events WHERE event_type = 'delivered'")
    fake.fail("/statistics", 503, 503, 503, 503)
    code, out, _ = run(capsys, fake, "--mailing", "42", "--fix", "--json")
    assert code == 1
    item = by_mailing(out)[42]
    assert item["status"] == "failed" and "still failing after 3 retries" in item["error"]
    assert not fake.downloads() and count(db, "SELECT count(*) FROM events WHERE event_type = 'delivered'") == 0
    assert count(db, "SELECT count(*) FROM backfill_files") == 0
    assert fake.token not in caplog.text and not any(jwt in caplog.text for jwt in fake.issued)


@pytest.mark.usefixtures("env")
def test_json_shape(capsys, database_url, fake) -> None:
    records = mailing_of(42, 10)
    store_records(database_url, "cdm-attempts", records["cdm-attempts"])
    fake.add_statistics(42, STATS_42)
    code, out, _ = run(capsys, fake, "--mailing", "42", "--json")
    assert code == 1
    [item] = orjson.loads(out)
    assert set(item) == {"mailing", "source", "status", "error", "since", "destinations", "measures"}
    assert list(item["measures"]) == MEASURE_ORDER
    assert all(set(m) == {"copernica", "stored", "missing", "extra"} for m in item["measures"].values())
    assert item["measures"]["errors"] == {"copernica": 1, "stored": 0, "missing": 1, "extra": 0}
    assert (item["destinations"], item["since"], item["error"]) == (10, None, None)


@pytest.mark.usefixtures("env")
def test_since_limits_both_sides(capsys, database_url, fake) -> None:
    for log_type, records in mailing_of(42, 10).items():
        store_records(database_url, log_type, records)
    fake.add_statistics(42, {"deliveries": {"total": 0}, "impressions": {"total": 0, "unique": 0}})
    code, out, _ = run(capsys, fake, "--mailing", "42", "--since", "2026-11-26", "--json")
    assert code == 0
    item = by_mailing(out)[42]
    assert item["since"] == "2026-11-26" and item["measures"]["deliveries"]["stored"] == 0
    assert item["measures"]["clicks"]["copernica"] is None
    assert fake.statistics_hits()[0].query == {"begintime": "2026-11-26 00:00:00"}


@pytest.mark.usefixtures("env")
def test_fix_with_nothing_stored_does_not_guess_the_days(capsys, fake) -> None:
    fake.add_statistics(42, STATS_42)
    code, out, _ = run(capsys, fake, "--mailing", "42", "--fix", "--json")
    assert code == 1
    item = by_mailing(out)[42]
    assert item["fix"]["days"] == [] and "days its events fall on are unknown" in item["fix"]["note"]
    assert not fake.downloads() and not [h for h in fake.hits if h.path == "/v4/logfiles"]


@pytest.mark.usefixtures("env")
def test_fix_with_nothing_stored_and_since_backfills_from_since(capsys, db, fake) -> None:
    records = mailing_of(42, 10)
    serve(fake, records)
    fake.add_statistics(42, STATS_42)
    code, out, _ = run(capsys, fake, "--mailing", "42", "--fix", "--since", DAY.isoformat(), "--json")
    assert code == 1
    item = by_mailing(out)[42]
    assert item["fix"]["days"][0] == DAY.isoformat() and item["status"] == "ok"
    assert item["measures"]["deliveries"]["added"] == 10
    assert count(db, "SELECT count(*) FROM events") == sum(len(r) for r in records.values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mailing", "abc"], "is not a mailing id"),
        (["--mailing", "0"], "is not a mailing id"),
        (["--mailing", "-3"], "is not a mailing id"),
        (["--mailing", "42", "--mailing", "4.2"], "is not a mailing id"),
        (["--mailing", "99999999999999999999"], "is not a mailing id"),
        (["--mailing", "42", "--date", "2026-11-25"], "two modes"),
        ([], "give --date"),
        (["--date", "2026-11-25", "--fix"], "go with --mailing"),
        (["--since", "2026-11-25"], "go with --mailing"),
        (["--mailing", "42", "--since", "yesterday"], "not a date"),
        (["--mailing", "42", "--types", "cdm-nope"], "unknown log type"),
    ],
)
@pytest.mark.usefixtures("env")
def test_bad_input_is_one_line_exit_2_before_any_call(capsys, fake, argv, message) -> None:
    code, _, err = run(capsys, fake, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith("ingest: ") and "Traceback" not in err
    assert not fake.hits
