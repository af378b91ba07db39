"""Fault 1: the worker SIGKILLed mid-batch, again and again, during a stream of 20,000 events:
every acknowledged event is stored exactly once, and a batch abandoned by a killed worker is
retried within about a minute (not after RQ's default of ten)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests.faults.harness import Stream, assert_stored_exactly_once, servers, wait_for
from tests.processes import Process, receiver
from workers import coalesce

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_worker_killed_repeatedly(tmp_path: Path) -> None:
    with servers(tmp_path) as srv, receiver(srv.env, INGEST_MAX_BATCH="50") as serving:
        stream = Stream(serving.url, count=20_000, tag="wk", concurrency=16, pause=0.003).start()
        kills = 0
        worker = Process(["worker"], srv.env).start()
        try:
            with psycopg.connect(srv.postgres.url, autocommit=True) as db:
                while stream.thread.is_alive() and kills < 6:
                    # Kill while it is storing: once rows are arriving.
                    before = db.execute("SELECT count(*) FROM events").fetchone()[0]
                    wait_for(
                        lambda b=before: db.execute("SELECT count(*) FROM events").fetchone()[0] > b,
                        timeout=60,
                        interval=0.05,
                    )
                    worker.kill()
                    kills += 1
                    worker = Process(["worker"], srv.env).start()
                    time.sleep(0.5)
            stream.join()
            stream.check_answers()
            assert kills >= 3
            # A job whose worker died is retried once its heartbeat lapses (30 s) at the next
            # maintenance round (15 s) after its back-off (5 s, 10 s, ... for a second death);
            # one killed between RQ's dequeue and its start waits in RQ's intermediate queue for
            # a minute first. So about a minute, at most about two here.
            try:
                waited = wait_for(lambda: len(set(stored_ids(srv))) >= len(stream.accepted()), timeout=240)
            except AssertionError:
                raise AssertionError(diagnose(srv, stream)) from None
            assert waited < 150, f"abandoned batches took {waited:.0f} s to be stored"
            # Every borrowed batch is settled or given back. A run killed after its commit and
            # before its settle leaves its list until the lease ends and a worker's maintenance
            # returns it (its jobs are then stored again, as duplicates): wait for that.
            conn = redis.Redis.from_url(srv.valkey.url)
            wait_for(lambda: conn.smembers(coalesce.REGISTRY) == set(), timeout=coalesce.LEASE_SECONDS + 90)
            conn.close()
        finally:
            worker.kill()
        assert_stored_exactly_once(srv.postgres.url, stream)
        print(f"{kills} kills; everything stored {waited:.0f} s after the stream ended")


def diagnose(srv, stream: Stream) -> str:
    from rq import Queue
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    conn = redis.Redis.from_url(srv.valkey.url)
    queue = Queue("copernica", connection=conn)
    missing = stream.accepted() - set(stored_ids(srv))
    return (
        f"{len(missing)} acknowledged events not stored (e.g. {sorted(missing)[:3]}); queue {queue.count}, "
        f"started {StartedJobRegistry(queue=queue).get_job_ids()}, "
        f"scheduled {ScheduledJobRegistry(queue=queue).count}, "
        f"failed {FailedJobRegistry(queue=queue).count}, borrowed {conn.smembers(coalesce.REGISTRY)}, "
        f"intermediate {conn.lrange('rq:queue:copernica:intermediate', 0, -1)}, "
        f"workers {[w.decode() for w in conn.smembers('rq:workers')]}, "
        f"rejected calls {rejected_count(srv)}"
    )


def rejected_count(srv) -> int:
    with psycopg.connect(srv.postgres.url) as db:
        return db.execute("SELECT count(*) FROM rejected_events").fetchone()[0]


def stored_ids(srv) -> list[str]:
    from tests.faults.harness import stored_ids as ids

    return ids(srv.postgres.url, "wk")
