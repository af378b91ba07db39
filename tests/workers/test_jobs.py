"""The store job: every call ends as rows or rejects; a failed job is retried, then kept."""

from __future__ import annotations

import asyncio
import gc

import psycopg
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from common.envelope import Envelope, unpack_calls
from common.settings import Settings
from ingest.queueing import BatchQueue, retry_intervals
from tests.payloads import calls
from tests.processes import ingest_env, run_ingest
from workers import jobs
from workers.jobs import parse_calls
from workers.storage import store


def envelope(body: bytes, content_type: str, n: int = 0) -> dict:
    return Envelope(body=body, content_type=content_type, received_at=1795694401.5 + n).to_wire()


def test_parse_calls_keeps_every_call() -> None:
    good = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(18))]
    bad = [
        envelope(b"\xff", "application/x-www-form-urlencoded"),
        envelope(b"[]", "application/json"),
        {"body": 5, "received_at": "never"},
    ]
    events, origins, rejects = parse_calls(good + bad, "Europe/Amsterdam")
    assert len(events) == 18 and len(origins) == 18 and len(rejects) == 3
    assert {r.reason.split(":")[0] for r in rejects} >= {"form body is not valid UTF-8", "malformed envelope"}


def test_store_is_idempotent_for_events_and_rejects(db: psycopg.Connection, database_url: str) -> None:
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(50))]
    wires.append(envelope(b"not json", "application/json"))
    with store.connect(database_url) as conn:
        first = store.store(conn, *_parsed(wires))
        again = store.store(conn, *_parsed(wires))
    assert (first.stored, first.duplicates, first.rejected) == (50, 0, 1)
    assert (again.stored, again.duplicates) == (0, 50)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 50
    assert db.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 1
    reason, body = db.execute("SELECT reason, body FROM rejected_events").fetchone()
    assert reason.startswith("invalid JSON") and bytes(body) == b"not json"


def _parsed(wires: list[dict]):
    events, origins, rejects = parse_calls(wires, "Europe/Amsterdam")
    return events, rejects, origins


def test_failed_job_is_retried_with_backoff_then_kept(redis_url: str, redis_conn: redis.Redis) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "INGEST_JOB_RETRIES": "1"}, dotenv=False)
    job_id = asyncio.run(_enqueue(settings, [envelope(calls(1)[0][1], "application/x-www-form-urlencoded")]))
    env = ingest_env(redis_url, "postgresql://nobody@127.0.0.1:1/none", INGEST_JOB_RETRIES="1")

    done = run_ingest(["worker", "--burst"], env, timeout=60)
    assert done.returncode == 0, done.stderr[-1000:]
    queue = Queue("copernica", connection=redis_conn)
    assert job_id in ScheduledJobRegistry(queue=queue).get_job_ids()  # waiting out its back-off
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.retries_left == 0 and job.retry_intervals == retry_intervals(1)

    queue.enqueue_job(job)  # its back-off is over: run it again, it fails for good
    ScheduledJobRegistry(queue=queue).remove(job)
    done = run_ingest(["worker", "--burst"], env, timeout=60)
    assert done.returncode == 0
    assert job_id in FailedJobRegistry(queue=queue).get_job_ids()
    assert unpack_calls(Job.fetch(job_id, connection=redis_conn).args[0])[0]["body"] == calls(1)[0][1]


async def _enqueue(settings: Settings, wires: list[dict]) -> str:
    queue = BatchQueue(settings)
    try:
        return await queue.enqueue(wires)
    finally:
        await queue.close()


def test_retry_intervals_grow_and_are_capped() -> None:
    assert retry_intervals(9) == [5, 10, 30, 60, 120, 300, 600, 900, 900]


def test_the_cyclic_gc_is_off_during_a_job_and_back_after(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(jobs, "_store_batch", lambda _calls: seen.append(gc.isenabled()) or {})
    assert gc.isenabled()
    jobs.store_batch([])
    assert seen == [False] and gc.isenabled()
    with pytest.raises(ValueError, match="not a batch of calls"):
        jobs.store_batch(b"garbage")  # refused while unpacking: the GC is back on all the same
    assert gc.isenabled()


@pytest.mark.parametrize("total", [0, 1, 99, 100, 1000, 4999, 5000, 12_345])
def test_chunks_hold_every_call_once_and_shrink_at_the_end(total: int) -> None:
    sizes = list(jobs.chunk_sizes(total))
    assert sum(sizes) == total and all(size > 0 for size in sizes)
    assert all(size <= jobs.CHUNK for size in sizes)
    if total:
        assert sizes[-1] <= jobs.LAST_CHUNK  # PostgreSQL's wait before the commit is a small chunk
        assert sizes == sorted(sizes, reverse=True)
    batch = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(min(total, 1000)))]
    parsed = [origin.body for _events, origins, _ in jobs.parse_chunks(batch, "Europe/Amsterdam") for origin in origins]
    assert parsed == [Envelope.from_wire(call).body for call in batch]


def _queue_batches(settings: Settings, batches: int, size: int) -> list[str]:
    """`batches` queued jobs of `size` distinct calls each, as the receiver queues them."""
    bodies = calls(batches * size)

    async def go() -> list[str]:
        queue = BatchQueue(settings)
        try:
            return [
                await queue.enqueue(
                    [envelope(body, ct, n) for n, (_f, body, ct) in enumerate(bodies[start : start + size], start)]
                )
                for start in range(0, batches * size, size)
            ]
        finally:
            await queue.close()

    return asyncio.run(go())


@pytest.fixture
def worker_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What `jobs` reads, with transactions of 90 calls (with queued jobs of 10 calls: the job's
    own and the 8 borrowed by the first round trip); the worker's connection made afresh."""
    conf = Settings.from_env(
        {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url, "INGEST_WORKER_BATCH": "90"},
        dotenv=False,
    )
    monkeypatch.setattr(jobs, "_settings", conf)
    monkeypatch.setattr(jobs, "_conn", None)
    return conf


def _perform_first(redis_conn: redis.Redis, ids: list[str]) -> Job:
    """Take the first queued job and run it as the worker does (it is RQ's current job)."""
    assert redis_conn.lpop("rq:queue:copernica") == ids[0].encode()
    return Job.fetch(ids[0], connection=redis_conn)


def _left_over(redis_conn: redis.Redis) -> tuple[list[str], list[bytes]]:
    return Queue("copernica", connection=redis_conn).get_job_ids(), redis_conn.keys("ingest:borrowed*")


def test_a_job_goes_on_while_the_queue_holds_more(
    worker_settings: Settings, redis_conn: redis.Redis, db: psycopg.Connection
) -> None:
    ids = _queue_batches(worker_settings, batches=30, size=10)  # 300 calls, transactions of 90
    job = _perform_first(redis_conn, ids)
    result = job.perform()
    assert result == {"calls": 300, "batches": 30, "stored": 300, "duplicates": 0, "rejected": 0}
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 300
    assert _left_over(redis_conn) == ([], [])  # every borrowed batch settled, no lease left
    assert not any(redis_conn.exists(f"rq:job:{job_id}") for job_id in ids[1:])


@pytest.mark.usefixtures("db")
def test_a_job_stops_going_on_after_job_seconds(
    worker_settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "JOB_SECONDS", 0.0)
    ids = _queue_batches(worker_settings, batches=12, size=10)
    result = _perform_first(redis_conn, ids).perform()
    assert result["calls"] == 90 and result["batches"] == 9  # one transaction, then RQ's next job
    assert _left_over(redis_conn) == (ids[9:], [])


def test_a_failed_later_transaction_gives_back_its_batches_and_those_borrowed_ahead(
    worker_settings: Settings, redis_conn: redis.Redis, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _queue_batches(worker_settings, batches=20, size=10)
    real = store.store_chunks
    transactions: list[int] = []

    def second_fails(conn, chunks, meanwhile=None):
        transactions.append(1)
        if len(transactions) == 2:
            chunks = list(chunks)
            meanwhile()  # the third transaction's batches are borrowed, then PostgreSQL fails
            raise psycopg.OperationalError("the server went away")
        return real(conn, chunks, meanwhile)

    monkeypatch.setattr(store, "store_chunks", second_fails)
    job = _perform_first(redis_conn, ids)
    with pytest.raises(psycopg.OperationalError):
        job.perform()
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 90  # the first transaction stays
    assert _left_over(redis_conn) == (ids[9:], [])  # the 2nd and 3rd transactions' batches, in order


def test_a_connection_closed_while_idle_is_replaced_before_the_next_job(
    worker_settings: Settings, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch of primary or a restart ends idle connections (here: pg_terminate_backend, as a
    failover does); the next job reconnects first instead of failing and waiting for its retry."""
    assert worker_settings.database_url
    bodies = calls(20)
    first = [envelope(body, ct, n) for n, (_f, body, ct) in enumerate(bodies[:10])]
    second = [envelope(body, ct, n) for n, (_f, body, ct) in enumerate(bodies[10:], 10)]
    assert jobs.store_batch(first)["stored"] == 10
    old = jobs.connection().info.backend_pid
    assert db.execute("SELECT pg_terminate_backend(%s)", (old,)).fetchone()[0]
    db.commit()
    monkeypatch.setattr(jobs, "_last_used", 0.0)  # it sat idle past IDLE_CHECK_SECONDS
    assert jobs.store_batch(second)["stored"] == 10  # no OperationalError
    assert jobs.connection().info.backend_pid != old
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 20


def test_a_busy_connection_is_not_checked(worker_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs in quick succession take the connection as it is: no extra round trip under load."""
    assert worker_settings.database_url
    conn = jobs.connection()

    def no_check(_conn: psycopg.Connection) -> bool:
        raise AssertionError("a connection used a moment ago was checked")

    monkeypatch.setattr(jobs, "_alive", no_check)
    assert jobs.connection() is conn
