"""Email facts at a heavy account's scale: `messages` kept, against today's schema, in one run.

    .venv/bin/python -m bench.scale [--events N] [--recipients R]

Three databases on one PostgreSQL: *old*, migrated to 0005 (events only: what a worker stored
before `messages`), *bare*, migrated to the end with the trigger that keeps `messages` disabled
(the same drain without the facts), and *new*, migrated to the end. The same realistic mailings (R recipients
each: sent, delivered for 98 %, 0.6 opens and 0.15 clicks a recipient, a third of the opens by
Apple's proxy, 2 % bounces, a third of them hard, some unsubscribes and complaints) go through
the real store path: webhook bodies parsed by `workers.jobs.parse_calls` in chunks of 1,000 and
stored by `store.store_chunks` (the worker's direct COPY), `sent` events as `cdm-attempts`
records, 5,000 events a transaction (never both kinds in one), each transaction into every
database in turn (the order rotating). Then it prints:

- events/s into each, and what keeping `messages` costs (new against bare): of the webhook drain
  (parse + store: what the workers drain from the queue), of the `sent` records (store: Copernica
  sends no webhook for a send, so they only come from its logfiles, by an import) and of all;
- bytes per event: heap, indexes, `messages` and `mailing_totals`, after VACUUM ANALYZE; and
  per open: its row (with the heap's packing), the indexes' bytes per event and the share of
  `messages` per event;
- median times of `mailing_stats` for one mailing and for all (the last 90 days on new), the
  whole suppression list (the view on new; the same rule over `events` on old), and an event
  search by recipient.

Uses BENCH_DATABASE_URL (a server whose bench_scale_* databases it drops and makes) when set,
else an embedded PostgreSQL in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.progress import Progress, TextColumn
from rich.table import Table

from workers.events.model import Event, from_logfile
from workers.jobs import parse_calls
from workers.storage import store
from workers.storage.schema import apply_migrations

DATABASES = ("old", "bare", "new")
PARTS = ("drain", "import")
RATE_LABELS = (  # part, its name, what its time covers
    ("drain", "webhook drain", " (parse + store)"),
    ("import", "`sent` records", " (store)"),
    ("all", "all events", ""),
)
TZ = "Europe/Amsterdam"
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
TRANSACTION = 5000
CHUNK = 1000
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
RECEIVED = START.timestamp() + 40 * 86400

# The suppression rule on today's schema: the view's query, with the mailing and the address
# taken from the message's `sent` event instead of `messages`.
OLD_SUPPRESSIONS = """
SELECT recipient, reason, min(occurred_at), max(occurred_at),
       (array_agg(mailing_id ORDER BY occurred_at DESC) FILTER (WHERE mailing_id IS NOT NULL))[1],
       max(profile_id), count(*)
FROM (
    SELECT lower(coalesce(e.recipient, s.recipient)) AS recipient,
           CASE e.event_type WHEN 'complained' THEN 'complaint' WHEN 'unsubscribed' THEN 'unsubscribe'
                ELSE 'hard_bounce' END AS reason,
           e.occurred_at, coalesce(e.mailing_id, s.mailing_id) AS mailing_id,
           coalesce(e.profile_id, s.profile_id) AS profile_id
    FROM events e
    LEFT JOIN LATERAL (SELECT recipient, mailing_id, profile_id FROM events s
                       WHERE s.message_id = e.message_id AND s.event_type = 'sent' LIMIT 1) AS s ON true
    WHERE e.event_type IN ('bounced', 'failed', 'complained', 'unsubscribed')
      AND (e.event_type IN ('complained', 'unsubscribed')
           OR e.smtp_code BETWEEN 500 AND 599 OR e.smtp_status LIKE '5.%')
) AS suppressed
GROUP BY recipient, reason, CASE WHEN recipient IS NULL THEN profile_id END
ORDER BY recipient, reason
"""
NEW_SUPPRESSIONS = "SELECT * FROM suppressions ORDER BY recipient, reason"


def _wire(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "body": urllib.parse.urlencode(fields).encode(),
        "content_type": "application/x-www-form-urlencoded",
        "received_at": RECEIVED,
    }


def mailing(mailing_id: int, recipients: int, seed: int) -> Iterator[Event | dict[str, Any]]:
    """One mailing's events in the order they would arrive: `sent` records (Events), then webhook
    calls (wires) for deliveries, bounces, opens, clicks, unsubscribes and complaints."""
    rng = random.Random(seed)
    sent_at = START + timedelta(days=2 * mailing_id)
    base = mailing_id * 10_000_000
    received = datetime.fromtimestamp(RECEIVED, UTC)
    for n in range(recipients):
        yield from_logfile(
            {
                "id": f"m{base + n:x}",
                "time": (sent_at + timedelta(seconds=n // 200)).strftime("%Y-%m-%d %H:%M:%S"),
                "mailingid": str(mailing_id),
                "profileid": str(n),
                "databaseid": "12",
                "email": f"user{n}@example.com",
                "tags": "newsletter;weekly",
            },
            "cdm-attempts",
            "UTC",
            received,
        )
    later: list[tuple[float, dict[str, Any]]] = []
    for n in range(recipients):
        mid = f"m{base + n:x}"
        t = sent_at.timestamp() + n // 200 + rng.randint(1, 30)
        common = {"id": mid, "recipient": f"user{n}@example.com", "mailing": mailing_id, "profile": n}
        if rng.random() < 0.02:
            hard = rng.random() < 0.35
            code, status = ("550", "5.1.1") if hard else ("452", "4.2.2")
            later.append((t, {**common, "type": "failure", "time": int(t), "code": code, "extended": status}))
            continue
        later.append((t, {**common, "type": "delivery", "time": int(t)}))
        for _ in range(_count(rng, 0.6)):
            t_open = t + rng.expovariate(1 / 7200)
            apple = rng.random() < 0.35
            ip, agent = (
                (f"17.58.{rng.randint(0, 255)}.{rng.randint(1, 254)}", "Mozilla/5.0")
                if apple
                else (
                    f"192.0.2.{rng.randint(1, 254)}",
                    BROWSER,
                )
            )
            later.append((t_open, {**common, "type": "open", "time": int(t_open), "ip": ip, "useragent": agent}))
        for _ in range(_count(rng, 0.15)):
            t_click = t + rng.expovariate(1 / 7200)
            link = rng.randint(1, 8)
            later.append(
                (
                    t_click,
                    {
                        **common,
                        "type": "click",
                        "time": int(t_click),
                        "ip": f"192.0.2.{rng.randint(1, 254)}",
                        "useragent": BROWSER,
                        "url": f"https://shop.example.com/item/{link}?utm_source=news",
                    },
                )
            )
        if rng.random() < 0.004:
            later.append((t + 86400, {**common, "type": "unsubscribe", "time": int(t) + 86400, "id": f"u{mid}"}))
        if rng.random() < 0.0008:
            later.append((t + 90000, {**common, "type": "complaint", "time": int(t) + 90000}))
    later.sort(key=lambda item: item[0])
    for _t, fields in later:
        yield _wire(fields)


def _count(rng: random.Random, mean: float) -> int:
    """0, 1, 2 … with the given mean (most recipients none; a few many)."""
    if rng.random() > mean / (mean + 0.6):
        return 0
    return 1 + int(rng.expovariate(1 / 0.6))


def transactions(events: int, recipients: int) -> Iterator[list[Event | dict[str, Any]]]:
    """About `events` items, in transactions of TRANSACTION that never mix `sent` records (a
    logfile's import) with webhook calls (the drain), so each is timed on its own."""
    batch: list[Event | dict[str, Any]] = []
    made = 0
    mailing_id = 0
    while made < events:
        mailing_id += 1
        for item in mailing(mailing_id, recipients, seed=mailing_id):
            if batch and isinstance(item, Event) != isinstance(batch[0], Event):
                yield batch
                batch = []
            batch.append(item)
            made += 1
            if len(batch) == TRANSACTION:
                yield batch
                batch = []
            if made >= events:
                break
    if batch:
        yield batch


def kind(batch: list[Event | dict[str, Any]]) -> str:
    """The part a transaction belongs to: "import" (`sent` records) or "drain" (webhook calls)."""
    return "import" if isinstance(batch[0], Event) else "drain"


def chunks(batch: list[Event | dict[str, Any]]) -> Iterator[store.Chunk]:
    """A transaction as the worker hands it to `store_chunks`: webhook calls parsed chunk by chunk."""
    for start in range(0, len(batch), CHUNK):
        part = batch[start : start + CHUNK]
        ready = [item for item in part if isinstance(item, Event)]
        wires = [item for item in part if not isinstance(item, Event)]
        events, _origins, rejects = parse_calls(wires, TZ)
        yield store.Chunk([*ready, *events], None, rejects)


def sizes(conn: psycopg.Connection) -> dict[str, int]:
    """Bytes on disk: events' heap (with TOAST) and indexes over its partitions, messages and the
    mailing totals (heap and indexes)."""
    row = conn.execute(
        "SELECT sum(pg_table_size(inhrelid)), sum(pg_indexes_size(inhrelid)) FROM pg_inherits"
        " WHERE inhparent = 'events'::regclass"
    ).fetchone()
    facts = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c)), 0) FROM unnest(array[to_regclass('messages'),"
        " to_regclass('mailing_totals')]) AS c WHERE c IS NOT NULL"
    ).fetchone()
    return {"heap": int(row[0]), "indexes": int(row[1]), "messages": int(facts[0])}


def timed(conn: psycopg.Connection, query: str, params: Any = None, reps: int = 5) -> tuple[float, int]:
    """Median seconds of `query` (all rows fetched) over `reps` runs, and the rows."""
    times, rows = [], 0
    for _ in range(reps):
        started = time.perf_counter()
        rows = len(conn.execute(query, params).fetchall())
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to load (default 1,000,000)")
    parser.add_argument("--recipients", type=int, default=100_000, help="recipients per mailing")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    with ExitStack() as stack:
        server_url = os.environ.get("BENCH_DATABASE_URL")
        if not server_url:
            from ingest.devstack.embedded import EmbeddedPostgres

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-scale-")))
            pg = EmbeddedPostgres(tmp / "postgres")
            pg.start()
            stack.callback(pg.stop)
            server_url = pg.url
        urls = {}
        admin = make_conninfo(server_url, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in DATABASES:
                conn.execute(f"DROP DATABASE IF EXISTS bench_scale_{name} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE bench_scale_{name}")
                urls[name] = make_conninfo(server_url, dbname=f"bench_scale_{name}")
        apply_migrations(urls["old"], target=5)
        apply_migrations(urls["bare"])
        apply_migrations(urls["new"])
        with psycopg.connect(urls["bare"], autocommit=True) as conn:
            conn.execute("ALTER TABLE events DISABLE TRIGGER events_inserted_facts")
        return run(console, urls, args.events, args.recipients)


def run(console: Console, urls: dict[str, str], events: int, recipients: int) -> int:
    conns = {name: store.connect(url) for name, url in urls.items()}
    spent = {(name, part): 0.0 for name in DATABASES for part in PARTS}
    loaded = dict.fromkeys(PARTS, 0)
    columns = (*Progress.get_default_columns(), TextColumn("{task.completed:,} events"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"loading into {len(DATABASES)} databases", total=events)
        for n, batch in enumerate(transactions(events, recipients)):
            part = kind(batch)
            shift = n % len(DATABASES)  # each database first in turn
            for name in DATABASES[shift:] + DATABASES[:shift]:
                begin = time.perf_counter()
                store.store_chunks(conns[name], chunks(batch))
                spent[name, part] += time.perf_counter() - begin
            loaded[part] += len(batch)
            progress.update(task, completed=sum(loaded.values()))
    rates = {name: _rates(spent, loaded, name) for name in DATABASES}
    conns.pop("bare").close()
    with psycopg.connect(make_conninfo(urls["bare"], dbname="postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE bench_scale_bare WITH (FORCE)")  # its rates are all it was for
    figures: dict[str, dict[str, Any]] = {}
    for name, conn in conns.items():
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        one = conn.execute("SELECT mailing_id FROM events WHERE mailing_id IS NOT NULL LIMIT 1").fetchone()[0]
        recipient = conn.execute("SELECT recipient FROM events WHERE event_type = 'opened' LIMIT 1").fetchone()[0]
        all_query = (
            "SELECT * FROM mailing_stats WHERE last_event_at >= now() - interval '90 days'"
            if name == "new"
            else "SELECT * FROM mailing_stats"
        )
        figures[name] = {
            "stored": stored,
            "rates": rates[name],
            **sizes(conn),
            "one": timed(conn, "SELECT * FROM mailing_stats WHERE mailing_id = %s", (one,)),
            "all": timed(conn, all_query),
            "suppressions": timed(conn, NEW_SUPPRESSIONS if name == "new" else OLD_SUPPRESSIONS, reps=3),
            "search": timed(
                conn,
                "SELECT * FROM events WHERE recipient = %s ORDER BY occurred_at",
                (recipient,),
            ),
        }
        figures[name]["open_row"], figures[name]["packing"] = conn.execute(
            "SELECT avg(pg_column_size(e.*)) FILTER (WHERE event_type = 'opened'),"
            " sum(pg_column_size(e.*) + 4)"  # 4: the row's line pointer
            " FROM events e"
        ).fetchone()
        conn.close()
    report(figures, sum(loaded.values()), rates["bare"])
    return 0


def _rates(spent: dict[tuple[str, str], float], loaded: dict[str, int], name: str) -> dict[str, float]:
    """Events/s into database `name`: of each part, and of all."""
    rates = {part: loaded[part] / spent[name, part] for part in PARTS if spent[name, part]}
    rates["all"] = sum(loaded.values()) / sum(spent[name, part] for part in PARTS)
    return rates


def per_open(figures: dict[str, Any]) -> float:
    """Bytes on disk per open: its row as the heap packs rows (the heap's bytes over the rows'
    own), the indexes' bytes per event (an open has an entry in each), and the bytes of
    `messages` and the mailing totals per event."""
    stored = figures["stored"]
    packing = figures["heap"] / float(figures["packing"])
    return (float(figures["open_row"]) + 4) * packing + (figures["indexes"] + figures["messages"]) / stored


def report(figures: dict[str, dict[str, Any]], loaded: int, bare_rates: dict[str, float]) -> None:
    old, new = figures["old"], figures["new"]
    table = Table(title=f"{loaded:,} events, today's schema (0005) against messages (0006-)")
    for column in ("measure", "today", "with messages", "ratio"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    for part, name, timed in RATE_LABELS:
        if part not in new["rates"]:
            continue
        before, after, bare = old["rates"][part], new["rates"][part], bare_rates[part]
        table.add_row(f"events/s, {name}{timed}", f"{before:,.0f}", f"{after:,.0f}", f"{after / before:.2f} ×")
        table.add_row(
            f"  against the same schema without messages kept ({name})",
            f"{bare:,.0f}",
            f"{after:,.0f}",
            f"{after / bare:.2f} × (messages cost {1 - after / bare:.0%})",
        )
    for part in ("heap", "indexes", "messages"):
        table.add_row(
            f"bytes/event: {part}",
            f"{old[part] / old['stored']:.0f}",
            f"{new[part] / new['stored']:.0f}",
            "",
        )
    total_old = sum(old[p] for p in ("heap", "indexes", "messages")) / old["stored"]
    total_new = sum(new[p] for p in ("heap", "indexes", "messages")) / new["stored"]
    table.add_row("bytes/event: total", f"{total_old:.0f}", f"{total_new:.0f}", f"{total_new / total_old:.2f} ×")
    table.add_row("open row (pg_column_size)", f"{old['open_row']:.0f}", f"{new['open_row']:.0f}", "")
    table.add_row(
        "bytes per open: row, indexes, messages",
        f"{per_open(old):.0f}",
        f"{per_open(new):.0f}",
        f"{per_open(new) / per_open(old):.2f} ×",
    )
    for key, label in (
        ("one", "mailing_stats, one mailing"),
        ("all", "mailing_stats, all (new: last 90 days)"),
        ("suppressions", "suppression list, whole"),
        ("search", "events of one recipient"),
    ):
        (t_old, rows_old), (t_new, rows_new) = old[key], new[key]
        table.add_row(
            f"{label} (rows {rows_old}/{rows_new})",
            f"{t_old * 1000:,.1f} ms",
            f"{t_new * 1000:,.1f} ms",
            f"{t_old / t_new:,.0f} × faster" if t_new else "",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    sys.exit(main())
