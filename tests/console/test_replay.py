"""Rejected calls and failed jobs in the console: shown with reason and raw body (as text),
replayed or requeued after a confirmation, the outcome shown."""

from __future__ import annotations

import re

import psycopg
import redis
from aiohttp.test_utils import TestClient
from rq import Queue
from rq.registry import FailedJobRegistry

from tests.console.conftest import csrf_of
from tests.fixtures_copernica import envelope as envelope_of
from tests.ingest.cli.test_requeue import failed_jobs
from tests.payloads import calls
from tests.workers.storage.test_rejected import FORM, garbage, keep, open_call
from tests.workers.test_jobs import envelope

HOSTILE_BODY = b'type=open&id=<script>alert(1)</script>&x="><img src=x onerror=alert(2)>\xff'


def count(db: psycopg.Connection, table: str) -> int:
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_a_rejected_call_shows_reason_and_body_as_text(
    logged_in: tuple[TestClient, str], db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    call_id = keep(db, envelope_of(HOSTILE_BODY, FORM), "form body is not valid UTF-8")
    listing = await (await client.get("/rejected")).text()
    assert f'href="/rejected/{call_id}"' in listing and "form body is not valid UTF-8" in listing
    html = await (await client.get(f"/rejected/{call_id}")).text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert (await client.get("/rejected/424242")).status == 404


async def test_replaying_one_call_after_a_fix_stores_it(
    logged_in: tuple[TestClient, str], db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    fixed = keep(db, open_call(), "old parser bug")  # kept by an older version; today's code reads it
    broken = keep(db, garbage(), "stale reason")
    confirm = await client.get(f"/rejected/{fixed}/replay")
    html = await confirm.text()
    assert "Replay rejected call" in html and count(db, "events") == 0  # a GET changes nothing
    resp = await client.post(f"/rejected/{fixed}/replay", data={"csrf": csrf_of(html)})
    outcome = re.search(r'<p id="outcome">(.*?)</p>', await resp.text(), re.S).group(1)
    assert " ".join(outcome.split()) == ("Replayed 1: 1 now stored (1 new events, 0 already stored), 0 still rejected.")
    assert count(db, "events") == 1
    assert [row[0] for row in db.execute("SELECT id FROM rejected_events")] == [broken]


async def test_replay_all_shows_what_stays_rejected(logged_in: tuple[TestClient, str], db: psycopg.Connection) -> None:
    client, csrf = logged_in
    keep(db, open_call(), "old parser bug")
    keep(db, garbage(), "stale reason")
    html = await (await client.get("/rejected/replay")).text()
    assert "all 2 rejected calls" in html
    text = await (await client.post("/rejected/replay", data={"csrf": csrf})).text()
    assert "Replayed 2: 1 now stored" in " ".join(text.split())
    assert "form body is not valid UTF-8" in text  # why the other stays
    assert (count(db, "events"), count(db, "rejected_events")) == (1, 1)


async def test_replay_of_an_unknown_call_is_404(logged_in: tuple[TestClient, str]) -> None:
    client, csrf = logged_in
    assert (await client.post("/rejected/77/replay", data={"csrf": csrf})).status == 404


async def test_failed_jobs_are_listed_and_requeued(
    logged_in: tuple[TestClient, str], redis_url: str, redis_conn: redis.Redis
) -> None:
    client, csrf = logged_in
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(5))]
    first, second = failed_jobs(redis_url, redis_conn, [wires[:3], wires[3:]])
    html = await (await client.get("/failed")).text()
    assert first in html and second in html and "Failed jobs <small>(2)</small>" in html
    assert re.search(rf"{first}</td><td>3</td>", html)  # its calls counted
    resp = await client.post(f"/failed/{first}/requeue", data={"csrf": csrf})
    assert "Requeued 1 failed job." in await resp.text()
    queue = Queue("copernica", connection=redis_conn)
    assert queue.get_job_ids() == [first]
    assert FailedJobRegistry(queue=queue).get_job_ids() == [second]
    missing = await client.post(f"/failed/{first}/requeue", data={"csrf": csrf})
    assert missing.status == 404 and "no failed job" in await missing.text()
    resp = await client.post("/failed/requeue", data={"csrf": csrf})
    assert "Requeued 1 failed job." in await resp.text()
    assert sorted(queue.get_job_ids()) == sorted([first, second])
