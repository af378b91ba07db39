"""What the tests of `ingest` commands against the fake Copernica API share: their environment,
running a command in-process, counting rows, and storing events as the webhooks would have."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import psycopg
import pytest

from common.envelope import Envelope
from ingest.cli import main
from tests.fake_copernica import FakeCopernica, webhook_fields
from workers.jobs import parse_calls
from workers.storage import store


def set_api_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeCopernica, **extra: str) -> dict[str, str]:
    """The environment of a command run against the fake API (in-process or a subprocess): quick
    retries, INFO logging, the fake's URLs and token, and `extra`; the working directory is an
    empty one, so no stray .env is read."""
    values = {
        "COPERNICA_RETRY_DELAY": "0.01",
        "COPERNICA_RETRIES": "3",
        "INGEST_LOG_LEVEL": "INFO",
        **fake.env(),
        **extra,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return values


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`ingest ARGV` in-process: its exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def count(db: psycopg.Connection, sql: str, *params: object) -> int:
    return db.execute(sql, params).fetchone()[0]


def send_webhooks(
    database_url: str,
    log_type: str,
    records: list[dict],
    tz: str = "Europe/Amsterdam",
    *,
    all_new: bool = True,
    **extra: str,
) -> int:
    """Store the events of logfile `records` as the worker would have from their webhooks (the same
    parse and store path), each webhook carrying `extra` fields too; the rows stored, which must be
    one per record when `all_new`."""
    calls = [
        Envelope(
            body=urllib.parse.urlencode(webhook_fields(log_type, r) | extra).encode(),
            content_type="application/x-www-form-urlencoded",
            received_at=time.time(),
        ).to_wire()
        for r in records
    ]
    events, origins, rejects = parse_calls(calls, tz)
    assert not rejects
    with store.connect(database_url) as conn:
        stored = store.store(conn, events, rejects, origins).stored
    assert stored == len(records) or not all_new
    return stored
