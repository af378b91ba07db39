"""The drain (queue -> PostgreSQL) beside its baselines, and the burst end to end.

- project:   `ingest worker --burst` on jobs of 50 calls (what the receiver queues under a burst),
             coalescing them into transactions of INGEST_WORKER_BATCH calls.
- raw COPY:  the same rows, already parsed, through the textbook COPY into a temporary table +
             INSERT … ON CONFLICT, on one connection (written here, not the project's store).
- per-event: one RQ job per event, stored job by job: the shape a naive receiver produces.
- erased:    the project's worker again with ERASED people on the erased list (`ingest erase`),
             none of them in the calls: every row is hashed and looked up. Wall time and the
             worker's CPU time; `erased_check_cost` measures the check's CPU alone.
             Runs interleaved with the project's (two each, the variant first and last), compared
             by mean time.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from rich.table import Table

from bench.loadgen import pinned, run_wrk, status_mib
from common.envelope import wire
from common.settings import Settings
from ingest.queueing import BatchQueue
from workers.jobs import parse_calls
from workers.storage.copy_text import STORED_COLUMNS, copy_data
from workers.storage.reports import events_inserted

AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"


def make_calls(count: int, offset: int = 0) -> list[dict]:
    """Distinct open events shaped like the load generator's (~470 bytes, form-encoded)."""
    from urllib.parse import urlencode

    calls = []
    now = time.time()
    for n in range(offset, offset + count):
        body = urlencode(
            {
                "id": f"m{n:015d}",
                "type": "open",
                "timestamp": "2026-11-26 12:00:01",
                "time": 1795694401 + n % 86400,
                "recipient": f"user{n % 1_000_000}@example.com",
                "ip": f"192.0.2.{n % 250 + 1}",
                "useragent": AGENT,
                "referer": "https://mail.example.com/inbox?folder=news",
                "tags": "newsletter;weekly;november",
                "profile": n % 1_000_000,
                "mailing": 4242,
                "database": 12,
                "extra": "x" * 60,
            }
        ).encode()
        calls.append(
            wire(
                body,
                "application/x-www-form-urlencoded",
                now + n * 1e-5,
                "127.0.0.1",
                "POST",
                "/copernica",
                {"content-type": "application/x-www-form-urlencoded", "x-copernica-id": "account-1234"},
            )
        )
    return calls


def fill_queue(redis_url: str, queue: str, calls: list[dict], batch: int) -> None:
    settings = Settings.from_env({"REDIS_URL": redis_url, "INGEST_QUEUE": queue}, dotenv=False)
    batch_queue = BatchQueue(settings)
    conn = redis.Redis.from_url(redis_url)
    for start in range(0, len(calls), batch):
        batch_queue.write_sync(conn, calls[start : start + batch])
    conn.close()


_DESCRIPTION = re.compile(rb"store_(?:packed|batch)\((\d+) calls\)")


def queued_calls(conn: redis.Redis, queue: str) -> int:
    """Calls held by the queue's jobs (each job's description says how many it carries)."""
    ids = conn.lrange(f"rq:queue:{queue}", 0, -1)
    total = 0
    for start in range(0, len(ids), 1000):
        with conn.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 1000]:
                pipe.hget(b"rq:job:" + job_id, "description")
            for description in pipe.execute():
                match = _DESCRIPTION.search(description or b"")
                total += int(match[1]) if match else 0
    return total


@dataclass
class WorkerRun:
    seconds: float  # from the first stored row to the worker's exit
    rss_mib: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the worker's user + system time: steadier than wall time on a shared machine


def run_worker(redis_url: str, database_url: str, queue: str, core: int | None, **extra: str) -> WorkerRun:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "INGEST_QUEUE": queue,
        "INGEST_LOG_LEVEL": "WARNING",
        **extra,
    }
    samples: list[float] = []
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = events_inserted(conn)
        proc = subprocess.Popen(pinned([sys.executable, "-m", "ingest", "worker", "--burst"], core), env=env)
        first = None
        while proc.poll() is None:
            if first is None and events_inserted(conn) > before:
                first = time.perf_counter()
            rss = status_mib(proc.pid)
            if rss is not None:
                samples.append(rss)
            time.sleep(0.05)
        end = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return WorkerRun(end - (first or end), samples, cpu)


def count_events(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def truncate(database_url: str) -> None:
    """Empty tables, checkpointed: a checkpoint of the rows of the run before does not land in
    the middle of the next one."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE events, rejected_events")
        conn.execute("CHECKPOINT")


def compact(conn: redis.Redis) -> None:
    """Redis's append-only file compacted, so that a rewrite of what was written before (the
    runs before, filling the queue) does not land in the middle of the measurement."""
    with contextlib.suppress(redis.ResponseError):  # one already running: wait for it below
        conn.bgrewriteaof()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = conn.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.05)


@dataclass
class DrainResult:
    name: str
    events: int
    seconds: float
    peak_rss_mib: float | None = None
    of_project: bool = False  # a variant of the project: its ratio is its rate ÷ the project's
    cpu_seconds: float | None = None  # the worker's CPU time (project and its variant)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def raw_copy(database_url: str, calls: list[dict], batch: int, core: int | None) -> DrainResult:
    """The textbook bulk upsert of the already-parsed rows, batch by batch, on one connection:
    COPY into a temporary table, then INSERT … SELECT … ON CONFLICT DO NOTHING (written here,
    not through the project's store, so the ratio stays honest however the project inserts).
    Only the COPY text comes from the project (`copy_text.copy_data`, made inside the timing)."""
    events, _origins, _rejects = parse_calls(calls, "Europe/Amsterdam")
    columns = ", ".join(STORED_COLUMNS)
    old = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        with psycopg.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE raw_stage ON COMMIT DELETE ROWS AS SELECT {columns} FROM events WITH NO DATA"
            )
            conn.commit()
            started = time.perf_counter()
            for start in range(0, len(events), batch):
                with cur.copy(f"COPY raw_stage ({columns}) FROM STDIN") as copy:
                    copy.write(copy_data(events[start : start + batch]))
                cur.execute(f"INSERT INTO events ({columns}) SELECT {columns} FROM raw_stage ON CONFLICT DO NOTHING")
                conn.commit()
            seconds = time.perf_counter() - started
    finally:
        os.sched_setaffinity(0, old)
    return DrainResult("raw COPY + ON CONFLICT", len(events), seconds)


ERASED = 10_000  # erased addresses, and as many erased profiles
ERASURE_KEY = "bench-erasure-key-0123456789"


def erase_people(database_url: str, count: int) -> None:
    """`count` addresses and `count` profiles on the erased list, none of them in `make_calls`."""
    from workers.storage.erased import EMAIL, PROFILE, key_check, keyed_hash

    key = ERASURE_KEY.encode()
    rows = [(EMAIL, keyed_hash(key, EMAIL, f"erased{n}@example.org"), key_check(key)) for n in range(count)]
    rows += [(PROFILE, keyed_hash(key, PROFILE, str(5_000_000 + n)), key_check(key)) for n in range(count)]
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE erased_selectors")
        with cur.copy("COPY erased_selectors (kind, selector_hash, key_check) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def forget_people(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE erased_selectors")


def measure_drain(
    redis_url: str, database_url: str, count: int, *, core: int | None, batch: int = 50, per_event: int = 3000
) -> list[DrainResult]:
    """`batch`: calls per queued job, about what the receiver writes under a burst."""
    conn = redis.Redis.from_url(redis_url)
    calls = make_calls(count)
    results = []

    runs: dict[bool, list[WorkerRun]] = {False: [], True: []}
    stored = 0
    for erasing in (True, False, False, True):  # interleaved (the machine's speed drifts), cold start on the variant
        truncate(database_url)
        if erasing:
            erase_people(database_url, ERASED)
        conn.flushdb()
        fill_queue(redis_url, "bench-drain", calls, batch)
        compact(conn)
        env = {"INGEST_ERASURE_KEY": ERASURE_KEY} if erasing else {}
        runs[erasing].append(run_worker(redis_url, database_url, "bench-drain", core, **env))
        stored = count_events(database_url)
        forget_people(database_url)
        if stored != count:
            raise RuntimeError(f"drain stored {stored} of {count} events")
    for erasing, name in (
        (False, f"project worker (queued jobs of {batch} calls)"),
        (True, f"the same, {ERASED:,} erased addresses + {ERASED:,} profiles"),
    ):
        seconds = sum(r.seconds for r in runs[erasing]) / len(runs[erasing])
        cpu = sum(r.cpu_seconds for r in runs[erasing]) / len(runs[erasing])
        rss = max(max(r.rss_mib or [0]) for r in runs[erasing])
        results.append(DrainResult(name, stored, seconds, rss, of_project=erasing, cpu_seconds=cpu))

    truncate(database_url)
    results.append(raw_copy(database_url, calls, Settings().worker_batch, core))

    truncate(database_url)
    conn.flushdb()
    fill_queue(redis_url, "bench-drain", calls[:per_event], 1)
    compact(conn)
    run = run_worker(redis_url, database_url, "bench-drain", core, INGEST_WORKER_BATCH="0")
    results.append(
        DrainResult("one RQ job per event", count_events(database_url), run.seconds, max(run.rss_mib or [0]))
    )
    truncate(database_url)
    conn.flushdb()
    conn.close()
    return results


def erased_check_cost(count: int = 50_000, reps: int = 5, *, core: int | None = None) -> str:
    """The erased list's check alone, in this process pinned like the worker: CPU per event of
    `Guard.keep` against ERASED addresses and profiles (none of them in the calls, so every row
    is hashed), beside the parsing and COPY text the worker does for the same events. Steadier
    than the drain's wall time on a shared machine; the best of `reps` of each."""
    from workers.storage.erased import EMAIL, PROFILE, ErasedList, keyed_hash, mac_key

    key = ERASURE_KEY.encode()
    emails = frozenset(bytes.fromhex(keyed_hash(key, EMAIL, f"erased{n}@example.org")) for n in range(ERASED))
    profiles = frozenset(bytes.fromhex(keyed_hash(key, PROFILE, str(5_000_000 + n))) for n in range(ERASED))
    erased = ErasedList(1, emails, profiles, mac_key(key))
    calls = make_calls(count)
    old = os.sched_getaffinity(0)
    if core is not None:
        os.sched_setaffinity(0, {core})
    try:
        work, check = _check_times(calls, erased, reps)
    finally:
        os.sched_setaffinity(0, old)
    return (
        f"erased check: {check / count * 1e6:.2f} µs of CPU per event against {ERASED:,} addresses + {ERASED:,} "
        f"profiles; parsing + COPY text {work / count * 1e6:.1f} µs: {check / work * 100:.1f} %"
    )


def _check_times(calls: list[dict], erased: Any, reps: int) -> tuple[float, float]:
    from workers.storage.erased import Guard

    work, check = float("inf"), float("inf")
    for _ in range(reps):
        started = time.process_time()
        events, origins, rejects = parse_calls(calls, "Europe/Amsterdam")
        copy_data(events)
        work = min(work, time.process_time() - started)
        guard = Guard()
        guard.list = erased
        guard.ready.set()
        started = time.process_time()
        kept = guard.keep(events, origins, rejects)[0]
        check = min(check, time.process_time() - started)
        assert len(kept) == len(calls)
    return work, check


def drain_table(results: list[DrainResult]) -> Table:
    table = Table(title="Drain: queue -> PostgreSQL with deduplication, worker on core 1")
    for column in ("drain", "events", "seconds", "events/s", "peak RSS MiB", "project ×"):
        table.add_column(column, justify="left" if column == "drain" else "right")
    project = results[0]
    for result in results:
        if result.of_project and result.cpu_seconds and project.cpu_seconds:
            # wall time drifts with the machine's load; the worker's CPU time is the steadier figure
            ratio = f"{result.rate / project.rate:.3f} of it; CPU {result.cpu_seconds / project.cpu_seconds:.3f} ×"
        else:
            ratio = f"{project.rate / result.rate:.2f}" if result is not project and result.rate else "-"
        rss = f"{result.peak_rss_mib:.0f}" if result.peak_rss_mib else "-"
        table.add_row(result.name, f"{result.events:,}", f"{result.seconds:.2f}", f"{result.rate:,.0f}", rss, ratio)
    return table


@dataclass
class BurstResult:
    posted: int
    non_2xx: int
    post_seconds: float
    rps: float
    p99_ms: float
    queued: int
    stored: int
    drain_seconds: float
    rss_first_mib: float
    rss_last_mib: float
    rss_peak_mib: float
    redis_bytes_per_call: float


def measure_burst(
    redis_url: str,
    database_url: str,
    count: int,
    *,
    receiver_ctx,
    load_core: int,
    worker_core: int,
    connections: int = 64,
) -> BurstResult:
    """Post `count` distinct events as fast as wrk can, then drain them all with one worker."""
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    truncate(database_url)
    queue = "bench-burst"
    memory_before = int(conn.info("memory")["used_memory"])
    with receiver_ctx("project", redis_url, database_url, queue) as (url, _pid):
        load = run_wrk(url, connections=connections, seconds=600, core=load_core, per_thread_limit=count)
    queued = queued_calls(conn, queue)
    memory_per_call = (int(conn.info("memory")["used_memory"]) - memory_before) / max(queued, 1)
    run = run_worker(redis_url, database_url, queue, worker_core)
    stored = count_events(database_url)
    rss = run.rss_mib or [0.0]
    warm = rss[len(rss) // 10 :] or rss
    conn.close()
    return BurstResult(
        load.requests,
        load.failures,
        load.seconds,
        load.rps,
        load.p99_ms,
        queued,
        stored,
        run.seconds,
        warm[0],
        warm[-1],
        max(rss),
        memory_per_call,
    )


def burst_table(result: BurstResult) -> Table:
    table = Table(title="Burst: distinct events posted as fast as wrk can, then drained by one worker")
    table.add_column("measure")
    table.add_column("value", justify="right")
    ok = "✓" if result.non_2xx == 0 and result.stored == result.queued >= result.posted - result.non_2xx else "✗"
    for name, value in (
        ("answered (wrk)", f"{result.posted:,}"),
        ("non-2xx / socket errors", f"{result.non_2xx}"),
        ("post rate", f"{result.rps:,.0f} req/s over {result.post_seconds:.1f} s"),
        ("p99 latency", f"{result.p99_ms:.2f} ms"),
        ("calls in Redis", f"{result.queued:,}"),
        ("Redis memory per queued call", f"{result.redis_bytes_per_call:,.0f} bytes"),
        ("rows stored", f"{result.stored:,}"),
        ("drain", f"{result.drain_seconds:.1f} s ({result.stored / max(result.drain_seconds, 1e-9):,.0f} events/s)"),
        (
            "worker RSS after warm-up: first / last / peak",
            f"{result.rss_first_mib:.0f} / {result.rss_last_mib:.0f} / {result.rss_peak_mib:.0f} MiB",
        ),
        ("events in = rows out, no non-2xx", ok),
    ):
        table.add_row(name, value)
    return table
