"""Backfill, import, reconcile and --follow against the fake Copernica API and a real PostgreSQL."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import orjson
import pytest

from tests.commands import count, run, send_webhooks, set_api_env
from tests.fake_copernica import FakeCopernica, LogFile, make_records
from workers.backfill.api import CopernicaClient, RetryPolicy
from workers.backfill.files import BackfillError, Run, check_types, default_types
from workers.backfill.imports import import_files, plan_import, sniff_format
from workers.backfill.runs import follow, today_in
from workers.storage import store


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, fake: FakeCopernica) -> dict[str, str]:
    """The environment of an `ingest` run against the fake API (in-process or a subprocess)."""
    return set_api_env(monkeypatch, tmp_path, fake, DATABASE_URL=database_url)


TZ = "Europe/Amsterdam"
DAY = date(2026, 11, 25)
NEXT = date(2026, 11, 26)


def write(tmp_path: Path, name: str, body: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    return path


# --- import -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_import_json_csv_xml_gz_store_each_event_once(capsys, db, fake, tmp_path) -> None:
    log = LogFile("cdm-click.2026-11-25.log", "cdm-click", DAY, make_records("cdm-click", DAY, 120))
    json_body, xml_body, csv_body = fake.render(log, "json"), fake.render(log, "xml"), fake.render(log, "csv")
    fake.csv_header = False
    bare_csv = fake.render(log, "csv")
    files = [
        write(tmp_path, "cdm-click.2026-11-25.json", json_body),
        write(tmp_path, "cdm-click.2026-11-25.log.csv", csv_body),
        write(tmp_path, "cdm-click.2026-11-25.log", bare_csv),  # no header, format sniffed
        write(tmp_path, "clicks-by-hand.xml", xml_body),  # type given with --type
        write(tmp_path, "cdm-click.2026-11-25.log.json.gz", json_body),
    ]
    code, out, err = run(capsys, "import", *map(str, files[:3]), str(files[4]))
    assert code == 0, err
    code2, _, err2 = run(capsys, "import", "--type", "cdm-click", str(files[3]))
    assert code2 == 0, err2
    assert count(db, "SELECT count(*) FROM events") == 120
    assert count(db, "SELECT count(*) FROM events WHERE source = 'logfile' AND event_type = 'clicked'") == 120
    rows = db.execute(
        "SELECT name, format, records, stored, duplicates, rejected, completed_at IS NOT NULL"
        " FROM backfill_files WHERE origin = 'import' ORDER BY id"
    ).fetchall()
    assert [(Path(r[0]).name, r[1]) for r in rows] == [
        ("cdm-click.2026-11-25.json", "json"),
        ("cdm-click.2026-11-25.log.csv", "csv"),
        ("cdm-click.2026-11-25.log", "csv"),
        ("cdm-click.2026-11-25.log.json.gz", "json"),
        ("clicks-by-hand.xml", "xml"),
    ]
    assert rows[0][2:] == (120, 120, 0, 0, True)
    assert all(r[2:] == (120, 0, 120, 0, True) for r in rows[1:])
    assert "total" in out and "120" in out


@pytest.mark.usefixtures("env")
def test_import_keeps_bad_records_with_file_and_line_and_does_not_double_them(capsys, db, fake, tmp_path):
    records = make_records("cdm-impression", DAY, 40)
    bad = LogFile("x", "cdm-impression", DAY, records, malformed_after=10)
    path = write(tmp_path, "cdm-impression.2026-11-25.csv", fake.render(bad, "csv"))
    cut = LogFile("x", "cdm-impression", DAY, records)
    body = fake.render(cut, "json")
    truncated = write(tmp_path, "cdm-impression.2026-11-25.json", body[: len(body) * 3 // 4])
    for _ in range(2):  # a second import stores nothing new, and no second copy of the rejects
        code, out, _ = run(capsys, "import", str(path), str(truncated))
        assert code == 0
        assert "could not be read" in out
    assert count(db, "SELECT count(*) FROM events") == 40
    rejects = db.execute(
        "SELECT target, source, content_type, reason, body FROM rejected_events ORDER BY target"
    ).fetchall()
    assert len(rejects) == 2
    csv_reject = next(r for r in rejects if r[0].startswith("cdm-impression.2026-11-25.csv:"))
    assert csv_reject[0] == "cdm-impression.2026-11-25.csv:12"  # header is line 1, 10 good rows, then the bad one
    assert csv_reject[1:3] == ("logfile", "text/csv") and bytes(csv_reject[4]) == b"broken,row\n"
    json_reject = next(r for r in rejects if r[0].startswith("cdm-impression.2026-11-25.json:"))
    assert "JSON" in json_reject[3]
    assert count(db, "SELECT sum(rejected) FROM backfill_files") == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "/no/such/cdm-click.2026-11-25.log"], "no such file"),
        (["import", "--type", "cdm-nope", "FILE"], "unknown log type"),
        (["import", "--type", "feedback-loop-errors", "FILE"], "holds no events"),
        (["import", "UNTYPED"], "cannot tell the log type"),
        (["import", "--format", "yaml", "FILE"], "--format"),
        (["backfill", "--since", "2026-02-30"], "not a valid date"),
        (["backfill", "--since", "yesterday"], "not a date"),
        (["backfill", "--since", "2026-11-26", "--until", "2026-11-25"], "is after"),
        (["backfill", "--since", "2026-11-25", "--types", "cdm-click,cdm-clicks"], "unknown log type"),
        (["backfill"], "--since"),
        (["backfill", "--follow", "--since", "2026-11-25"], "leave out"),
        (["reconcile", "--date", "20261125"], "not a date"),
    ],
)
@pytest.mark.usefixtures("env")
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message) -> None:
    (tmp_path / "cdm-click.2026-11-25.log").write_text("")
    (tmp_path / "untyped.csv").write_text("")
    argv = [
        a.replace("FILE", str(tmp_path / "cdm-click.2026-11-25.log")).replace("UNTYPED", str(tmp_path / "untyped.csv"))
        for a in argv
    ]
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.usefixtures("env")
def test_missing_token_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("COPERNICA_ACCESS_TOKEN")
    code, _, err = run(capsys, "backfill", "--since", "2026-11-25")
    assert code == 2 and err.count("\n") == 1 and "COPERNICA_ACCESS_TOKEN is not set" in err


def test_helpers() -> None:
    assert default_types()[:8] == [
        "cdm-attempts",
        "cdm-delivery",
        "cdm-impression",
        "cdm-click",
        "cdm-error",
        "cdm-retry",
        "cdm-unsubscribe",
        "cdm-abuse",
    ]
    assert {"pom-attempts", "pom-deliveries", "pom-clicks", "pom-clicks-old", "pom-abuses"} <= set(default_types())
    assert "feedback-loop-errors" not in default_types()
    assert check_types(["CDM-Click", " cdm-click", "cdm-error"]) == ["cdm-click", "cdm-error"]
    with pytest.raises(BackfillError):
        check_types([""])


def test_sniff_format(tmp_path) -> None:
    for name, body, expected in [
        ("a.log", b"\n [{}]", "json"),
        ("b.log", b"<records/>", "xml"),
        ("c.log", b"id,time\n", "csv"),
        ("d.log.gz", b"<records/>", "xml"),
        ("e.JSON", b"id,time", "json"),
        ("f.csv.gz", b"[]", "csv"),
    ]:
        assert sniff_format(write(tmp_path, name, body)) == expected, name
    planned = plan_import([str(write(tmp_path, "cdm-retry.2026-11-25.log.gz", b"[]"))], None, None)
    assert planned[0][1].log_type == "cdm-retry" and planned[0][1].log_date == DAY


# --- backfill through the REST API ----------------------------------------------------------------


def add_days(fake: FakeCopernica, types: dict[str, int]) -> int:
    total = 0
    for seed, day in enumerate((DAY, NEXT)):
        for log_type, n in types.items():
            fake.add_file(log_type, day, make_records(log_type, day, n, seed=seed))
            total += n
    return total


@pytest.mark.parametrize("fmt", ["json", "csv", "xml"])
@pytest.mark.usefixtures("env")
def test_backfill_survives_scripted_failures_and_resumes(capsys, db, fake, fmt, caplog) -> None:
    total = add_days(fake, {"cdm-click": 150, "cdm-impression": 90, "cdm-delivery": 60})
    fake.fail("cdm-click.2026-11-25", 503, 503)  # 503 twice then OK
    fake.fail("cdm-impression.2026-11-26", "drop")  # connection dropped mid-file
    fake.fail("/v4/logfiles", 502)
    fake.fail("cdm-delivery.2026-11-26", 401)  # the JWT expired midway: renewed once, then fine
    code, out, err = run(
        capsys,
        "backfill",
        "--since",
        "2026-11-25",
        "--until",
        "2026-11-26",
        "--types",
        "cdm-click,cdm-impression,cdm-delivery",
        "--format",
        fmt,
        "--batch-size",
        "64",
    )
    assert code == 0, out + err
    assert count(db, "SELECT count(*) FROM events") == total
    assert count(db, "SELECT count(DISTINCT (message_id, event_type)) FROM events") == total
    rows = db.execute(
        "SELECT name, records, stored, duplicates, completed_at IS NOT NULL, format FROM backfill_files ORDER BY name"
    ).fetchall()
    assert len(rows) == 6 and all(r[4] and r[5] == fmt and r[1] == r[2] for r in rows)
    assert "request(s) retried" in out
    assert len([h for h in fake.hits if h.path == "/authenticate"]) == 2
    downloads = len(fake.downloads())
    # A rerun skips every completed file.
    code, out, _ = run(
        capsys,
        "backfill",
        "--since",
        "2026-11-25",
        "--until",
        "2026-11-26",
        "--types",
        "cdm-click,cdm-impression,cdm-delivery",
        "--format",
        fmt,
    )
    assert code == 0 and "6 file(s) already complete, skipped" in out
    assert len(fake.downloads()) == downloads
    for secret in [fake.token, *fake.issued]:
        assert secret not in out + err + caplog.text


@pytest.mark.usefixtures("env")
def test_file_failing_past_the_retry_limit_fails_alone(capsys, db, fake, caplog) -> None:
    total = add_days(fake, {"cdm-click": 50, "cdm-error": 20})
    fake.fail("cdm-error.2026-11-25", 503, 503, 503, 503)  # COPERNICA_RETRIES=3: 4 tries, all 503
    fake.fail("cdm-click.2026-11-26", (429, 1))  # honoured; then fine
    argv = ["backfill", "--since", "2026-11-25", "--until", "2026-11-26", "--types", "cdm-click,cdm-error"]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert "failed cdm-error.2026-11-25.log: GET /logfile/cdm-error.2026-11-25.log/json: HTTP 503" in out
    assert count(db, "SELECT count(*) FROM events") == total - 20
    row = db.execute(
        "SELECT completed_at, last_error FROM backfill_files WHERE name = 'cdm-error.2026-11-25.log'"
    ).fetchone()
    assert row[0] is None and "HTTP 503" in row[1]
    code, out, err2 = run(capsys, *argv)  # the API recovered
    assert code == 0, out
    assert "3 file(s) already complete" in out
    assert count(db, "SELECT count(*) FROM events") == total
    for secret in [fake.token, *fake.issued]:
        assert secret not in out + err + err2 + caplog.text


@pytest.mark.usefixtures("env")
def test_todays_file_is_stored_but_not_marked_complete(capsys, db, fake) -> None:
    today = today_in(TZ)
    fake.add_file("cdm-click", today, make_records("cdm-click", today, 5, start_hour=0))
    code, out, _ = run(capsys, "backfill", "--since", today.isoformat(), "--types", "cdm-click")
    assert code == 0 and "partial" in out
    assert count(db, "SELECT count(*) FROM backfill_files WHERE completed_at IS NULL") == 1
    code, out, _ = run(capsys, "backfill", "--since", today.isoformat(), "--types", "cdm-click")
    assert code == 0 and len(fake.downloads()) == 2  # read again: it may have grown
    assert count(db, "SELECT count(*) FROM events") == 5


@pytest.mark.usefixtures("env")
def test_refused_token_stops_the_run_with_one_line(capsys, monkeypatch, fake) -> None:
    monkeypatch.setenv("COPERNICA_ACCESS_TOKEN", "not-" + fake.token)
    fake.add_file("cdm-click", DAY, make_records("cdm-click", DAY, 5))
    code, out, err = run(capsys, "backfill", "--since", "2026-11-25", "--until", "2026-11-25")
    assert code == 1 and err.count("\n") == 1 and "refused" in err
    assert fake.token not in out + err


# --- webhooks + logfiles: one row per event; reconcile ------------------------------------------------


@pytest.mark.usefixtures("env")
def test_webhooks_then_backfill_then_reconcile(capsys, db, fake, database_url) -> None:
    clicks = make_records("cdm-click", DAY, 200)
    opens = make_records("cdm-impression", DAY, 100)
    fake.add_file("cdm-click", DAY, clicks, malformed_after=50)
    fake.add_file("cdm-impression", DAY, opens)
    send_webhooks(database_url, "cdm-click", clicks[:120])  # the receiver saw part of the day
    send_webhooks(database_url, "cdm-impression", opens[30:70])
    code, out, err = run(
        capsys,
        "backfill",
        "--since",
        "2026-11-25",
        "--until",
        "2026-11-25",
        "--types",
        "cdm-click,cdm-impression",
        "--batch-size",
        "33",
    )
    assert code == 0, out + err
    assert count(db, "SELECT count(*) FROM events") == 300
    assert count(db, "SELECT count(*) FROM (SELECT message_id FROM events GROUP BY 1 HAVING count(*) > 1) d") == 0
    assert count(db, "SELECT count(*) FROM events WHERE source = 'webhook'") == 160
    assert count(db, "SELECT count(*) FROM events WHERE source = 'logfile'") == 140
    assert count(db, "SELECT count(*) FROM rejected_events WHERE source = 'logfile'") == 1

    code, out, _ = run(capsys, "reconcile", "--date", "2026-11-25", "--types", "cdm-click,cdm-impression", "--json")
    report = orjson.loads(out)
    assert code == 0 and report["missing"] == 0
    by_type = {t["type"]: t for t in report["types"]}
    assert by_type["cdm-click"] == {
        "type": "cdm-click",
        "files": 1,
        "in_logfiles": 200,
        "already_stored": 200,
        "added": 0,
        "rejected": 1,
        "failed_files": 0,
    }
    assert (by_type["cdm-impression"]["in_logfiles"], by_type["cdm-impression"]["added"]) == (100, 0)
    assert count(db, "SELECT count(*) FROM rejected_events") == 1  # reading it again keeps one copy


@pytest.mark.usefixtures("env")
def test_reconcile_finds_and_adds_what_webhooks_missed(capsys, db, fake, database_url) -> None:
    clicks = make_records("cdm-click", NEXT, 80)
    errors = make_records("cdm-error", NEXT, 12)
    fake.add_file("cdm-click", NEXT, clicks)
    fake.add_file("cdm-error", NEXT, errors)
    send_webhooks(database_url, "cdm-click", clicks[::2])
    argv = ["reconcile", "--date", NEXT.isoformat(), "--types", "cdm-click,cdm-error,cdm-abuse"]
    code, out, _ = run(capsys, *argv)
    assert code == 1
    lines = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.splitlines()
        if line.startswith("│ cdm-")
    }
    assert lines["cdm-click"] == ["1", "80", "40", "40", "0", "0"]
    assert lines["cdm-error"] == ["1", "12", "0", "12", "0", "0"]
    assert lines["cdm-abuse"] == ["0", "0", "0", "0", "0", "0"]
    assert "52 event(s) had been missing" in out
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "nothing was missing" in out
    assert count(db, "SELECT count(*) FROM events") == 92


# --- --follow -------------------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_follow_polls_todays_files_from_the_last_seen_time(database_url, db, fake) -> None:
    today = today_in(TZ)
    records = make_records("cdm-click", today, 60, start_hour=0)
    fake.add_file("cdm-click", today, records[:40])
    client = CopernicaClient(fake.token, fake.api_url, fake.auth_url, policy=RetryPolicy(base_delay=0.01))
    stop = threading.Event()
    result = {}
    with store.connect(database_url) as conn:
        run = Run(conn, TZ, stop=stop, client=client, fmt="json")
        thread = threading.Thread(
            target=lambda: result.setdefault("summary", follow(run, ["cdm-click", "cdm-impression"], interval=0.1))
        )
        thread.start()
        try:
            wait_for(lambda: count(db, "SELECT count(*) FROM events") == 40)
            fake.files[f"cdm-click.{today}.log"].records.extend(records[40:])  # the file grows
            wait_for(lambda: count(db, "SELECT count(*) FROM events") == 60)
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    froms = [int(h.query["from"]) for h in fake.downloads()]
    assert froms[0] == 0 and froms[-1] >= records[39]["_unix"] - 120  # later polls ask only for the tail
    cursor = count(db, "SELECT follow_cursor FROM backfill_files")
    assert cursor == records[-1]["_unix"]
    summary = result["summary"]
    assert summary.stopped and summary.total("stored") == 60


def subprocess_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**os.environ, **env, **extra}


def test_follow_stops_cleanly_on_sigterm(env, db, fake, tmp_path) -> None:
    today = today_in(TZ)
    fake.add_file("cdm-impression", today, make_records("cdm-impression", today, 30, start_hour=0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "backfill", "--follow", "--interval", "0.2", "--types", "cdm-impression"],
        env=subprocess_env(env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: count(db, "SELECT count(*) FROM events") == 30)
        wait_for(lambda: len(fake.downloads()) >= 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"SIGTERM" in err and b"Traceback" not in err
    assert b"backfill --follow" in out


# --- SIGKILL midway, then resume --------------------------------------------------------------------


def test_sigkill_midway_then_rerun_completes_without_duplicates(env, db, fake, tmp_path) -> None:
    types = ["cdm-click", "cdm-impression", "cdm-delivery", "cdm-error"]
    for seed, log_type in enumerate(types):
        fake.add_file(log_type, DAY, make_records(log_type, DAY, 2500, seed=seed), malformed_after=2000)
    fake.chunk_delay = 0.01  # a slow server: downloads take a while
    argv = [
        sys.executable,
        "-m",
        "ingest",
        "backfill",
        "--since",
        "2026-11-25",
        "--until",
        "2026-11-25",
        "--types",
        ",".join(types),
        "--batch-size",
        "20",
    ]
    proc = subprocess.Popen(
        argv, env=subprocess_env(env), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Kill it while a file is half stored, after at least one file completed.
        wait_for(
            lambda: (
                count(db, "SELECT count(*) FROM backfill_files WHERE completed_at IS NOT NULL") >= 1
                and count(db, "SELECT count(*) FROM backfill_files WHERE completed_at IS NULL AND records > 0") == 1
            ),
            timeout=40,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    completed_before = {r[0] for r in db.execute("SELECT name FROM backfill_files WHERE completed_at IS NOT NULL")}
    stored_before = count(db, "SELECT count(*) FROM events")
    assert 0 < stored_before < 10000
    fake.chunk_delay = 0
    rerun = subprocess.run(
        argv, env=subprocess_env(env, INGEST_LOG_LEVEL="DEBUG"), cwd=tmp_path, capture_output=True, timeout=60
    )
    out, err = rerun.stdout.decode(), rerun.stderr.decode()
    assert rerun.returncode == 0, err
    assert count(db, "SELECT count(*) FROM events") == 10000
    assert count(db, "SELECT count(*) FROM rejected_events") == 4  # one malformed record per file, once
    assert count(db, "SELECT count(*) FROM backfill_files WHERE completed_at IS NULL") == 0
    for name in completed_before:
        assert len(fake.downloads(name)) == 1  # not downloaded again
    assert f"{len(completed_before)} file(s) already complete" in out
    for secret in [fake.token, *fake.issued]:
        assert secret not in out + err


def test_import_memory_does_not_grow_with_the_file(database_url, fake, tmp_path) -> None:
    """Peak Python memory while importing depends on the batch size, not the file size."""
    import tracemalloc

    peaks = []
    for n in (3000, 12000):
        log = LogFile("x", "cdm-click", DAY, make_records("cdm-click", DAY, n, seed=n))
        path = write(tmp_path, f"cdm-click.2026-11-25.{n}.json", fake.render(log, "json"))
        del log
        planned = plan_import([str(path)], None, None)
        with store.connect(database_url) as conn:
            tracemalloc.start()
            try:
                summary = import_files(Run(conn, TZ, batch_size=200), planned)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        assert summary.total("stored") == n
    assert peaks[1] < peaks[0] * 1.5 + 1_000_000, peaks


def test_ctrl_c_stops_after_the_current_batch_and_a_rerun_finishes(env, db, fake, tmp_path) -> None:
    for seed, log_type in enumerate(["cdm-click", "cdm-impression", "cdm-delivery"]):
        fake.add_file(log_type, DAY, make_records(log_type, DAY, 1500, seed=seed))
    fake.chunk_delay = 0.02
    argv = [
        sys.executable,
        "-m",
        "ingest",
        "backfill",
        "--since",
        "2026-11-25",
        "--until",
        "2026-11-25",
        "--types",
        "cdm-click,cdm-impression,cdm-delivery",
        "--batch-size",
        "50",
    ]
    proc = subprocess.Popen(argv, env=subprocess_env(env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: count(db, "SELECT count(*) FROM backfill_files WHERE completed_at IS NOT NULL") >= 1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in out and b"Traceback" not in err
    assert count(db, "SELECT count(*) FROM backfill_files WHERE last_error = 'interrupted'") == 1
    fake.chunk_delay = 0
    rerun = subprocess.run(argv, env=subprocess_env(env), cwd=tmp_path, capture_output=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert count(db, "SELECT count(*) FROM events") == 4500


# --- default types; ?from= --------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_without_types_every_event_log_the_day_lists_is_taken(capsys, db, fake) -> None:
    fake.add_file("cdm-click", DAY, make_records("cdm-click", DAY, 20))
    fake.add_file("pom-clicks", DAY, make_records("pom-clicks", DAY, 15))
    fake.add_file("pom-deliveries", DAY, make_records("pom-deliveries", DAY, 10))
    fake.add_file("pom-delivery", NEXT, make_records("pom-delivery", NEXT, 7))  # the other name of the same log
    fake.add_file("feedback-loop-errors", DAY, [])  # no events: not read
    fake.add_file("cdm-newthing", DAY, [])  # a log this version does not know: not read
    code, out, err = run(capsys, "backfill", "--since", "2026-11-25", "--until", "2026-11-26")
    assert code == 0, out + err
    stored = dict(db.execute("SELECT copernica_type, count(*) FROM events GROUP BY 1").fetchall())
    assert stored == {"cdm-click": 20, "pom-clicks": 15, "pom-deliveries": 10, "pom-delivery": 7}
    assert sorted(h.path.split("/")[3] for h in fake.downloads()) == [
        "cdm-click.2026-11-25.log",
        "pom-clicks.2026-11-25.log",
        "pom-deliveries.2026-11-25.log",
        "pom-delivery.2026-11-26.log",
    ]
    listings = [h.query for h in fake.hits if h.path == "/v4/logfiles"]
    assert listings == [{"date": "2026-11-25"}, {"date": "2026-11-26"}]  # one listing per day
    code, _, err = run(
        capsys, "backfill", "--since", "2026-11-26", "--until", "2026-11-26", "--types", "pom-delivery,pom-deliveries"
    )
    assert code == 0, err


@pytest.mark.parametrize("fmt", ["json", "xml", "csv"])
def test_follow_asks_from_only_for_json_and_xml_and_stores_only_the_tail(
    database_url, db, fake, fmt, monkeypatch
) -> None:
    from workers.backfill import zonecheck

    checks = []
    real_check = zonecheck.check
    monkeypatch.setattr(zonecheck, "check", lambda *a: checks.append(a[2]) or real_check(*a))
    today = today_in(TZ)
    records = make_records("cdm-click", today, 30, start_hour=0, step=300)
    log = fake.add_file("cdm-click", today, records[:20])
    client = CopernicaClient(fake.token, fake.api_url, fake.auth_url, policy=RetryPolicy(base_delay=0.01))
    with store.connect(database_url) as conn:
        run_ = Run(conn, TZ, client=client, fmt=fmt)
        first = follow(run_, ["cdm-click"], interval=0.01, max_polls=2)
        log.records.extend(records[20:])  # the file grows
        second = follow(run_, ["cdm-click"], interval=0.01, max_polls=2)
    queries = [h.query for h in fake.downloads()]
    assert len(queries) == 4
    if fmt == "csv":  # not documented for CSV: the whole file each time, its head skipped here
        assert not any("from" in q for q in queries)
    else:
        assert all("from" in q for q in queries)
    assert count(db, "SELECT count(*) FROM events") == 30
    # Polls read 20, then the newest again (120 s overlap), then 10 new and the newest, then the newest.
    assert first.total("records") + second.total("records") == 33
    assert first.total("duplicates") + second.total("duplicates") == 3
    assert count(db, "SELECT records FROM backfill_files") == 33
    assert checks == ["cdm-click"]  # the zone once per file, not per poll
