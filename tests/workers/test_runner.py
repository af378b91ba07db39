"""The store worker against RQ: it exits promptly when told (burst or SIGTERM), its heartbeat keeps a
long job alive, and a dead worker's job and borrowed batches come back. Real Redis, real RQ,
real `ingest worker` processes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from packaging.version import Version
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry

from common.settings import Settings
from tests.clients import enqueue
from tests.conftest import ROOT
from tests.payloads import queued_call
from tests.processes import ingest_env
from workers import coalesce, runner

pytestmark = pytest.mark.rq_contract


EXIT_WITHIN = 2.0  # seconds from "nothing left to do" to the process's exit
IDLE_WORKERS = 8


def call(n: int) -> dict:
    return queued_call(n, prefix="r")


def worker_process(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "worker", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def poll(predicate, timeout: float, interval: float = 0.01) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


def started(registry: StartedJobRegistry, job_id: str) -> bool:
    """In RQ's started registry (rq 2 lists its entries as `<job id>:<execution id>`)."""
    return any(entry.split(":")[0] == job_id for entry in registry.get_job_ids(cleanup=False))


def test_burst_workers_exit_once_the_queue_is_empty(
    settings: Settings, redis_conn: redis.Redis, db: psycopg.Connection
) -> None:
    """RQ's pub/sub thread waited up to 60 s at exit, about one run in five: 20 runs in a row
    each exit within 2 s of their last job leaving Redis."""
    env = ingest_env(settings.redis_url, settings.database_url, INGEST_LOG_LEVEL="INFO")  # as run: it shifts the race
    lingered = []
    for run in range(20):
        [job_id] = enqueue(settings, [call(run * 50 + i) for i in range(50)])
        proc = worker_process(env, "--burst")
        try:
            poll(
                lambda j=job_id: not redis_conn.exists(f"rq:job:{j}") and not redis_conn.llen("rq:queue:copernica"),
                timeout=30,
            )
            emptied = time.monotonic()
            proc.wait(timeout=90)
            lingered.append(time.monotonic() - emptied)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, proc.stderr.read()
        proc.stderr.close()
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 20 * 50
    assert max(lingered) < EXIT_WITHIN, [f"{s:.2f}" for s in lingered]


def test_idle_workers_exit_promptly_on_sigterm(settings: Settings, redis_conn: redis.Redis) -> None:
    """A warm shutdown of an idle worker (no job: blocked on the queue) is prompt. Eight at once,
    as the hang came about one time in five."""
    env = ingest_env(settings.redis_url, settings.database_url, INGEST_LOG_LEVEL="INFO")
    procs = [worker_process(env, "--name", f"idle-{n}") for n in range(IDLE_WORKERS)]
    try:
        # Subscribed to their command channels (the thread whose stop used to hang), then idle: at
        # their blocking wait on the queue, for a while.
        poll(lambda: len(redis_conn.pubsub_channels("rq:pubsub:idle-*")) == IDLE_WORKERS, timeout=30, interval=0.05)
        poll(
            lambda: all(redis_conn.hget(f"rq:worker:idle-{n}", "state") == b"idle" for n in range(IDLE_WORKERS)),
            timeout=30,
            interval=0.05,
        )
        time.sleep(1)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        waits = []
        for proc in procs:
            proc.wait(timeout=90)
            waits.append(time.monotonic() - signalled)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * IDLE_WORKERS, [proc.stderr.read() for proc in procs]
    for proc in procs:
        proc.stderr.close()
    assert max(waits) < EXIT_WITHIN, [f"{s:.2f}" for s in waits]
    assert Worker.all(connection=redis_conn) == []  # each registered its death


@pytest.fixture
def in_process_worker(settings: Settings) -> Iterator[runner.StoreWorker]:
    """A StoreWorker for this process; the signal handlers RQ installs are put back after."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    worker = runner.make_worker(settings)
    yield worker
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("beating", [True, False], ids=["heartbeat", "no-heartbeat"])
def test_the_heartbeat_keeps_a_long_job_alive(
    in_process_worker: runner.StoreWorker, redis_conn: redis.Redis, beating: bool
) -> None:
    """A job running past `abandoned_after` stays in RQ's started registry while its worker
    beats; without the beat (the control) RQ would call it abandoned once that TTL lapsed."""
    worker = in_process_worker
    worker.abandoned_after = 2  # RQ keeps whole seconds: a 1 s TTL may lapse at once
    worker.heartbeat_interval = 0.2 if beating else 60
    queue = Queue("copernica", connection=redis_conn)
    job = queue.enqueue("time.sleep", 2.5)
    registry = StartedJobRegistry(queue=queue)
    seen: dict[str, bool] = {"started": False, "expired": False}
    done = threading.Event()

    def watch() -> None:  # what another worker's maintenance would find meanwhile
        while not done.wait(0.05):
            seen["started"] |= started(registry, job.id)
            seen["expired"] |= bool(registry.get_expired_job_ids())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        worker.work(burst=True)
    finally:
        done.set()
        watcher.join()
    assert seen["started"]
    assert seen["expired"] is not beating
    assert Job.fetch(job.id, connection=redis_conn).get_status() == JobStatus.FINISHED


def test_a_dead_workers_job_and_borrowed_batches_come_back(
    settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-job: once its heartbeat and its lease lapse, the next maintenance
    round (any worker's) retries its job (RQ's back-off) and requeues the batches it borrowed."""
    monkeypatch.setattr(coalesce, "LEASE_SECONDS", 2)
    queue = Queue("copernica", connection=redis_conn)
    job = queue.enqueue("time.sleep", 60, retry=Retry(max=2, interval=[30]))
    script = (
        "from common.settings import Settings; from workers import runner; "
        "runner.StoreWorker.abandoned_after = 2; runner.StoreWorker.heartbeat_interval = 0.2; "
        "runner.make_worker(Settings.from_env(dotenv=False)).work(burst=True)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=ingest_env(settings.redis_url, settings.database_url)
    )
    registry = StartedJobRegistry(queue=queue)
    try:
        poll(lambda: started(registry, job.id), timeout=30, interval=0.05)
        batches = enqueue(settings, [call(1)], [call(2)])
        held = coalesce.borrow(redis_conn, "copernica", job.id, want=10)  # as its store job would
        assert held.job_ids == batches
    finally:
        proc.kill()
        proc.wait()
    killed = time.monotonic()

    runner.make_worker(settings).run_maintenance_tasks()  # too early: the job still counts as alive
    assert started(registry, job.id) and queue.get_job_ids() == []

    time.sleep(max(0.0, killed + 2.3 - time.monotonic()))
    runner.make_worker(settings).run_maintenance_tasks()
    assert not started(registry, job.id)
    job.refresh()
    assert job.get_status() == JobStatus.SCHEDULED and job.retries_left == 1
    assert job.id in ScheduledJobRegistry(queue=queue).get_job_ids()
    assert queue.get_job_ids() == batches and redis_conn.smembers(coalesce.REGISTRY) == set()


def test_the_bounds_tested_are_the_ones_pyproject_allows() -> None:
    """`make test-rq-bounds` installs the lowest rq and redis-py that pyproject allows."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    low = dict(re.findall(r"'(\w+)(?:\[\w+\])?==([\d.]+)'", re.search(r"^RQ_LOW\s*:?=(.+)$", makefile, re.M).group(1)))
    for name in ("rq", "redis"):
        floor = re.search(rf'"{name}(?:\[\w+\])?>=([\d.]+),<\d+"', pyproject).group(1)
        assert Version(low[name]) == Version(floor), (name, floor, low)
