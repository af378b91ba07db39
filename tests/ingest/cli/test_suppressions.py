"""The suppression rule (the `suppressions` view) and `ingest suppressions export`."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import orjson
import pytest

from tests.commands import run
from tests.workers.storage.test_messages import event
from workers.storage import store


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: object) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    events = [
        event("s1", "sent", "m1", 0, mailing=1, recipient="Hard@Example.com"),
        event("b1", "bounced", "m1", 10, code=550, description="no such user", recipient=None),
        event("b1b", "failed", "m1", 20, code=None, description="x"),  # no code: not permanent
        event("s2", "sent", "m2", 0, mailing=1, recipient="soft@example.com"),
        event("b2", "bounced", "m2", 10, code=421, description="try later", recipient="soft@example.com"),
        event("d2", "deferred", "m2", 11, recipient="soft@example.com"),
        event("a2", "autoresponded", "m2", 12, recipient="soft@example.com"),
        event("s3", "sent", "m3", 0, mailing=2, recipient="angry@example.com"),
        event("c3", "complained", "m3", 3600, recipient="angry@example.com"),
        event("f4", "failed", "m4", 86400 * 3, recipient="gone@example.com"),
        event("x4", "bounced", "m5", 86400 * 3, recipient="gone@example.com"),
        event("u5", "unsubscribed", None, 7200, mailing=2, profile=77, recipient=None),  # a webhook: no address
    ]
    events[9].smtp_status = "5.1.1"
    events[10].smtp_status = "4.2.2"
    with store.connect(database_url) as conn:
        store.store(conn, events)
    yield


@pytest.mark.usefixtures("stored")
def test_export_csv_has_the_rule(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "suppressions", "export")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["recipient"], r["reason"], r["mailing_id"], r["events"]) for r in rows] == [
        ("angry@example.com", "complaint", "2", "1"),
        ("gone@example.com", "hard_bounce", "", "1"),
        ("hard@example.com", "hard_bounce", "1", "1"),  # the address of its message, lower case
        ("", "unsubscribe", "2", "1"),  # known by its profile only
    ]
    assert rows[3]["profile_id"] == "77"
    assert rows[2]["first_at"] == rows[2]["last_at"] == "2026-11-26T12:00:10+00:00"
    assert "exported 4 suppressions" in err


@pytest.mark.usefixtures("stored")
def test_export_json_since(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "suppressions", "export", "--format", "json", "--since", "2026-11-27")
    assert code == 0, err
    assert [(r["recipient"], r["reason"]) for r in orjson.loads(out)] == [("gone@example.com", "hard_bounce")]
    code, out, err = run(capsys, "suppressions", "export", "--format", "json", "--since", "2027-01-01")
    assert (code, orjson.loads(out)) == (0, [])


@pytest.mark.usefixtures("stored")
def test_a_bad_since_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run(capsys, "suppressions", "export", "--since", "yesterday")
    assert (code, out) == (2, "")
    assert err.startswith("ingest: suppressions export: --since") and err.count("\n") == 1
