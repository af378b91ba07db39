"""Borrowing queued batches: taken atomically, settled after the store, given back on failure
or when the borrower died. Against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
from rq import Queue

from common.settings import Settings
from ingest.queueing import BatchQueue
from tests.payloads import queued_call
from workers import coalesce

pytestmark = pytest.mark.rq_contract


def call(n: int) -> dict:
    return queued_call(n)


def enqueue_batches(redis_url: str, sizes: list[int]) -> list[str]:
    settings = Settings.from_env({"REDIS_URL": redis_url}, dotenv=False)

    async def go() -> list[str]:
        queue = BatchQueue(settings)
        ids, n = [], 0
        for size in sizes:
            ids.append(await queue.enqueue([call(n + i) for i in range(size)]))
            n += size
        await queue.close()
        return ids

    return asyncio.run(go())


def queued(conn: redis.Redis) -> list[str]:
    return Queue("copernica", connection=conn).get_job_ids()


def test_borrow_then_settle(redis_url: str, redis_conn: redis.Redis) -> None:
    ids = enqueue_batches(redis_url, [3] * 40)
    held = coalesce.borrow(redis_conn, "copernica", "owner1", want=30)
    assert held.job_ids == ids[:10]  # 8 jobs, then the 2 still wanted: stops once it holds enough
    assert [c["body"] for c in held.calls] == [call(n)["body"] for n in range(30)]
    assert queued(redis_conn) == ids[10:]
    coalesce.settle(redis_conn, held)
    assert not redis_conn.exists(f"rq:job:{ids[0]}", f"rq:job:{ids[1]}", held.list_key, held.lease_key)
    assert redis_conn.smembers(coalesce.REGISTRY) == set()


def test_failure_gives_back_in_order(redis_url: str, redis_conn: redis.Redis) -> None:
    ids = enqueue_batches(redis_url, [2] * 20)
    with pytest.raises(RuntimeError), coalesce.borrowing(redis_conn, "copernica", "owner2", want=100) as held:
        assert len(held.job_ids) == 20 and queued(redis_conn) == []
        raise RuntimeError("postgres is down")
    assert queued(redis_conn) == ids
    assert all(redis_conn.exists(f"rq:job:{i}") for i in ids)
    assert redis_conn.smembers(coalesce.REGISTRY) == set()


def test_abandoned_batches_return_when_the_lease_ends(redis_url: str, redis_conn: redis.Redis) -> None:
    ids = enqueue_batches(redis_url, [1, 1, 1])
    held = coalesce.borrow(redis_conn, "copernica", "dead-worker", want=10)
    assert queued(redis_conn) == [] and len(held.job_ids) == 3
    assert coalesce.return_abandoned(redis_conn) == 0  # lease still running: not abandoned
    redis_conn.delete(held.lease_key)  # the lease ran out
    assert coalesce.return_abandoned(redis_conn) == 3
    assert queued(redis_conn) == ids
    assert coalesce.return_abandoned(redis_conn) == 0


def test_jobs_of_the_earlier_format_are_borrowed_too(redis_url: str, redis_conn: redis.Redis) -> None:
    """A job queued before the packed format (`store_batch` with a plain list) is stored alike."""
    ids = enqueue_batches(redis_url, [1])
    earlier = Queue("copernica", connection=redis_conn).enqueue("workers.jobs.store_batch", [call(99)])
    held = coalesce.borrow(redis_conn, "copernica", "owner4", want=10)
    assert held.job_ids == [ids[0], earlier.id]
    assert held.calls == [call(0), call(99)]
    coalesce.settle(redis_conn, held)


def test_foreign_jobs_stay_queued(redis_url: str, redis_conn: redis.Redis) -> None:
    ids = enqueue_batches(redis_url, [1])
    other = Queue("copernica", connection=redis_conn).enqueue("builtins.print", "hello")
    ids += enqueue_batches(redis_url, [1])
    held = coalesce.borrow(redis_conn, "copernica", "owner3", want=10)
    assert held.job_ids == [ids[0], ids[1]]
    assert queued(redis_conn) == [other.id]
    coalesce.settle(redis_conn, held)


def test_a_job_deleted_while_queued_is_settled_with_nothing_to_store(redis_url: str, redis_conn: redis.Redis) -> None:
    ids = enqueue_batches(redis_url, [2, 2, 2])
    redis_conn.delete(f"rq:job:{ids[1]}")  # an operator removed it; its id is still queued
    held = coalesce.borrow(redis_conn, "copernica", "owner5", want=10)
    assert held.job_ids == ids
    assert held.calls == [call(0), call(1), call(4), call(5)]
    coalesce.settle(redis_conn, held)
    assert queued(redis_conn) == [] and not redis_conn.exists(held.list_key)


def _script_calls(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def test_a_known_job_size_aims_the_first_round_trip(redis_url: str, redis_conn: redis.Redis) -> None:
    ids = enqueue_batches(redis_url, [3] * 60)
    redis_conn.config_resetstat()
    held = coalesce.borrow(redis_conn, "copernica", "owner6", want=60)  # 8 jobs, then the 12 still wanted
    assert held.job_ids == ids[:20] and _script_calls(redis_conn) == 2
    redis_conn.config_resetstat()
    aimed = coalesce.borrow(redis_conn, "copernica", "owner7", want=60, per_job=3)
    assert aimed.job_ids == ids[20:40] and _script_calls(redis_conn) == 1
    coalesce.settle(redis_conn, held)
    coalesce.settle(redis_conn, aimed)


def test_a_run_again_never_takes_over_a_dead_runs_list(redis_url: str, redis_conn: redis.Redis) -> None:
    """A job retried after its worker was killed has the same id, so it borrows under the same
    owner: the dead run's borrowed jobs must not be settled (deleted unstored) by the new run."""
    ids = enqueue_batches(redis_url, [3] * 6)
    dead = coalesce.borrow(redis_conn, "copernica", "job1", want=9, per_job=3)  # the killed run: never stored
    again = coalesce.borrow(redis_conn, "copernica", "job1", want=9, per_job=3)  # the same job, run again
    assert dead.job_ids == ids[:3] and again.job_ids == ids[3:]
    coalesce.settle(redis_conn, again)
    assert all(redis_conn.exists(f"rq:job:{i}") for i in ids[:3])
    redis_conn.delete(dead.lease_key)  # the dead run's lease runs out
    assert coalesce.return_abandoned(redis_conn) == 3
    assert queued(redis_conn) == ids[:3]
