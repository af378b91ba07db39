"""Logs hold no person at INFO: a real worker storing, rejecting and leaving out calls, an import
and an erase, all at INFO, never write an address or a reader's IP."""

from __future__ import annotations

import orjson
import redis

from common.envelope import wire
from common.settings import Settings
from ingest.queueing import BatchQueue
from tests.payloads import BASE_TIME, FORM, JSON, webhook_body
from tests.people import ANNA, KEY
from tests.processes import ingest_env, run_ingest

BOUNCE = (
    "From: mailer-daemon@mx.example.net\r\nTo: bounces@example.com\r\n\r\n"
    "550 5.1.1 <anna.smith+news@example.com>: no such user\r\n"
)


def calls() -> list[dict]:
    bodies = [
        (webhook_body("open", id="m1", time=str(BASE_TIME), recipient=ANNA, ip="198.51.100.23", useragent="UA"), FORM),
        (webhook_body("bounce", id="m2", time=str(BASE_TIME), recipient=ANNA, mime=BOUNCE), FORM),
        (b'{"type": "open", "recipient": "' + ANNA.encode() + b'", "ip": "198.51.100.23"', JSON),  # unreadable
        (webhook_body("open", id="m3", time=str(BASE_TIME), recipient="carl@example.com", ip="198.51.100.24"), FORM),
    ]
    return [wire(body, kind, BASE_TIME + 1, "127.0.0.1", "POST", "/copernica", {}) for body, kind in bodies]


def test_nothing_personal_is_logged_at_info(
    redis_url: str, database_url: str, redis_conn: redis.Redis, tmp_path
) -> None:
    env = ingest_env(redis_url, database_url, INGEST_LOG_LEVEL="INFO", INGEST_ERASURE_KEY=KEY)
    settings = Settings.from_env({"REDIS_URL": redis_url, "DATABASE_URL": database_url}, dotenv=False)
    BatchQueue(settings).write_sync(redis_conn, calls())
    logs = []
    worker = run_ingest(["worker", "--burst"], env)
    assert worker.returncode == 0, worker.stderr
    logs.append(worker.stderr)
    erase = run_ingest(["erase", "--email", "carl@example.com"], env)
    assert erase.returncode == 0, erase.stderr
    logs.append(erase.stderr)
    BatchQueue(settings).write_sync(redis_conn, calls())  # again: carl's now left out
    again = run_ingest(["worker", "--burst"], env)
    logs.append(again.stderr)
    record = {"id": "m9", "time": "2026-11-25 10:00:00", "ip": "198.51.100.25", "email": ANNA, "header": "UA"}
    path = tmp_path / "cdm-impression.2026-11-25.json"
    path.write_bytes(orjson.dumps([record]))
    imported = run_ingest(["import", str(path)], env)
    assert imported.returncode == 0, imported.stderr
    logs.append(imported.stderr)
    text = "\n".join(logs).lower()
    assert " info " in text  # INFO lines were written
    assert "left out 1 event" in text
    for personal in ("anna.smith", "carl@", "198.51.100."):
        assert personal not in text, personal
