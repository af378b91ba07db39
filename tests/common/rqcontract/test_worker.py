"""The worker's part of the RQ contract: a job whose worker lost Redis under it is put back on
its queue by that worker, from whatever of RQ's bookkeeping the primary that answers now holds
(`requeue_interrupted`); and a real worker that loses its Redis mid-job runs the job again once
Redis is back, without waiting for RQ's abandoned-job handling. Real Valkey, real RQ."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry

from common.rqcontract.worker import HeartbeatWorker, requeue_interrupted
from common.settings import Settings
from ingest.devstack.embedded import EmbeddedValkey
from workers import runner

pytestmark = pytest.mark.rq_contract

QUEUE = "requeue-test"

# What the job below sees, shared with the test (SimpleWorker runs jobs in this process).
RUNS: list[str] = []
STARTED = threading.Event()
RESUME = threading.Event()


def held_job(tag: str) -> str:
    """Runs until the test lets it finish (the first time: Redis is killed meanwhile)."""
    RUNS.append(tag)
    STARTED.set()
    assert RESUME.wait(30), "the test never let the job finish"
    return tag


def noop(tag: str) -> str:
    return tag


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
        yield client


def queued(conn: redis.Redis) -> list[str]:
    return [j.decode() for j in conn.lrange(Queue(QUEUE, connection=conn).key, 0, -1)]


def started(conn: redis.Redis, queue: str = QUEUE) -> list[str]:
    """Job ids in the started registry, from its raw entries ("<job id>:<execution id>"; RQ 2.0's
    `get_job_ids` gives them whole)."""
    key = StartedJobRegistry(queue, connection=conn).key
    return [entry.decode().split(":")[0] for entry in conn.zrange(key, 0, -1)]


def take(conn: redis.Redis, queue: Queue) -> Job:
    """Dequeue the job as a worker does and start its execution (RQ's own bookkeeping): it is
    then in the started registry and no longer queued."""
    worker = HeartbeatWorker([queue], connection=conn)
    found = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert found is not None
    job, _ = found
    worker.prepare_execution(job)
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    return job


def test_a_started_job_is_requeued_and_runs_again(conn: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=conn)
    job = queue.enqueue(noop, "a", result_ttl=0)
    take(conn, queue)
    assert started(conn) == [job.id]
    assert queued(conn) == []

    assert requeue_interrupted(conn, job.id, queue) == "requeued"

    assert queued(conn) == [job.id]
    assert started(conn) == []
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.QUEUED
    assert HeartbeatWorker([queue], connection=conn).work(burst=True)
    assert not conn.exists(job.key), "the requeued job did not run to its end"


def test_a_job_still_queued_is_not_queued_twice(conn: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=conn)
    job = queue.enqueue(noop, "b", result_ttl=0)
    assert requeue_interrupted(conn, job.id, queue) == "still queued"
    assert queued(conn) == [job.id]


def test_a_job_left_in_the_intermediate_list_is_requeued(conn: redis.Redis) -> None:
    # RQ's LMOVE dequeue moved it aside, and the loss came before its execution was recorded.
    queue = Queue(QUEUE, connection=conn)
    job = queue.enqueue(noop, "c", result_ttl=0)
    conn.lmove(queue.key, queue.intermediate_queue_key)
    assert queued(conn) == []

    assert requeue_interrupted(conn, job.id, queue) == "requeued"
    assert queued(conn) == [job.id]
    assert conn.llen(queue.intermediate_queue_key) == 0


@pytest.mark.parametrize("state", ["finished", "scheduled", "failed"])
def test_a_job_rq_accounts_for_is_left_alone(conn: redis.Redis, state: str) -> None:
    queue = Queue(QUEUE, connection=conn)
    job = queue.enqueue(noop, "d", result_ttl=0, retry=Retry(max=2, interval=60))
    take(conn, queue)
    if state == "finished":  # result_ttl=0: RQ deletes a finished job
        conn.delete(job.key)
        expected = "gone"
    elif state == "scheduled":
        ScheduledJobRegistry(QUEUE, connection=conn).schedule(job, datetime.now(UTC) + timedelta(minutes=1))
        expected = "scheduled for a retry"
    else:
        conn.hset(job.key, "status", JobStatus.FAILED.value)
        expected = "left failed"
    assert requeue_interrupted(conn, job.id, queue) == expected
    assert queued(conn) == []


def test_a_worker_that_lost_redis_under_a_job_runs_it_again_once_redis_is_back(tmp_path: Path) -> None:
    """Redis SIGKILLed while the worker runs a job, then restarted from its append-only file:
    the worker's bookkeeping after the job fails, the worker waits for Redis and requeues the
    job, which runs again. Abandoned-job handling is pushed out of reach (an hour), so only the
    worker's own requeue can bring the job back before the burst ends."""
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    RUNS.clear()
    STARTED.clear()
    RESUME.clear()
    waiting = threading.Event()
    done = threading.Event()

    class Worker(runner.StoreWorker):
        abandoned_after = 3600

        def _requeue_when_back(self, job: Job, queue: Queue) -> None:
            waiting.set()
            super()._requeue_when_back(job, queue)

    try:
        settings = Settings.from_env({"REDIS_URL": server.url, "DATABASE_URL": "postgresql:///unused"}, dotenv=False)
        worker = runner.make_worker(settings)
        worker.__class__ = Worker
        queue = worker.queues[0]
        job = queue.enqueue(held_job, "x", result_ttl=0)

        def break_redis() -> None:
            # RQ installs signal handlers: the worker must run in the main thread, so Redis is
            # broken from this one.
            if not STARTED.wait(20):
                RESUME.set()
                return
            server.kill()
            RESUME.set()  # the job returns; the worker's bookkeeping finds Redis gone
            if waiting.wait(30):
                server.start()
                # A server started from a thread dies with that thread (the parent-death
                # signal follows the thread that spawned it): stay until the test is done.
                done.wait(90)

        breaking = threading.Thread(target=break_redis, daemon=True)
        breaking.start()
        worker.work(burst=True)
        assert STARTED.is_set(), "the worker never started the job"
        assert waiting.is_set(), "the worker did not notice that Redis was lost"
        assert RUNS == ["x", "x"], RUNS
        with redis.Redis.from_url(server.url) as check:
            assert not check.exists(job.key), "the job did not finish after its second run"
            assert check.llen(queue.key) == 0
            assert started(check, queue.name) == []
    finally:
        done.set()
        server.stop()
