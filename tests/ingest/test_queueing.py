"""One batch, one RQ job: the job the template writes is the job RQ itself would write, and the
write is all or nothing. Against a real Redis (Valkey)."""

from __future__ import annotations

import asyncio
import pickle
import time
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.utils import utcformat

from common.envelope import pack_calls, unpack_calls
from common.rqcontract.jobs import JobTemplate, TemplateError
from common.settings import Settings
from ingest import metrics
from ingest.queueing import FAILURE_TTL, JOB_FUNCTION, JOB_TIMEOUT, RESULT_TTL, BatchQueue, NotReplicated
from tests.clients import enqueue
from tests.payloads import queued_call

pytestmark = pytest.mark.rq_contract


def calls(count: int, start: int = 0) -> list[dict]:
    return [queued_call(n, remote="192.0.2.7", headers={"x-copernica-id": "7"}) for n in range(start, start + count)]


def test_the_job_is_the_one_rq_writes(settings: Settings, redis_conn: redis.Redis) -> None:
    batch = calls(3)
    [ours] = enqueue(settings, batch)
    queue = BatchQueue(settings)
    theirs = queue.queue.enqueue_call(
        JOB_FUNCTION,
        args=(pack_calls(batch),),
        timeout=JOB_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=queue.retry,
        description="store_packed(3 calls)",
    ).id
    mine, rqs = redis_conn.hgetall(f"rq:job:{ours}"), redis_conn.hgetall(f"rq:job:{theirs}")
    assert mine.keys() == rqs.keys()
    varying = {b"created_at", b"enqueued_at", b"data"}
    assert {k: v for k, v in mine.items() if k not in varying} == {k: v for k, v in rqs.items() if k not in varying}
    assert pickle.loads(mine[b"data"]) == pickle.loads(zlib.decompress(rqs[b"data"]))  # RQ zlib-compresses
    assert abs(Job.fetch(ours, connection=redis_conn).created_at.timestamp() - time.time()) < 60
    assert Queue("copernica", connection=redis_conn).get_job_ids() == [ours, theirs]
    assert redis_conn.smembers("rq:queues") == {b"rq:queue:copernica"}


def test_rq_reads_the_job_back(settings: Settings, redis_conn: redis.Redis) -> None:
    batch = calls(5)
    first, second = enqueue(settings, batch, calls(1, 5))
    job = Job.fetch(first, connection=redis_conn)
    assert job.func_name == JOB_FUNCTION and unpack_calls(job.args[0]) == batch and job.kwargs == {}
    assert job.get_status() == JobStatus.QUEUED and job.origin == "copernica"
    assert job.description == "store_packed(5 calls)" and job.timeout == JOB_TIMEOUT
    assert job.retries_left == settings.job_retries
    assert first != second and unpack_calls(Job.fetch(second, connection=redis_conn).args[0]) == calls(1, 5)


def test_write_sync_writes_the_same_job(settings: Settings, redis_conn: redis.Redis) -> None:
    job_id = BatchQueue(settings).write_sync(redis_conn, calls(2))
    assert unpack_calls(Job.fetch(job_id, connection=redis_conn).args[0]) == calls(2)
    assert Queue("copernica", connection=redis_conn).get_job_ids() == [job_id]


def test_out_of_memory_writes_nothing(settings: Settings, redis_conn: redis.Redis) -> None:
    enqueue(settings, calls(1))  # the template is built, the queue exists
    redis_conn.flushdb()
    used = int(redis_conn.info("memory")["used_memory"])
    redis_conn.config_set("maxmemory", str(max(used - 1024 * 1024, 1)))
    try:
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            enqueue(settings, calls(50))
        assert redis_conn.keys("rq:*") == []
    finally:
        redis_conn.config_set("maxmemory", "0")
    assert len(enqueue(settings, calls(1))) == 1


def test_a_dropped_connection_is_replaced(settings: Settings, redis_conn: redis.Redis) -> None:
    async def go() -> list[str]:
        queue = BatchQueue(settings)
        try:
            ids = [await queue.enqueue(calls(1))]
            killed = redis_conn.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
            ids.append(await queue.enqueue(calls(1, 1)))  # the dead socket is noticed, a new one used
            return ids
        finally:
            await queue.close()

    ids = asyncio.run(go())
    assert Queue("copernica", connection=redis_conn).get_job_ids() == ids


def test_a_hung_redis_times_out_then_writes_resume(redis_url: str, redis_conn: redis.Redis) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "INGEST_REDIS_TIMEOUT": "0.3"}, dotenv=False)

    async def go() -> str:
        queue = BatchQueue(settings)
        try:
            await queue.enqueue(calls(1))
            redis_conn.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await queue.enqueue(calls(1, 1))
            assert time.monotonic() - started < 1.2  # twice the Redis timeout, not the whole pause
            redis_conn.execute_command("CLIENT", "UNPAUSE")
            return await queue.enqueue(calls(1, 2))
        finally:
            redis_conn.execute_command("CLIENT", "UNPAUSE")
            await queue.close()

    last = asyncio.run(go())
    # The timed-out write may still land once Redis resumes (it was sent): then it is queued
    # once, and storing is idempotent. The write after it always lands.
    assert last in Queue("copernica", connection=redis_conn).get_job_ids()
    assert unpack_calls(Job.fetch(last, connection=redis_conn).args[0]) == calls(1, 2)


class _OddQueue(Queue):
    """A queue whose enqueue also does `extra` on the pipeline it was given: as a later RQ might."""

    extra: Callable[[Any, Job], None] = staticmethod(lambda _pipeline, _job: None)

    def enqueue_call(self, *args: Any, pipeline: Any = None, **kwargs: Any) -> Job:
        job = super().enqueue_call(*args, pipeline=pipeline, **kwargs)
        type(self).extra(pipeline, job)
        return job


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        (lambda pipe, job: pipe.hget(job.key, "status"), "called hget"),  # a read: its answer never comes
        (lambda pipe, _job: pipe.execute(), "called execute"),
        (lambda pipe, job: pipe.sadd(f"rq:dependents:{job.id}", "x"), "cannot place that key"),
        (lambda pipe, job: pipe.hset(job.key, "parent", f"rq:job:{job.id}"), "derived from the job id"),
        (lambda pipe, job: pipe.hset(job.key, "last_heartbeat", utcformat(job.created_at)), "freeze it"),
        (lambda pipe, job: pipe.hset(job.key, mapping={"x": 1}, items=["y", 2]), "with \\['items'\\]"),
    ],
    ids=["read", "execute", "derived-key", "derived-value", "frozen-time", "unknown-option"],
)
def test_the_template_refuses_what_it_cannot_place(
    redis_conn: redis.Redis, extra: Callable[[Any, Job], None], refusal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_OddQueue, "extra", staticmethod(extra))
    queue = _OddQueue("copernica", connection=redis_conn)
    with pytest.raises(TemplateError, match=refusal):
        JobTemplate(
            queue,
            JOB_FUNCTION,
            timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=Retry(max=2, interval=[5, 10]),
        )
    assert redis_conn.keys("rq:*") == []  # nothing was written meanwhile


def test_the_template_builds_when_rq_does_nothing_odd(redis_conn: redis.Redis) -> None:
    """The control for the refusals above: the same queue class, nothing extra."""
    template = JobTemplate(
        _OddQueue("copernica", connection=redis_conn),
        JOB_FUNCTION,
        timeout=JOB_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=2, interval=[5, 10]),
    )
    job_id, command = template.pack(pack_calls(calls(1)), b"store_packed(1 calls)")
    connection = redis_conn.connection_pool.make_connection()
    connection.send_packed_command([command])
    connection.read_response()
    connection.disconnect()
    assert unpack_calls(Job.fetch(job_id, connection=redis_conn).args[0]) == calls(1)


def test_the_asyncio_client_gets_an_asyncio_retry(settings: Settings) -> None:
    """redis-py >= 8.2 warns when an asyncio client is given the synchronous Retry."""

    async def go() -> None:
        queue = BatchQueue(settings)
        await queue.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(go())


def test_too_few_replicas_fails_the_batch_in_time(
    redis_url: str, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """INGEST_REDIS_MIN_REPLICAS=1 against a Redis without replicas: each batch is written, but
    fails after the replica timeout (its calls get 503); one warning for both; an error reply
    of the script leaves the connection in step (the WAIT's reply is not read as the next's)."""
    env = {"REDIS_URL": redis_url, "INGEST_REDIS_MIN_REPLICAS": "1", "INGEST_REDIS_REPLICA_TIMEOUT": "200"}
    settings = Settings.from_env(env, dotenv=False)
    before = metrics.REGISTRY.get_sample_value("copernica_ingest_replica_waits_failed_total")

    async def go() -> float:
        queue = BatchQueue(settings)
        try:
            started = time.monotonic()
            with pytest.raises(NotReplicated, match="on 0 of 1 replicas"):
                await queue.enqueue(calls(1))
            elapsed = time.monotonic() - started
            used = int(redis_conn.info("memory")["used_memory"])
            redis_conn.config_set("maxmemory", str(max(used - 1024 * 1024, 1)))
            try:
                with pytest.raises(redis.ResponseError, match="maxmemory"):
                    await queue.enqueue(calls(50))
            finally:
                redis_conn.config_set("maxmemory", "0")
            with pytest.raises(NotReplicated):
                await queue.enqueue(calls(1, 1))
            return elapsed
        finally:
            await queue.close()

    with caplog.at_level("WARNING", logger="ingest.queueing"):
        elapsed = asyncio.run(go())
    assert 0.18 <= elapsed < 1.0, elapsed
    assert metrics.REGISTRY.get_sample_value("copernica_ingest_replica_waits_failed_total") - before == 2
    assert len([r for r in caplog.records if "replicas" in r.getMessage()]) == 1  # at most one per 10 s
    assert len(Queue("copernica", connection=redis_conn).get_job_ids()) == 2  # written, just not replicated


def test_no_wait_without_min_replicas(settings: Settings, redis_conn: redis.Redis) -> None:
    assert settings.redis_min_replicas == 0
    redis_conn.config_resetstat()
    enqueue(settings, calls(2))
    assert "cmdstat_wait" not in redis_conn.info("commandstats")
