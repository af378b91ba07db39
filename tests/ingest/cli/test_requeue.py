"""`ingest requeue-failed`: a job that failed for good goes back to the queue and is stored."""

from __future__ import annotations

import psycopg
import pytest
import redis
from rq import Queue
from rq.registry import FailedJobRegistry

from ingest.queueing import JOB_FUNCTION
from tests.payloads import calls
from tests.processes import ingest_env, run_ingest
from tests.workers.test_jobs import envelope

DEAD_DATABASE = "postgresql://nobody@127.0.0.1:1/none"


def failed_jobs(redis_url: str, redis_conn: redis.Redis, batches: list[list[dict]]) -> list[str]:
    """Queue the batches as store jobs without retries and let a worker with PostgreSQL down fail them."""
    queue = Queue("copernica", connection=redis_conn)
    ids = [queue.enqueue(JOB_FUNCTION, batch).id for batch in batches]
    done = run_ingest(
        ["worker", "--burst"], ingest_env(redis_url, DEAD_DATABASE, INGEST_WORKER_METRICS_PORT="0"), timeout=60
    )
    assert done.returncode == 0, done.stderr[-1000:]
    assert sorted(FailedJobRegistry(queue=queue).get_job_ids()) == sorted(ids)
    assert queue.count == 0
    return ids


def test_requeue_one_failed_job_then_it_is_stored(
    redis_url: str, database_url: str, redis_conn: redis.Redis, db: psycopg.Connection
) -> None:
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(5))]
    first, second = failed_jobs(redis_url, redis_conn, [wires[:3], wires[3:]])
    env = ingest_env(redis_url, database_url, INGEST_WORKER_METRICS_PORT="0")

    done = run_ingest(["requeue-failed", "--id", first], env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "requeued 1 failed job on queue 'copernica'"
    queue = Queue("copernica", connection=redis_conn)
    assert queue.get_job_ids() == [first]
    assert FailedJobRegistry(queue=queue).get_job_ids() == [second]

    done = run_ingest(["worker", "--burst"], env, timeout=60)
    assert done.returncode == 0, done.stderr[-1000:]
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    assert FailedJobRegistry(queue=queue).get_job_ids() == [second]


def test_requeue_all(redis_url: str, database_url: str, redis_conn: redis.Redis, db: psycopg.Connection) -> None:
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(4))]
    ids = failed_jobs(redis_url, redis_conn, [wires[:2], wires[2:]])
    env = ingest_env(redis_url, database_url, INGEST_WORKER_METRICS_PORT="0")

    done = run_ingest(["requeue-failed", "--all"], env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "requeued 2 failed jobs on queue 'copernica'"
    queue = Queue("copernica", connection=redis_conn)
    assert sorted(queue.get_job_ids()) == sorted(ids)
    assert FailedJobRegistry(queue=queue).count == 0

    again = run_ingest(["requeue-failed", "--all"], env, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "requeued 0 failed jobs on queue 'copernica'"
    done = run_ingest(["worker", "--burst"], env, timeout=60)
    assert done.returncode == 0
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 4


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "give --id ID or --all"),
        (["--id", "x", "--all"], 2, "not both"),
        (["--id", "no-such-job"], 1, "no failed job with id 'no-such-job'"),
    ],
)
@pytest.mark.usefixtures("redis_conn")
def test_bad_use_is_one_line(redis_url: str, database_url: str, args: list[str], code: int, message: str) -> None:
    done = run_ingest(["requeue-failed", *args], ingest_env(redis_url, database_url), timeout=60)
    assert done.returncode == code
    assert message in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stdout == ""


def test_a_queued_job_is_not_a_failed_one(redis_url: str, database_url: str, redis_conn: redis.Redis) -> None:
    queued = Queue("copernica", connection=redis_conn).enqueue(JOB_FUNCTION, []).id
    done = run_ingest(["requeue-failed", "--id", queued], ingest_env(redis_url, database_url), timeout=60)
    assert done.returncode == 1 and f"no failed job with id {queued!r}" in done.stderr
    assert Queue("copernica", connection=redis_conn).get_job_ids() == [queued]
