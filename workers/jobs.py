"""RQ entry points. The receiver enqueues `workers.jobs.store_packed` by name.

A job carries a batch of raw calls (envelopes). Each call is parsed into events or kept as
rejected with the reason; the batch is stored in one transaction, with the batches queued
behind it (`_store_batch`), on a connection that lives as long as the worker process. A
failure that is not the data's fault (PostgreSQL down) raises, so RQ retries the job with
back-off and, at the end, keeps it in its failed registry.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import redis
from rq import get_current_job

from common.envelope import Envelope, unpack_calls
from common.settings import Settings
from workers import coalesce, metrics
from workers.events import machine
from workers.events.model import Event, from_webhook
from workers.events.parsing import Unparseable, parse_body
from workers.storage import store

log = logging.getLogger("workers.jobs")

_settings: Settings | None = None
_conn: psycopg.Connection | None = None
_last_used = 0.0  # time.monotonic() when a job last took the connection
# A connection idle this long is checked (one empty query) before a job uses it: a switch to
# another PostgreSQL (DATABASE_URL with several hosts) or a restart closes idle connections
# unnoticed, and without the check the next job would fail on it and wait for its retry.
IDLE_CHECK_SECONDS = 5.0


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
        machine.configure(_settings.machine_networks)
    return _settings


def connection() -> psycopg.Connection:
    """The worker's long-lived connection, reopened after it broke or, when it sat idle, once
    it turns out closed at the server's end; with several hosts in DATABASE_URL the new one is
    made to whichever is the primary now (`target_session_attrs=read-write`)."""
    global _conn, _last_used
    if _conn is not None and time.monotonic() - _last_used >= IDLE_CHECK_SECONDS and not _alive(_conn):
        log.warning("the database connection was closed while idle: reconnecting")
        _conn.close()
    if _conn is None or _conn.closed or _conn.broken:
        _conn = store.connect(settings().required("database_url"))
    _last_used = time.monotonic()
    return _conn


def _alive(conn: psycopg.Connection) -> bool:
    """One empty query outside any transaction: whether the server still answers on `conn`."""
    if conn.closed or conn.broken:
        return False
    try:
        conn.autocommit = True  # no BEGIN for the check; the job's work stays transactional
        try:
            conn.execute("")
        finally:
            if not conn.broken:
                conn.autocommit = False
    except psycopg.Error:
        return False
    return True


def parse_calls(calls: list[dict[str, Any]], tz: str) -> tuple[list[Event], list[Envelope], list[store.Rejected]]:
    """Every call ends as events or as a reject: nothing is dropped here."""
    events: list[Event] = []
    origins: list[Envelope] = []
    rejects: list[store.Rejected] = []
    for wire in calls:
        try:
            envelope = Envelope.from_wire(wire)
        except (TypeError, ValueError, AttributeError) as exc:
            envelope = Envelope(body=repr(wire).encode(), content_type="", received_at=0.0)
            rejects.append(store.Rejected(envelope, f"malformed envelope: {exc}"))
            continue
        try:
            fields = parse_body(envelope.content_type, envelope.body)
            event = from_webhook(fields, envelope, tz)
        except Unparseable as exc:
            rejects.append(store.Rejected(envelope, str(exc)))
            continue
        except Exception as exc:  # a parser bug must not lose the call
            log.exception("unexpected error parsing a call")
            rejects.append(store.Rejected(envelope, f"parser error: {type(exc).__name__}: {exc}"))
            continue
        events.append(event)
        origins.append(envelope)
    return events, origins, rejects


CHUNK = 1000  # calls parsed while PostgreSQL stores the previous chunk
LAST_CHUNK = 100  # the chunks shrink towards this at the end of a batch


def chunk_sizes(total: int) -> Iterator[int]:
    """CHUNK calls at a time, then halving. PostgreSQL stores a chunk while the next one is
    parsed, so when parsing ends, what it has still to store before the commit is the last
    chunk: with a whole CHUNK that wait was a tenth of the drain."""
    left = total
    while left > 0:
        size = min(CHUNK, max(LAST_CHUNK, (left + 1) // 2), left)
        yield size
        left -= size


def parse_chunks(calls: list[dict[str, Any]], tz: str) -> Iterator[store.Chunk]:
    start = 0
    for size in chunk_sizes(len(calls)):
        events, origins, rejects = parse_calls(calls[start : start + size], tz)
        start += size
        yield store.Chunk(events, origins, rejects)


def store_batch(batch: bytes | list[dict[str, Any]]) -> dict[str, int]:
    """RQ job: parse and store one batch of raw webhook calls (packed by common.envelope), with
    the batches queued behind it (see workers.coalesce) up to INGEST_WORKER_BATCH calls, in one
    transaction."""
    with store.cyclic_gc_off():  # unpacking and borrowing too: thousands of objects, no cycles
        return _store_batch(unpack_calls(batch))


def store_packed(batch: bytes) -> dict[str, int]:
    """RQ job of a batch packed as one zstd frame (common.rqcontract.jobs.JOB_FUNCTION): `store_batch`
    under a name of its own, which workers from before the format do not have."""
    return store_batch(batch)


JOB_SECONDS = 5.0  # a job goes on with the next transaction while the queue is full, this long


def _store_batch(calls: list[dict[str, Any]]) -> dict[str, int]:
    """The job's calls and the batches queued behind it (borrowed: see workers.coalesce), up to
    INGEST_WORKER_BATCH calls in one transaction. While the queue holds that many more, the job
    goes on with another transaction, for up to JOB_SECONDS, and borrows its batches while
    PostgreSQL commits the one before. Job by job, RQ's bookkeeping (a dozen Redis writes) and
    the wait for each commit took a sixth of the drain."""
    conf = settings()
    job = get_current_job()
    redis_conn, queue, owner = (job.connection, job.origin, job.id) if job is not None else (None, "", "")
    deadline = time.monotonic() + JOB_SECONDS
    totals = {"calls": 0, "batches": 1, "stored": 0, "duplicates": 0, "rejected": 0}
    held: coalesce.Borrowed | None = None  # borrowed ahead for the next transaction
    number = 0
    while True:
        number += 1
        want = conf.worker_batch - len(calls) if queue else 0
        ahead: list[coalesce.Borrowed] = []
        recorder = metrics.StoreRecorder()  # served on INGEST_WORKER_METRICS_PORT
        with (
            recorder,
            coalesce.borrowing(
                redis_conn, queue, owner if number == 1 else f"{owner}-{number - 1}", want, held
            ) as held,
        ):
            recorder.borrowed = len(held.job_ids)
            every_call = calls + held.calls if held.calls else calls
            try:
                result = _store_calls(
                    every_call,
                    recorder,
                    functools.partial(
                        _borrow_ahead, redis_conn, queue, f"{owner}-{number}", held, want, deadline, ahead
                    ),
                )
            except BaseException:
                for taken in ahead:  # the next transaction's batches go back too
                    assert redis_conn is not None  # only a job borrows ahead
                    recorder.borrowed += coalesce.give_back(redis_conn, taken.queue_key, taken.list_key)
                raise
        recorder.stored(result, len(every_call))
        log.info(
            "%d calls (%d borrowed batches): %d stored, %d duplicates, %d rejected, %d of erased people left out",
            len(every_call),
            len(held.job_ids),
            result.stored,
            result.duplicates,
            result.rejected,
            result.erased,
        )
        totals["calls"] += len(every_call)
        totals["batches"] += len(held.job_ids)
        totals["stored"] += result.stored
        totals["duplicates"] += result.duplicates
        totals["rejected"] += result.rejected
        if not ahead:
            return totals
        held, calls = ahead[0], []
        if not held.job_ids:  # nothing was left to borrow
            assert redis_conn is not None  # only a job borrows ahead
            coalesce.settle(redis_conn, held)
            return totals


def _borrow_ahead(
    conn: redis.Redis | None,
    queue: str,
    owner: str,
    filled: coalesce.Borrowed,
    want: int,
    deadline: float,
    ahead: list[coalesce.Borrowed],
) -> None:
    """While PostgreSQL commits a transaction that took all it wanted (the queue holds more),
    borrow the next one's batches into `ahead`, unless the job has run long enough."""
    if conn is None or want <= 0 or len(filled.calls) < want or time.monotonic() >= deadline:
        return
    try:
        per_job = len(filled.calls) // max(1, len(filled.job_ids))
        ahead.append(coalesce.borrow(conn, queue, owner, settings().worker_batch, per_job))
    except redis.RedisError as exc:  # what it took returns to the queue when its lease ends
        log.warning("could not borrow the next batches: %s", exc)


def _store_calls(
    calls: list[dict[str, Any]], recorder: metrics.StoreRecorder, meanwhile: Callable[[], object]
) -> store.StoreResult:
    conn = connection()
    try:
        return store.store_chunks(
            conn, recorder.tally.chunks(parse_chunks(calls, settings().copernica_timezone)), meanwhile
        )
    except psycopg.Error:
        if not conn.closed:
            conn.close()
        raise
