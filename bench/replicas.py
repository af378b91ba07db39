"""The receiver with INGEST_REDIS_MIN_REPLICAS=1 (each batch `WAIT`s for a local replica) beside
the same receiver with 0, in the same run, at 64 keep-alive connections, interleaved.

The replica is an embedded Valkey (`appendfsync always`, like the primary) replicating the
bench's Redis, pinned with the other servers to the load core. After each run, every 2xx must
be backed by a call in the primary, and with a replica wait by one in the replica too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis
from rich.table import Table

from bench import drain
from bench.loadgen import LoadResult, run_wrk
from ingest.devstack.embedded import EmbeddedValkey

CONNECTIONS = 64
QUEUE = "bench-replicas"
REPLICA_TIMEOUT_MS = 500

ReceiverCtx = Callable[..., AbstractContextManager[tuple[str, int]]]


@dataclass
class ReplicaRow:
    min_replicas: int
    results: list[LoadResult]
    busy: list[tuple[float, float]]  # per run: the receiver's CPU and the load core's, in % of a core
    backed: bool  # every run's 2xx backed by queued calls (in the replica too when it waited)

    @property
    def rps(self) -> float:
        return sum(r.rps for r in self.results) / len(self.results)

    @property
    def p50_ms(self) -> float:
        return sum(r.p50_ms for r in self.results) / len(self.results)

    @property
    def p99_ms(self) -> float:
        return max(r.p99_ms for r in self.results)

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.results)

    @property
    def receiver_cpu(self) -> float:
        return sum(b[0] for b in self.busy) / len(self.busy)

    @property
    def load_core_cpu(self) -> float:
        return sum(b[1] for b in self.busy) / len(self.busy)


def _process_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_seconds(core: int) -> tuple[float, float]:
    """Busy and total seconds of one core so far (/proc/stat)."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                ticks = [int(v) for v in line.split()[1:]]
                idle = ticks[3] + ticks[4]
                tck = os.sysconf("SC_CLK_TCK")
                return (sum(ticks) - idle) / tck, sum(ticks) / tck
    return 0.0, 0.0


def _synced(primary: redis.Redis, replica: redis.Redis, timeout: float = 30) -> None:
    """Wait until the replica has everything the primary wrote (its link up, offsets equal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = replica.info("replication")
        if info.get("master_link_status") == "up" and primary.execute_command("WAIT", 1, 100) >= 1:
            return
        time.sleep(0.1)
    raise RuntimeError("the bench replica did not sync")


def measure_replicas(
    redis_url: str,
    database_url: str,
    data_dir: Path,
    *,
    seconds: float,
    reps: int,
    receiver_ctx: ReceiverCtx,
    pin: Callable[[int], None],
    load_core: int,
    empty: Callable[[redis.Redis], None],
    log: Callable[[str], None],
) -> list[ReplicaRow]:
    """`reps` runs of each receiver (0 and 1 replicas), interleaved; a replica started for them."""
    parts = urlsplit(redis_url)
    replica = EmbeddedValkey(data_dir, replica_of=(parts.hostname or "127.0.0.1", parts.port or 6379))
    replica.start()
    try:
        assert replica.process is not None
        pin(replica.process.pid)
        primary = redis.Redis.from_url(redis_url)
        on_replica = redis.Redis.from_url(replica.url)
        rows = {n: ReplicaRow(n, [], [], True) for n in (0, 1)}
        for _ in range(reps):
            for n in (0, 1):
                env = {"INGEST_REDIS_MIN_REPLICAS": str(n), "INGEST_REDIS_REPLICA_TIMEOUT": str(REPLICA_TIMEOUT_MS)}
                primary.flushdb()
                with receiver_ctx("project", redis_url, database_url, QUEUE, extra_env=env) as (url, pid):
                    run_wrk(url, connections=CONNECTIONS, seconds=1, core=load_core)  # warm-up
                    empty(primary)
                    _synced(primary, on_replica)
                    cpu, (core_busy, core_all) = _process_seconds(pid), _core_seconds(load_core)
                    started = time.monotonic()
                    result = run_wrk(url, connections=CONNECTIONS, seconds=seconds, core=load_core)
                    wall = time.monotonic() - started
                    cpu = _process_seconds(pid) - cpu
                    busy_now, all_now = _core_seconds(load_core)
                    core_busy, core_all = busy_now - core_busy, all_now - core_all
                rows[n].busy.append((100 * cpu / wall, 100 * core_busy / core_all if core_all else float("nan")))
                ok = result.requests - result.failures
                backed = drain.queued_calls(primary, QUEUE) >= ok
                if n:
                    backed = backed and drain.queued_calls(on_replica, QUEUE) >= ok
                rows[n].results.append(result)
                rows[n].backed = rows[n].backed and backed
                log(
                    f"  min replicas {n}  {result.rps:>9,.0f} req/s  p50 {result.p50_ms:5.2f} ms  "
                    f"p99 {result.p99_ms:6.2f} ms  non-2xx {result.failures}  "
                    f"CPU receiver {rows[n].busy[-1][0]:.0f} %, load core {rows[n].busy[-1][1]:.0f} %"
                )
        primary.flushdb()
        primary.close()
        on_replica.close()
        return [rows[0], rows[1]]
    finally:
        replica.stop()


def replicas_table(rows: list[ReplicaRow]) -> Table:
    table = Table(title=f"Receiver with a replica wait (INGEST_REDIS_MIN_REPLICAS), {CONNECTIONS} keep-alive")
    for column in (
        "INGEST_REDIS_MIN_REPLICAS",
        "req/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "× 0 replicas",
        "receiver CPU %",
        "load core busy %",
        "2xx backed",
    ):
        table.add_column(column, justify="right")
    base = rows[0].rps
    for row in rows:
        table.add_row(
            str(row.min_replicas),
            f"{row.rps:,.0f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            str(row.failures),
            f"{row.rps / base:.2f}" if base else "-",
            f"{row.receiver_cpu:.0f}",
            f"{row.load_core_cpu:.0f}",
            "✓" if row.backed else "✗",
        )
    return table
