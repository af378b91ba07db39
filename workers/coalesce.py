"""Coalescing: a running store job borrows the batches queued behind it and stores them all in
one transaction.

Why: the receiver keeps its latency low by writing small batches (tens of calls) as RQ jobs,
and every RQ job costs the worker some twenty Redis writes of bookkeeping, each fsynced with
`appendfsync always`. Storing job by job would spend most of the drain on that bookkeeping.
So a job that starts takes the next queued jobs of its queue too (up to
`INGEST_WORKER_BATCH` calls in all) and stores their calls with its own; while the queue
holds more, it goes on with further transactions, each borrowing its own (`workers.jobs`).

What RQ must keep doing for this (its queue is a list of job ids taken from the left, a
stored job with `result_ttl=0` is simply deleted) is in `common.rqcontract`.

Nothing is lost on the way. Borrowing is atomic (a Lua script moves the job ids from the queue
into a borrowed list and sets a lease on it):
- after the transaction commits, the borrowed jobs are deleted (as RQ deletes a job that
  succeeded with `result_ttl=0`);
- when storing fails, they are pushed back to the front of the queue at once;
- when the worker dies, the lease runs out and `return_abandoned` (run by every worker at
  start and at each maintenance) puts them back on the queue. Storing is idempotent, so a
  batch stored twice is still one row per event.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from common.envelope import unpack_calls
from common.rqcontract.jobs import STORE_FUNCTIONS, job_key, queue_key, queued_calls

log = logging.getLogger("workers.coalesce")

REGISTRY = "ingest:borrowed"  # set of borrowed lists, so abandoned ones can be found
LEASE_SECONDS = 30  # a borrowed list unrenewed this long belongs to a dead worker
FIRST_ROUND = 8  # jobs borrowed by the first round trip; later rounds aim at what is still wanted
MAX_ROUND = 256  # jobs moved by one script call (each is a write Redis fsyncs: fewer is faster)

_BORROW = """
local ids = {}
for i = 1, tonumber(ARGV[1]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  redis.call('RPUSH', KEYS[2], id)
  ids[#ids + 1] = id
end
redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[2]))
if #ids > 0 then redis.call('SADD', KEYS[4], KEYS[2]) end
return ids
"""

_GIVE_BACK = """
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #ids, 1, -1 do redis.call('LPUSH', KEYS[1], ids[i]) end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], KEYS[2])
return #ids
"""


@dataclass
class Borrowed:
    queue_key: str
    list_key: str
    job_ids: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lease_key(self) -> str:
        return self.list_key + ":lease"


def borrow(conn: redis.Redis, queue: str, owner: str, want: int, per_job: int = 0) -> Borrowed:
    """Take queued store jobs of `queue` until about `want` calls are held (or none is left).
    `per_job`: how many calls the jobs queued lately held, when known, to aim the first round
    trip at `want` too.

    The borrowed list's name is the owner's with a token of its own: a job run again after its
    worker died has the same id, and borrowing into the dead run's list (still leased, or not
    yet returned) would make its jobs part of this run's list, deleted unstored by `settle`."""
    held = Borrowed(queue_key(queue), f"{REGISTRY}:{queue}:{owner}.{secrets.token_hex(6)}")
    script = conn.register_script(_BORROW)
    count = min(MAX_ROUND, -(-want // per_job)) if per_job > 0 else FIRST_ROUND
    while len(held.calls) < want:
        ids = [
            i.decode()
            for i in script(keys=[held.queue_key, held.list_key, held.lease_key, REGISTRY], args=[count, LEASE_SECONDS])
        ]
        if not ids:
            break
        foreign: list[str] = []
        for job_id, call in zip(ids, queued_calls(conn, ids), strict=True):
            if call is None:  # deleted meanwhile (e.g. by an operator): nothing to store
                held.job_ids.append(job_id)
                continue
            if call.func_name not in STORE_FUNCTIONS:
                foreign.append(job_id)
                continue
            held.job_ids.append(job_id)
            held.calls.extend(unpack_calls(call.args[0]))
        if foreign:  # not ours to run: back to the front of the queue, in order
            with conn.pipeline(transaction=True) as pipe:
                for job_id in foreign:
                    pipe.lrem(held.list_key, 1, job_id)
                for job_id in reversed(foreign):
                    pipe.lpush(held.queue_key, job_id)
                pipe.execute()
        if len(ids) < count:
            break
        average = max(1, len(held.calls) // max(1, len(held.job_ids)))
        count = min(MAX_ROUND, max(1, -(-(want - len(held.calls)) // average)))
    return held


def settle(conn: redis.Redis, held: Borrowed) -> None:
    """The calls are stored: the borrowed jobs are done and leave Redis."""
    with conn.pipeline(transaction=True) as pipe:
        for job_id in held.job_ids:
            pipe.delete(job_key(job_id))
        pipe.delete(held.list_key, held.lease_key)
        pipe.srem(REGISTRY, held.list_key)
        pipe.execute()


def give_back(conn: redis.Redis, queue_key: str, list_key: str) -> int:
    """Put borrowed jobs back at the front of their queue; return how many."""
    return int(conn.register_script(_GIVE_BACK)(keys=[queue_key, list_key, list_key + ":lease", REGISTRY]))


@contextmanager
def borrowing(
    conn: redis.Redis | None, queue: str, owner: str, want: int, held: Borrowed | None = None
) -> Iterator[Borrowed]:
    """Borrow for the duration of a store (or take over `held`, borrowed ahead): settled on
    success, given back on any failure. No `conn` (a store outside an RQ job): nothing is borrowed."""
    if held is None:
        held = borrow(conn, queue, owner, want) if want > 0 and conn is not None else Borrowed(queue_key(queue), "")
    try:
        yield held
    except BaseException:
        if held.list_key and conn is not None:
            returned = give_back(conn, held.queue_key, held.list_key)
            log.warning("store failed: %d borrowed jobs returned to the queue", returned)
        raise
    if held.list_key and conn is not None:
        settle(conn, held)


def return_abandoned(conn: redis.Redis) -> int:
    """Give back every borrowed list whose lease ran out (its worker died); return jobs moved."""
    moved = 0
    for raw in conn.smembers(REGISTRY):
        list_key = raw.decode()  # type: ignore[union-attr]  # redis-py types replies bytes | str
        if conn.exists(list_key + ":lease"):
            continue
        _prefix, queue, _owner = list_key.rsplit(":", 2)
        count = give_back(conn, queue_key(queue), list_key)
        if count:
            log.warning("returned %d jobs abandoned in %s to queue %s", count, list_key, queue)
        moved += count
    return moved
