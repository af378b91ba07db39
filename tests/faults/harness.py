"""Shared parts of the fault-injection tests: private servers that a test may stop or kill,
a bounded stream of distinct events, and the checks every fault test makes: each event
answered 2xx is stored exactly once, every other got a 4xx/5xx (or no answer at all, e.g. a
refused connection). The `ingest` processes come from tests.processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg
import redis

from ingest.devstack.embedded import EmbeddedPostgres, EmbeddedSentinel, EmbeddedValkey
from tests.payloads import BASE_TIME, FORM, webhook_body
from tests.processes import ingest_env
from workers.storage.schema import apply_migrations


def body(tag: str, n: int) -> bytes:
    """Event n of a stream: an open whose message id is `message_id(tag, n)`."""
    return webhook_body(
        "open",
        id=message_id(tag, n),
        time=BASE_TIME + n,
        recipient=f"u{n}@example.com",
        ip=f"192.0.2.{n % 250 + 1}",
        useragent="Mozilla/5.0",
        tags="fault;test",
    )


def message_id(tag: str, n: int) -> str:
    return f"{tag}{n:08d}"


@dataclass
class Servers:
    valkey: EmbeddedValkey
    postgres: EmbeddedPostgres

    @property
    def env(self) -> dict[str, str]:
        return ingest_env(self.valkey.url, self.postgres.url)


@contextlib.contextmanager
def servers(tmp: Path, appendfsync: str = "always") -> Iterator[Servers]:
    valkey = EmbeddedValkey(tmp / "valkey", appendfsync=appendfsync)
    postgres = EmbeddedPostgres(tmp / "postgres")
    valkey.start()
    postgres.start()
    try:
        apply_migrations(postgres.url)
        yield Servers(valkey, postgres)
    finally:
        valkey.stop()
        postgres.stop()


@contextlib.contextmanager
def replica(data_dir: Path, primary: EmbeddedValkey) -> Iterator[EmbeddedValkey]:
    """A Valkey replicating `primary`, in sync with it when yielded."""
    server = EmbeddedValkey(data_dir, replica_of=("127.0.0.1", primary.port))
    server.start()
    try:
        wait_for(lambda: replication(server)["master_link_status"] == "up", timeout=20, interval=0.1)
        yield server
    finally:
        server.stop()


MASTER = "ingest"  # the name the Sentinels of the fault tests monitor


def role(server: EmbeddedValkey) -> str:
    with redis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=1) as conn:
        return str(conn.execute_command("ROLE")[0], "ascii") if conn else ""


@contextlib.contextmanager
def sentinels(tmp: Path, primary: EmbeddedValkey) -> Iterator[list[EmbeddedSentinel]]:
    """Three Sentinels (quorum 2) watching `primary`; each knows the replica and its two peers
    when yielded (else a failover could not be authorised)."""
    started = [
        EmbeddedSentinel(tmp / f"sentinel-{n}", ("127.0.0.1", primary.port), master_name=MASTER) for n in range(3)
    ]
    try:
        for sentinel in started:
            sentinel.start()
        for sentinel in started:
            with redis.Redis(port=sentinel.port, decode_responses=True) as conn:
                wait_for(
                    lambda conn=conn: (
                        len(conn.sentinel_slaves(MASTER)) == 1 and len(conn.sentinel_sentinels(MASTER)) == 2
                    ),
                    timeout=20,
                    interval=0.1,
                )
        yield started
    finally:
        for sentinel in started:
            sentinel.stop()


@dataclass
class SentinelStack:
    postgres: EmbeddedPostgres
    primary: EmbeddedValkey
    standby: EmbeddedValkey  # the replica, promoted by the Sentinels when the primary dies
    env: dict[str, str]  # for `ingest` processes: through the Sentinels, with `extra` settings


def port_outside_ephemeral_range() -> int:
    """A free port below the kernel's range for outgoing connections: a server restarted at its
    old address must find it free, and a client's connection (the stream's, say) could
    otherwise take that very number as its own local port in the meantime."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@contextlib.contextmanager
def sentinel_stack(tmp: Path, **extra: str) -> Iterator[SentinelStack]:
    """PostgreSQL (migrated), a Valkey primary, its replica and three Sentinels watching them.
    The primary's port is outside the ephemeral range, so a test can restart it there."""
    postgres = EmbeddedPostgres(tmp / "postgres")
    primary = EmbeddedValkey(tmp / "primary", port=port_outside_ephemeral_range())
    postgres.start()
    primary.start()
    try:
        apply_migrations(postgres.url)
        with replica(tmp / "replica", primary) as standby, sentinels(tmp, primary) as watching:
            env = ingest_env(
                "redis:///0",
                postgres.url,
                REDIS_SENTINELS=",".join(s.address for s in watching),
                REDIS_SENTINEL_MASTER=MASTER,
                **extra,
            )
            yield SentinelStack(postgres, primary, standby, env)
    finally:
        primary.stop()
        postgres.stop()


def watch_promotion(replica_server: EmbeddedValkey, timeout: float) -> float:
    """Polls the replica until it is the primary; the send time of the last poll that still saw
    it a replica (before it, no server was primary: the old one was dead)."""
    last_replica = time.monotonic()
    deadline = last_replica + timeout
    while time.monotonic() < deadline:
        sent = time.monotonic()
        if role(replica_server) == "master":
            return last_replica
        last_replica = sent
        time.sleep(0.05)
    raise AssertionError(f"Sentinel did not promote the replica within {timeout:.0f} s")


def replication(server: EmbeddedValkey) -> dict[str, object]:
    with redis.Redis.from_url(server.url) as conn:
        return dict(conn.info("replication"))


@contextlib.contextmanager
def frozen(server: EmbeddedValkey) -> Iterator[None]:
    """The server SIGSTOPped: connected, but answering nothing (a hung machine), until SIGCONT."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


@dataclass
class Stream:
    """Posts `count` distinct events from a background thread; `statuses[n]` is the answer to
    event n (0 when none came: connection refused or reset)."""

    url: str
    count: int
    tag: str
    concurrency: int = 16
    pause: float = 0.0  # seconds between one worker's posts (to stretch a stream over time)
    statuses: dict[int, int] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)  # time.monotonic() of each answer
    thread: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> Stream:
        """End the stream early: no event is posted after this; those in flight finish."""
        self.stopping.set()
        return self.join()

    def join(self, timeout: float = 300) -> Stream:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream did not finish in time"
        return self

    @property
    def sent(self) -> int:
        return len(self.statuses)

    async def _run(self) -> None:
        next_n = iter(range(self.count))
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def worker() -> None:
                for n in next_n:
                    if self.stopping.is_set():
                        return
                    try:
                        async with session.post(
                            self.url, data=body(self.tag, n), headers={"Content-Type": FORM}
                        ) as resp:
                            await resp.read()
                            self.statuses[n] = resp.status
                    except (TimeoutError, aiohttp.ClientError, OSError):
                        self.statuses[n] = 0
                    self.answered_at[n] = time.monotonic()
                    if self.pause:
                        await asyncio.sleep(self.pause)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def accepted(self) -> set[str]:
        return {message_id(self.tag, n) for n, status in self.statuses.items() if 200 <= status < 300}

    def check_answers(self) -> None:
        """Every event got a 2xx, a 4xx/5xx, or no answer: never anything else."""
        assert self.sent == self.count or (self.stopping.is_set() and 0 < self.sent < self.count)
        assert set(self.statuses) == set(range(self.sent)) or self.stopping.is_set()
        odd = {s for s in self.statuses.values() if not (s == 0 or 200 <= s < 600)}
        assert not odd, odd


def stored_ids(database_url: str, tag: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT message_id FROM events WHERE message_id LIKE %s", (tag + "%",)).fetchall()
    return [r[0] for r in rows]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> float:
    """Seconds until `predicate()` held; AssertionError after `timeout`."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not reached within {timeout:.0f} s"
        time.sleep(interval)
    return time.monotonic() - started


def assert_stored_exactly_once(database_url: str, stream: Stream) -> None:
    ids = stored_ids(database_url, stream.tag)
    assert len(ids) == len(set(ids)), "an event was stored twice"
    missing = stream.accepted() - set(ids)
    assert not missing, f"{len(missing)} acknowledged events not stored, e.g. {sorted(missing)[:3]}"


def drained(primary: EmbeddedValkey, database_url: str, tag: str) -> None:
    """Waits until the queue is empty, nothing is borrowed or running, and the stored count has
    stopped moving (a job requeued by the worker, or a lease returned, may still come)."""
    last = -1
    with redis.Redis(port=primary.port) as conn:

        def settled() -> bool:
            nonlocal last
            count = len(stored_ids(database_url, tag))
            busy = conn.llen("rq:queue:copernica") or conn.scard("ingest:borrowed")
            steady, last = count == last, count
            return steady and not busy

        wait_for(settled, timeout=120, interval=3.0)
