"""Fault: Redis stops under the receiver. 503 + Retry-After at once, nothing half-written,
and 200 again once it is back, without restarting the receiver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from rq import Queue

from common.settings import Settings
from ingest.devstack.embedded import EmbeddedValkey
from tests.clients import receiver_client
from tests.ingest.test_app import queued_calls
from tests.payloads import BASE_TIME, FORM, webhook_body

pytestmark = pytest.mark.faults


async def test_redis_stopped_then_back(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    settings = Settings.from_env({"REDIS_URL": valkey.url, "INGEST_AUTH": "none"}, dotenv=False)
    conn = redis.Redis.from_url(valkey.url)
    first, refused, third = (webhook_body("open", id=f"m{n}", time=BASE_TIME + n) for n in (1, 2, 3))
    try:
        async with receiver_client(settings) as client:
            assert (await client.post("/copernica", data=first, headers={"Content-Type": FORM})).status == 200
            valkey.stop()

            started = time.monotonic()
            resp = await client.post("/copernica", data=refused, headers={"Content-Type": FORM})
            elapsed = time.monotonic() - started
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert (await resp.json())["reason"] == "could not write to Redis"
            assert elapsed < 1.5
            ready = await client.get("/readyz")
            assert ready.status == 503 and "Retry-After" in ready.headers

            valkey.start()  # same data directory and port: the AOF brings the first call back
            resp = await client.post("/copernica", data=third, headers={"Content-Type": FORM})
            assert resp.status == 200
            assert (await client.get("/readyz")).status == 200

        bodies = [c["body"] for c in queued_calls(conn)]
        assert bodies == [first, third]  # the refused call left nothing behind
        job_keys = [k for k in conn.scan_iter("rq:job:*")]
        assert len(job_keys) == len(Queue("copernica", connection=conn).get_job_ids()) == 2
    finally:
        conn.close()
        valkey.stop()
