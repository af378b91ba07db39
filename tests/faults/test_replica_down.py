"""Fault: the Redis replica hangs under a receiver with INGEST_REDIS_MIN_REPLICAS=1. While it is
up, a 200 means the call is on the replica too; while it hangs, every call gets 503 +
Retry-After within INGEST_REDIS_REPLICA_TIMEOUT (plus a margin) and none gets 200; once it is
back, 200 again without a restart. With INGEST_REDIS_MIN_REPLICAS=0 the same outage changes
nothing. Every event answered 2xx is stored exactly once after a drain."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from tests.faults.harness import Stream, assert_stored_exactly_once, frozen, message_id, replica, servers, wait_for
from tests.faults.test_high_water import post_one
from tests.ingest.test_app import queued_calls
from tests.processes import Process, receiver

pytestmark = pytest.mark.faults

REPLICA_TIMEOUT_MS = 300
MARGIN = 1.0  # seconds beyond the replica timeout a refused call may take on a busy machine


def test_replica_down_then_back(tmp_path: Path) -> None:
    with (
        servers(tmp_path) as srv,
        replica(tmp_path / "replica", srv.valkey) as standby,
        redis.Redis.from_url(standby.url) as on_replica,
    ):
        streams: list[Stream] = []

        def stream(url: str, tag: str, count: int = 40) -> Stream:
            done = Stream(url, count=count, tag=tag, concurrency=8).start().join()
            done.check_answers()
            streams.append(done)
            return done

        with receiver(
            srv.env, INGEST_REDIS_MIN_REPLICAS="1", INGEST_REDIS_REPLICA_TIMEOUT=str(REPLICA_TIMEOUT_MS)
        ) as serving:
            up = stream(serving.url, "ra")
            assert set(up.statuses.values()) == {200}
            # Answered 200 only once the replica had it: it is there, read on the replica itself.
            on_standby = [call["body"] for call in queued_calls(on_replica)]
            assert len(on_standby) == up.count
            assert all(any(message_id("ra", n).encode() in b for b in on_standby) for n in range(up.count))

            with frozen(standby):
                started = time.monotonic()
                status, headers = asyncio.run(post_one(serving.url, 0, "rx"))
                elapsed = time.monotonic() - started
                assert status == 503 and headers["Retry-After"] == "5"
                assert "could not write to Redis" in headers["_body"]
                assert REPLICA_TIMEOUT_MS / 1000 * 0.9 <= elapsed < REPLICA_TIMEOUT_MS / 1000 + MARGIN, elapsed
                down = stream(serving.url, "rb", count=24)
                assert set(down.statuses.values()) == {503}  # nothing answered 200 meanwhile

            # Back: 200 again without a restart (the replica first catches up).
            wait_for(lambda: asyncio.run(post_one(serving.url, 1, "rx"))[0] == 200, timeout=15, interval=0.2)
            again = stream(serving.url, "rc")
            assert set(again.statuses.values()) == {200}

        with receiver(srv.env, INGEST_REDIS_MIN_REPLICAS="0") as serving, frozen(standby):
            unwatched = stream(serving.url, "rd")
            assert set(unwatched.statuses.values()) == {200}  # no wait, no refusal

        with Process(["worker", "--burst"], srv.env) as worker:
            assert worker.wait(60) == 0
        for each in streams:
            assert_stored_exactly_once(srv.postgres.url, each)
            assert {s for s in each.statuses.values() if s != 200} <= {503}
