"""Fault 5: a queue above its high-water mark, or a Redis out of memory, gets 503 +
Retry-After instead of exhaustion; accepting resumes as workers drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.faults.harness import Stream, assert_stored_exactly_once, body, servers, wait_for
from tests.payloads import FORM
from tests.processes import Process, receiver

pytestmark = pytest.mark.faults


async def post_one(url: str, n: int, tag: str) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body(tag, n), headers={"Content-Type": FORM}) as resp,
    ):
        return resp.status, dict(resp.headers) | {"_body": await resp.text()}


def test_high_water_mark_then_drain(tmp_path: Path) -> None:
    with servers(tmp_path) as srv, receiver(srv.env, INGEST_MAX_QUEUE_DEPTH="300", INGEST_MAX_BATCH="10") as serving:
        url = serving.url
        stream = Stream(url, count=2000, tag="hw", concurrency=4, pause=0.002).start().join()
        stream.check_answers()
        accepted = len(stream.accepted())
        refused = [s for s in stream.statuses.values() if s == 503]
        assert 300 <= accepted < stream.count, accepted  # the mark held (it is polled twice a second)
        assert len(refused) == stream.count - accepted
        assert {stream.statuses[n] for n in range(stream.count - 200, stream.count)} == {503}  # and holds
        status, headers = asyncio.run(post_one(url, 99_999, "hw"))
        assert status == 503 and headers["Retry-After"] == "5"
        assert "high-water" in headers["_body"]

        with Process(["worker", "--burst"], srv.env) as worker:
            assert worker.wait(120) == 0
        wait_for(lambda: asyncio.run(post_one(url, 99_998, "hw"))[0] == 200, timeout=10)
        assert_stored_exactly_once(srv.postgres.url, stream)


def test_redis_out_of_memory_then_room_again(tmp_path: Path) -> None:
    with servers(tmp_path) as srv, receiver(srv.env) as serving:
        url = serving.url
        conn = redis.Redis.from_url(srv.valkey.url)
        assert asyncio.run(post_one(url, 1, "oom"))[0] == 200
        used = int(conn.info("memory")["used_memory"])
        conn.config_set("maxmemory", str(used + 64 * 1024))  # noeviction: full soon
        stream = Stream(url, count=3000, tag="oom", concurrency=8).start().join()
        stream.check_answers()
        full = [s for s in stream.statuses.values() if s == 503]
        assert full, "Redis never filled up"
        assert set(stream.statuses.values()) <= {200, 503}
        conn.config_set("maxmemory", "0")
        assert asyncio.run(post_one(url, 99_999, "oom"))[0] == 200
        with Process(["worker", "--burst"], srv.env) as worker:
            assert worker.wait(120) == 0
        assert_stored_exactly_once(srv.postgres.url, stream)
        conn.close()
