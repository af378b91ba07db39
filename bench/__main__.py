"""`make bench`: the receiver and the drain, measured beside their baselines in the same run.

The machine is shared and noisy, so what counts is the ratio to a baseline measured minutes
apart under the same load generator; the absolute figures are printed beside it. The bare
handler and the project are run `--reps` times per scenario, interleaved. wrk runs on
core 0, the measured process on core 1. The embedded Redis and PostgreSQL are pinned to core 0
too, as if on other machines: the measured process has its core to itself.

    python -m bench [--quick] [--seconds S] [--reps N] [--burst N] [--drain N] [--skip-receivers]
                    [--only receivers|replicas|drain|burst]

Uses BENCH_REDIS_URL / BENCH_DATABASE_URL when set, else starts the embedded servers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from rich.console import Console
from rich.table import Table

from bench import drain, replicas
from bench.loadgen import INSTALL_HINT, LoadResult, have_wrk, pinned, run_wrk, status_mib
from ingest.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from ingest.processes import child_pids, free_port, stop_process, wait_for_port
from workers.storage.schema import apply_migrations

console = Console(width=170)  # wide enough for the tables in a log file or CI output
SERVER_CORE = 1
LOAD_CORE = 0


@contextmanager
def receiver(kind: str, redis_url: str, database_url: str, queue: str, extra_env: dict[str, str] | None = None):
    """Start one receiver pinned to the server core (`extra_env`: settings of its own); yield (url, pid)."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "INGEST_QUEUE": queue,
        "INGEST_LOG_LEVEL": "WARNING",
        "INGEST_PORT": str(port),
        "INGEST_HOST": "127.0.0.1",
        "INGEST_AUTH": "none",
        **(extra_env or {}),
    }
    if kind == "project":
        argv = [sys.executable, "-m", "ingest", "serve"]
    else:
        argv = [sys.executable, "-m", "bench.baselines", kind, str(port), redis_url]
    # A baseline's failures show as non-2xx in the table; their tracebacks would only flood the screen.
    quiet = subprocess.DEVNULL if kind != "project" else None
    proc = subprocess.Popen(pinned(argv, SERVER_CORE), env=env, stderr=quiet)
    try:
        if not wait_for_port(port, proc, timeout=20):
            raise RuntimeError(f"receiver {kind} did not start")
        yield f"http://127.0.0.1:{port}/copernica", proc.pid
    finally:
        stop_process(proc)


@dataclass
class Row:
    receiver: str
    scenario: str
    result: LoadResult
    rss_mib: float
    queued: int | None = None  # calls found in Redis afterwards (project only)
    each_backed: bool = True  # every run's 2xx by its own queued calls (a sum could hide one run)


RECEIVERS = ("bare", "enqueue", "lpush", "project")
# The ratio the targets name is project / bare: both are measured `--reps` times, interleaved,
# and their mean is what the table shows (the machine's speed drifts from minute to minute).
REPEATED = ("bare", "project")


def combined(results: list[LoadResult]) -> LoadResult:
    """Repeated runs of one receiver as one: mean rate and median, the worst p99, every failure."""
    return LoadResult(
        requests=sum(r.requests for r in results),
        seconds=sum(r.seconds for r in results),
        rps=sum(r.rps for r in results) / len(results),
        p50_ms=sum(r.p50_ms for r in results) / len(results),
        p99_ms=max(r.p99_ms for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
    )


def scenarios(quick: bool) -> list[tuple[str, int, bool]]:
    if quick:
        return [("64 keep-alive", 64, True), ("256 keep-alive", 256, True)]
    return [
        ("64 keep-alive", 64, True),
        ("256 keep-alive", 256, True),
        ("64 close", 64, False),
        ("256 close", 256, False),
    ]


def pin_tree(pid: int, core: int) -> None:
    """Pin a server process, its threads and its children (PostgreSQL's background processes;
    later backends inherit it from the postmaster) to one core."""
    for each in [pid, *child_pids(pid)]:
        try:
            tasks = list(Path(f"/proc/{each}/task").iterdir())
        except FileNotFoundError:  # a short-lived child (initdb's, a backend) already gone
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), {core})


def start_pinned(stack: ExitStack, server: EmbeddedValkey | EmbeddedPostgres) -> str:
    """Start an embedded server for the run, on the load core; return its URL."""
    server.start()
    stack.callback(server.stop)
    pin_tree(server.process.pid, LOAD_CORE)
    return server.url


def empty(conn: redis.Redis) -> None:
    """Every measurement starts from the same Redis: empty, with its append-only file compacted
    (else a rewrite of what the runs before wrote may land in the middle of this one)."""
    conn.flushdb()
    drain.compact(conn)


def run_receivers(redis_url: str, database_url: str, seconds: float, quick: bool, reps: int) -> list[Row]:
    conn = redis.Redis.from_url(redis_url)
    rows: list[Row] = []
    for name, connections, keepalive in scenarios(quick):
        measured: dict[str, list[Row]] = {kind: [] for kind in RECEIVERS}
        for kind in [*RECEIVERS, *(kind for _ in range(reps - 1) for kind in REPEATED)]:
            conn.flushdb()
            queue = "bench-project"
            with receiver(kind, redis_url, database_url, queue) as (url, pid):
                run_wrk(url, connections=connections, seconds=1, keepalive=keepalive, core=LOAD_CORE)  # warm-up
                empty(conn)
                result = run_wrk(url, connections=connections, seconds=seconds, keepalive=keepalive, core=LOAD_CORE)
                rss = status_mib(pid, "VmHWM") or float("nan")
            queued = drain.queued_calls(conn, queue) if kind == "project" else None
            measured[kind].append(Row(kind, name, result, rss, queued))
            console.print(
                f"  {name:<15} {kind:<8} {result.rps:>9,.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
                f"non-2xx {result.failures}"
            )
        for kind, runs in measured.items():
            queued = [run.queued for run in runs if run.queued is not None]
            backed = all(
                run.queued >= run.result.requests - run.result.failures for run in runs if run.queued is not None
            )
            rows.append(
                Row(
                    kind,
                    name,
                    combined([run.result for run in runs]),
                    max(run.rss_mib for run in runs),
                    sum(queued) if queued else None,
                    backed,
                )
            )
    conn.flushdb()
    conn.close()
    return rows


def receiver_table(rows: list[Row]) -> Table:
    table = Table(title="Receiver: distinct ~470-byte open events, wrk on core 0, receiver on core 1")
    for column in (
        "scenario",
        "receiver",
        "req/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MiB",
        "non-2xx",
        "× bare",
        "× enqueue",
        "× lpush",
        "2xx backed in Redis",
    ):
        table.add_column(column, justify="right" if column not in ("scenario", "receiver") else "left")
    by = {(r.scenario, r.receiver): r for r in rows}
    for row in rows:
        ratios = []
        for base in ("bare", "enqueue", "lpush"):
            other = by.get((row.scenario, base))
            ratios.append(f"{row.result.rps / other.result.rps:.2f}" if other and other.result.rps else "-")
        backed = "-"
        if row.queued is not None:
            ok = row.result.requests - row.result.failures
            good = row.queued >= ok and row.each_backed
            backed = f"{row.queued:,} ≥ {ok:,} ✓" if good else f"{row.queued:,} vs {ok:,} ✗"
        table.add_row(
            row.scenario,
            row.receiver,
            f"{row.result.rps:,.0f}",
            f"{row.result.p50_ms:.2f}",
            f"{row.result.p99_ms:.2f}",
            f"{row.rss_mib:.0f}",
            str(row.result.failures),
            *ratios,
            backed,
        )
    return table


PARTS = ("receivers", "replicas", "drain", "burst")
REPLICA_SECONDS = 6.0  # per run of the replica-wait rows: they add about 35 s to a full run


def chosen_parts(args: argparse.Namespace) -> set[str]:
    """The parts to measure: `--only` one, else all but those switched off."""
    if args.only:
        return {args.only}
    parts = set(PARTS)
    if args.skip_receivers:
        parts -= {"receivers", "replicas"}
    if not args.drain:
        parts.discard("drain")
    if not args.burst:
        parts.discard("burst")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="keep-alive scenarios only, shorter runs")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per receiver scenario (default 8)")
    parser.add_argument(
        "--reps",
        type=int,
        default=2,
        help="runs of bare and project per scenario, interleaved (default 2; their mean is shown)",
    )
    parser.add_argument("--drain", type=int, default=200_000, help="events for the drain measurement (0 skips it)")
    parser.add_argument("--burst", type=int, default=500_000, help="events in the burst (0 skips it)")
    parser.add_argument("--skip-receivers", action="store_true", help="measure only the drain and the burst")
    parser.add_argument("--only", choices=PARTS, help="measure only this part")
    parser.add_argument(
        "--fsync",
        choices=("always", "everysec"),
        default="always",
        help="the embedded Redis's appendfsync (default always: what the contract needs)",
    )
    args = parser.parse_args(argv)
    parts = chosen_parts(args)
    if not have_wrk() and parts & {"receivers", "replicas", "burst"}:
        console.print(INSTALL_HINT)
        return 2
    if args.quick:
        args.seconds = min(args.seconds, 4.0)
        args.reps = 1
        args.drain = min(args.drain, 100_000)
        args.burst = min(args.burst, 100_000)

    with ExitStack() as stack:
        redis_url = os.environ.get("BENCH_REDIS_URL")
        database_url = os.environ.get("BENCH_DATABASE_URL")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-bench-")))
        if not redis_url:
            redis_url = start_pinned(stack, EmbeddedValkey(tmp / "valkey"))
            with redis.Redis.from_url(redis_url) as conn:
                conn.config_set("appendfsync", args.fsync)
        if not database_url:
            database_url = start_pinned(stack, EmbeddedPostgres(tmp / "postgres"))
        apply_migrations(database_url)
        with redis.Redis.from_url(redis_url) as conn:
            fsync = conn.config_get("appendfsync").get("appendfsync", "?")
        console.print(f"redis {redis_url} (appendfsync {fsync})  postgres {database_url}  cores {os.cpu_count()}")

        if "receivers" in parts:
            console.rule("receiver")
            rows = run_receivers(redis_url, database_url, args.seconds, args.quick, max(1, args.reps))
            console.print(receiver_table(rows))
        if "replicas" in parts:
            console.rule("replica wait")
            console.print(
                replicas.replicas_table(
                    replicas.measure_replicas(
                        redis_url,
                        database_url,
                        tmp / "valkey-replica",
                        seconds=min(args.seconds, REPLICA_SECONDS),
                        reps=max(1, args.reps),
                        receiver_ctx=receiver,
                        pin=lambda pid: pin_tree(pid, LOAD_CORE),
                        load_core=LOAD_CORE,
                        empty=empty,
                        log=console.print,
                    )
                )
            )
        if "drain" in parts:
            console.rule("drain")
            console.print(drain.drain_table(drain.measure_drain(redis_url, database_url, args.drain, core=SERVER_CORE)))
            console.print(drain.erased_check_cost(core=SERVER_CORE))
        if "burst" in parts:
            console.rule("burst")
            console.print(
                drain.burst_table(
                    drain.measure_burst(
                        redis_url,
                        database_url,
                        args.burst,
                        receiver_ctx=receiver,
                        load_core=LOAD_CORE,
                        worker_core=SERVER_CORE,
                    )
                )
            )
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("TRUNCATE events, rejected_events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
