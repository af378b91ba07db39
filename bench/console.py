"""How fast the console's pages answer with many events stored.

    python -m bench.console [--events 1000000] [--data-dir DIR] [--repeat 5]

1. Loads N events through the real store path (`workers.jobs.parse_calls` + `store.store`, one
   transaction per 5,000 calls, as a worker stores them): mailings of 5,000 recipients each,
   spread over the last 120 days (a `sent` and a `delivered` per message, carrying the mailing
   id; 0-3 opens and up to one click, half of them without the mailing id so that they are
   found through the `sent` event as `mailing_stats` does; 2 % failures); recipients drawn from
   200,000 addresses; 500 rejected calls. Then VACUUM ANALYZE, as autovacuum would.
2. Fills 24 hours of console samples (one every 10 s) into Redis.
3. Starts `ingest console` (no users: loopback) and times every page: one request to warm up,
   then `--repeat` more; prints the median and the slowest of those.

With `--data-dir` the embedded servers keep their data there, and a rerun with the same
`--events` skips the load. Uses BENCH_REDIS_URL / BENCH_DATABASE_URL when set (their data
is wiped), else embedded servers.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import orjson
import psycopg
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common.envelope import wire
from console import samples
from ingest.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from ingest.processes import free_port, stop_process, wait_for_port
from workers.jobs import parse_calls
from workers.storage import partitions, store
from workers.storage.schema import apply_migrations

RECIPIENTS_PER_MAILING = 5000
ADDRESSES = 200_000
DAYS = 120
CHUNK = 5000
FORM = "application/x-www-form-urlencoded"
err = Console(stderr=True)


def message_calls(rng: random.Random, mailing: int, n: int, sent_at: float) -> list[bytes]:
    """The webhook bodies of one message of `mailing`: sent, delivered, opens, a click, a failure."""
    message = f"m{mailing}-{n}"
    recipient = f"user{rng.randrange(ADDRESSES)}@example.com"
    base = {"id": message, "recipient": recipient}
    t = int(sent_at) + n // 50
    bodies = [
        {"type": "attempt", **base, "time": t, "mailing": mailing},
        {"type": "delivery", **base, "time": t + 2, "mailing": mailing},
    ]
    if rng.random() < 0.02:
        failure = {"action": "failed", "state": "rcpt", "code": "550", "extended": "5.1.1"}
        bodies.append(
            {"type": "failure", **base, "time": t + 3, "mailing": mailing, **failure, "description": "user unknown"}
        )
    for k in range(rng.choice((0, 0, 1, 1, 2, 3))):
        open_ = {"type": "open", **base, "time": t + 600 + rng.randrange(3 * 86400) + k, "ip": f"192.0.2.{k + 1}"}
        if rng.random() < 0.5:
            open_["mailing"] = mailing
        open_["useragent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"
        bodies.append(open_)
    if rng.random() < 0.15:
        bodies.append(
            {
                "type": "click",
                **base,
                "time": t + 900 + rng.randrange(86400),
                "ip": "192.0.2.9",
                "url": f"https://example.com/offer?m={mailing}",
            }
        )
    return [urlencode(b).encode() for b in bodies]


def calls(count: int, seed: int = 7) -> Iterator[dict]:
    """About `count` webhook calls of mailings spread over the last DAYS days."""
    rng = random.Random(seed)
    per_mailing = RECIPIENTS_PER_MAILING * 3.3  # events a mailing brings, about
    mailings = max(1, math.ceil(count / per_mailing))
    now = time.time()
    made = 0
    for m in range(mailings):
        sent_at = now - DAYS * 86400 + (m + 0.5) * (DAYS * 86400 - 4 * 86400) / mailings
        for n in range(RECIPIENTS_PER_MAILING):
            for body in message_calls(rng, 1000 + m, n, sent_at):
                yield wire(body, FORM, now, "127.0.0.1", "POST", "/copernica", {"x-copernica-id": "account-1"})
                made += 1
                if made >= count:
                    return


def load(database_url: str, count: int) -> None:
    months: set[date] = set()
    day = datetime.now(UTC) - timedelta(days=DAYS + 1)
    while day < datetime.now(UTC) + timedelta(days=40):
        months.add(partitions.month_of(day))
        day += timedelta(days=27)
    with store.connect(database_url) as conn:
        conn.autocommit = True
        partitions.create_months(conn, months, "10s")
        conn.autocommit = False
        chunk: list[dict] = []
        with Progress(console=err, transient=False) as progress:
            task = progress.add_task("storing events", total=count)
            for call in calls(count):
                chunk.append(call)
                if len(chunk) == CHUNK:
                    events, origins, rejects = parse_calls(chunk, "Europe/Amsterdam")
                    store.store(conn, events, rejects, origins)
                    progress.advance(task, len(chunk))
                    chunk = []
            if chunk:
                events, origins, rejects = parse_calls(chunk, "Europe/Amsterdam")
                store.store(conn, events, rejects, origins)
                progress.advance(task, len(chunk))
        bad = [
            wire(b"\xff broken %d" % n, FORM, time.time() - n, "127.0.0.1", "POST", "/copernica", {})
            for n in range(500)
        ]
        events, origins, rejects = parse_calls(bad, "Europe/Amsterdam")
        store.store(conn, events, rejects, origins)
    with psycopg.connect(database_url, autocommit=True) as conn:
        err.print("VACUUM ANALYZE ...")
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE rejected_events")


def fill_samples(conn: redis.Redis) -> None:
    conn.delete(samples.SAMPLES_KEY)
    now = time.time()
    keep = samples.KEEP_SECONDS // 10
    with conn.pipeline(transaction=False) as pipe:
        for n in range(keep, 0, -1):
            t = now - n * 10
            rec = {
                "t": t,
                "q": n % 50,
                "age": n % 7,
                "started": 1,
                "failed": 0,
                "ins": n * 300,
                "acc": n * 310,
                "u503": n // 100,
                "refused": {"token": n // 50},
                "rej1h": 3,
                "types1h": {"opened": 9000},
                "errors": [],
            }
            pipe.lpush(samples.SAMPLES_KEY, orjson.dumps(rec))
        pipe.execute()


def targets(database_url: str) -> dict[str, str]:
    """The pages to time, with real values to look for."""
    with psycopg.connect(database_url) as conn:
        key, message, recipient, occurred = conn.execute(
            "SELECT event_key, message_id, recipient, occurred_at FROM events WHERE event_type = 'opened'"
            " ORDER BY occurred_at DESC LIMIT 1 OFFSET 1000"
        ).fetchone()
        # the last but one: the last mailing may be cut short by --events
        mailing = conn.execute("SELECT max(mailing_id) FROM events WHERE mailing_id IS NOT NULL").fetchone()[0] - 1
        rejected = conn.execute("SELECT min(id) FROM rejected_events").fetchone()[0]
    hour = occurred.replace(minute=0, second=0, microsecond=0)
    since, until = hour.strftime("%Y-%m-%dT%H:%M"), (hour + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    return {
        "overview (24 h of samples)": "/",
        "mailings of 90 days, page 1": "/mailings",
        f"mailing {mailing}": f"/mailings/{mailing}",
        "search: recipient": "/search?" + urlencode({"recipient": recipient}),
        "search: message id": "/search?" + urlencode({"message_id": message}),
        "search: event_key": "/search?" + urlencode({"event_key": key.hex}),  # a uuid: as the console shows it
        "search: mailing (newest 50)": f"/search?mailing_id={mailing}",
        "search: one hour": "/search?" + urlencode({"since": since, "until": until}),
        "search: type + hour": "/search?" + urlencode({"event_type": "clicked", "since": since, "until": until}),
        "event page": f"/events/{key.hex}",
        "rejected calls": "/rejected",
        "rejected call": f"/rejected/{rejected}",
        "failed jobs": "/failed",
    }


def time_pages(base: str, pages: dict[str, str], repeat: int) -> list[tuple[str, float, float, int]]:
    rows = []
    for name, path in pages.items():
        times = []
        size = 0
        for n in range(repeat + 1):
            started = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=120) as resp:
                body = resp.read()
                size = len(body)
                assert resp.status == 200, (path, resp.status)
            if n:  # the first warms the caches
                times.append((time.perf_counter() - started) * 1000)
            if path.startswith("/mailings/"):
                assert b'id="figures"' in body, path
        rows.append((name, statistics.median(times), max(times), size))
        err.print(f"{name}: {statistics.median(times):.1f} ms")
    return rows


def servers(stack: ExitStack, data_dir: Path) -> tuple[str, str]:
    redis_url, database_url = os.environ.get("BENCH_REDIS_URL"), os.environ.get("BENCH_DATABASE_URL")
    if redis_url is None:
        valkey = EmbeddedValkey(data_dir / "valkey", free_port())
        valkey.start()
        stack.callback(valkey.stop)
        redis_url = valkey.url
    if database_url is None:
        postgres = EmbeddedPostgres(data_dir / "postgres", free_port())
        postgres.start()
        stack.callback(postgres.stop)
        database_url = postgres.url
    return redis_url, database_url


def loaded(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]  # once, before the timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to store (default 1,000,000)")
    parser.add_argument("--data-dir", type=Path, help="keep the embedded servers' data here (a rerun skips the load)")
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page (default 5)")
    args = parser.parse_args()
    with ExitStack() as stack:
        data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-console-")))
        data_dir.mkdir(parents=True, exist_ok=True)
        redis_url, database_url = servers(stack, data_dir)
        apply_migrations(database_url)
        marker = data_dir / "loaded"
        if not (marker.exists() and marker.read_text() == str(args.events)):
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("TRUNCATE events, rejected_events RESTART IDENTITY")
            started = time.monotonic()
            load(database_url, args.events)
            marker.write_text(str(args.events))
            err.print(f"loaded in {time.monotonic() - started:.0f} s")
        stored = loaded(database_url)
        conn = redis.Redis.from_url(redis_url)
        fill_samples(conn)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
        env |= {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "INGEST_CONSOLE_PORT": str(port),
            "INGEST_CONSOLE_SAMPLE_INTERVAL": "10",
            "INGEST_LOG_LEVEL": "WARNING",
        }

        console = subprocess.Popen([sys.executable, "-m", "ingest", "console"], env=env)
        stack.callback(stop_process, console)
        if not wait_for_port(port, console, timeout=60):
            err.print("the console did not start")
            return 1
        rows = time_pages(f"http://127.0.0.1:{port}", targets(database_url), args.repeat)
        table = Table(title=f"console pages, {stored:,} events stored (median and slowest of {args.repeat})")
        for column in ("page", "median ms", "slowest ms", "bytes"):
            table.add_column(column, justify="left" if column == "page" else "right")
        for name, median, slowest, size in rows:
            table.add_row(name, f"{median:.1f}", f"{slowest:.1f}", f"{size:,}")
        Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
