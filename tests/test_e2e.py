"""End to end over real processes: HTTP -> Redis -> `ingest worker --burst` -> PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from tests.fixtures_copernica import TIME, dsn, encode_form, log_record, out_of_office, to_json
from tests.payloads import WEBHOOK_TYPES, calls, webhook_body
from tests.processes import ingest_env, receiver, run_ingest

FORM = "application/x-www-form-urlencoded"

EXPECTED_TYPES = {
    "open": "opened",
    "click": "clicked",
    "delivery": "delivered",
    "failure": "failed",
    "bounce": "bounced",
    "unsubscribe": "unsubscribed",
    "create": "profile_created",
    "update": "profile_updated",
    "delete": "profile_deleted",
}


async def post_all(base: str, bodies: list[tuple[bytes, str]], concurrency: int = 32) -> list[int]:
    statuses: list[int] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(body: bytes, content_type: str) -> None:
            async with (
                semaphore,
                session.post(f"{base}/copernica", data=body, headers={"Content-Type": content_type}) as resp,
            ):
                statuses.append(resp.status)

        await asyncio.gather(*(one(b, t) for b, t in bodies))
    return statuses


@pytest.mark.usefixtures("redis_conn")
def test_thousand_calls_stored_once(redis_url: str, database_url: str, db: psycopg.Connection) -> None:
    env = ingest_env(redis_url, database_url)
    batch = calls(1000)
    garbage = [
        (b"\xff\xfe not a form", "application/x-www-form-urlencoded"),
        (b"[1, 2", "application/json"),
        (b'"a string"', "application/json"),
    ]
    with receiver(env) as base:
        statuses = asyncio.run(post_all(base, [(body, ct) for _f, body, ct in batch] + garbage))
        assert statuses == [200] * 1003
        done = run_ingest(["worker", "--burst"], env)
        assert done.returncode == 0, done.stderr[-2000:]

        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1000
        assert db.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 3
        rows = db.execute(
            "SELECT event_type, copernica_type, message_id, recipient, occurred_at, source, event_fields(e)"
            " FROM events e"
        ).fetchall()
        by_type: dict[str, int] = {}
        for event_type, copernica_type, message_id, recipient, occurred, source, payload in rows:
            assert event_type == EXPECTED_TYPES[copernica_type]
            assert source == "webhook"
            assert int(occurred.timestamp()) == int(payload["time"])
            # an unsubscribe's `id` is its own, no message id
            assert message_id == (None if copernica_type == "unsubscribe" else payload.get("id"))
            assert recipient == payload.get("recipient")
            by_type[copernica_type] = by_type.get(copernica_type, 0) + 1
        assert set(by_type) == set(WEBHOOK_TYPES)
        sample = {r[6]["id"]: r[6] for r in rows if r[1] == "open"}
        original = next(f for f, _b, _c in batch if f["type"] == "open")
        assert sample[original["id"]]["useragent"] == original["useragent"]

        # The same 1,000 calls again (a sender's retry): still one row per event.
        statuses = asyncio.run(post_all(base, [(body, ct) for _f, body, ct in batch]))
        assert statuses == [200] * 1000
        done = run_ingest(["worker", "--burst"], env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1000
        assert db.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 3

    stats = run_ingest(["stats", "--json"], env)
    assert stats.returncode == 0, stats.stderr
    assert '"events_total": 1000' in stats.stdout
    assert '"queued_jobs": 0' in stats.stdout


@pytest.mark.usefixtures("db")
def test_stats_for_one_mailing(redis_url: str, database_url: str) -> None:
    """Sent (carrying the mailing), delivered and two opens of one message (no mailing id): the
    opens resolve their mailing through the sent event."""
    from workers.events.model import from_logfile
    from workers.jobs import parse_calls
    from workers.storage import store

    sent = from_logfile(
        {"id": "msg1", "time": "2026-11-26 13:00:00", "mailingid": "4242", "email": "a@example.com"},
        "cdm-attempts",
        "Europe/Amsterdam",
        __import__("datetime").datetime.now().astimezone(),
    )
    person = {"id": "msg1", "recipient": "a@example.com"}
    bodies = [
        webhook_body("delivery", **person, time="1795694500"),
        webhook_body("open", **person, time="1795694600", ip="192.0.2.1"),
        webhook_body("open", **person, time="1795694700", ip="192.0.2.1"),
        webhook_body("bounce", id="msg1", time="1795694750", mime=out_of_office()),
    ]
    wires = [
        {"body": b, "content_type": "application/x-www-form-urlencoded", "received_at": 1795694800.0} for b in bodies
    ]
    events, _origins, rejects = parse_calls(wires, "Europe/Amsterdam")
    with store.connect(database_url) as conn:
        store.store(conn, [sent, *events], rejects)
    env = ingest_env(redis_url, database_url)
    done = run_ingest(["stats", "--mailing", "4242", "--json"], env)
    assert done.returncode == 0, done.stderr
    row = orjson.loads(done.stdout)
    assert (row["sent"], row["delivered"], row["opens"], row["unique_opens"]) == (1, 1, 2, 1)
    assert (row["bounces"], row["autoreplies"]) == (0, 1)  # an out-of-office reply is no bounce
    assert row["open_rate"] == 1.0
    table = run_ingest(["stats", "--mailing", "4242"], env)
    assert "open rate        100.0 %" in table.stdout
    assert "autoreplies      1" in table.stdout and "bounces          0" in table.stdout
    missing = run_ingest(["stats", "--mailing", "999"], env)
    assert missing.returncode == 1 and "no stored events for mailing 999" in missing.stderr


@pytest.mark.usefixtures("redis_conn")
def test_webhooks_and_logfiles_of_one_event_meet(
    redis_url: str, database_url: str, tmp_path: Path, db: psycopg.Connection
) -> None:
    """Over the real receiver, worker and `ingest import`: each event below arrives both ways (an
    unsubscribe's logfile record before its webhook too) and is one row."""
    env = ingest_env(redis_url, database_url)

    def local(offset: int) -> str:  # TIME + offset in Copernica's zone (CET in November)
        return f"2026-11-26 13:00:{1 + offset:02d}"

    def write(name: str, *records: dict[str, str]) -> str:
        path = tmp_path / name
        path.write_bytes(to_json(list(records)))
        return str(path)

    first = write(
        "pom-unsubscribes.2026-11-26.json", log_record("pom-unsubscribes", id="msgB", time=local(10), profile="3003")
    )
    later = [
        write("cdm-unsubscribe.2026-11-26.json", log_record("cdm-unsubscribe", id="msgA", time=local(0))),
        write("cdm-impression.2026-11-26.json", log_record("cdm-impression", id="msgC", time=local(20))),
        write("pom-delivery.2026-11-26.json", log_record("pom-delivery", id="msgD", time=local(30))),
        write("cdm-error.2026-11-26.json", log_record("cdm-error", id="msgF", time=local(50), type="bounce")),
    ]
    hooks = [
        {"id": "u1", "type": "unsubscribe", "time": TIME, "database": "5", "profile": "1001", "mailing": "42"},
        {"id": "u2", "type": "unsubscribe", "time": TIME + 10, "database": "5", "profile": "3003"},
        {
            "id": "msgC",
            "recipient": "a@example.com",
            "ip": "192.0.2.1",
            "time": TIME + 20,
            "useragent": "Mozilla/5.0",
            "referer": "",
            "tags": "news",
        },  # a 2017 open: no type
        {"id": "msgD", "type": "delivery", "time": TIME + 30, "recipient": "a@example.com"},
        {"id": "msgE", "type": "bounce", "time": TIME + 40, "recipient": "a@example.com", "mime": out_of_office()},
        {
            "id": "msgF",
            "type": "bounce",
            "time": TIME + 50,
            "recipient": "a@example.com",
            "mime": dsn("5.1.1", auto_submitted="auto-replied"),
        },
        {"id": "msgF", "type": "failure", "time": TIME + 50, "recipient": "a@example.com", "state": "bounce"},
    ]
    done = run_ingest(["import", first], env)
    assert done.returncode == 0, done.stderr[-2000:]
    with receiver(env) as base:
        statuses = asyncio.run(
            post_all(base, [(encode_form({k: str(v) for k, v in h.items()}), FORM) for h in hooks], concurrency=1)
        )
        assert statuses == [200] * len(hooks)
        done = run_ingest(["worker", "--burst"], env)
        assert done.returncode == 0, done.stderr[-2000:]
    done = run_ingest(["import", *later], env)
    assert done.returncode == 0, done.stderr[-2000:]

    rows = db.execute(
        "SELECT event_type, copernica_type, source, message_id, profile_id, smtp_status FROM events"
        " ORDER BY occurred_at"
    ).fetchall()
    assert rows == [
        ("unsubscribed", "unsubscribe", "webhook", None, 1001, None),
        ("unsubscribed", "pom-unsubscribes", "logfile", "msgB", 3003, None),  # the record came first
        ("opened", "", "webhook", "msgC", None, None),
        ("delivered", "delivery", "webhook", "msgD", None, None),
        ("autoresponded", "bounce", "webhook", "msgE", None, None),
        ("bounced", "bounce", "webhook", "msgF", None, "5.1.1"),
    ]
