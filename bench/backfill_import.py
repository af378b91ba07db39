"""Backfill import speed vs. the worker drain, on the same PostgreSQL.

    .venv/bin/python bench/backfill_import.py [--records 200000] [--format json|csv|xml]

1. import: a generated `cdm-click` logfile of N records, stored by `ingest import` run as a
   subprocess (read_records -> from_logfile -> store in batches of 5,000); wall time of the
   whole command and its peak RSS.
2. drain: the same N events as webhook calls (form bodies), parsed and stored as the RQ job
   does (`workers.jobs.parse_calls` + `store.store`, one transaction per INGEST_MAX_BATCH calls).
   Redis and RQ are left out, so this is an upper bound of what a worker drains.

Uses DATABASE_URL when set (its events are DELETED), else an embedded PostgreSQL in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import status_mib
from common.envelope import Envelope
from tests.fake_copernica import FakeCopernica, LogFile, make_records, webhook_fields
from workers.jobs import parse_calls
from workers.storage import store
from workers.storage.schema import apply_migrations

TZ = "Europe/Amsterdam"
DAY = date(2026, 11, 25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--format", default="json", choices=("json", "csv", "xml"))
    parser.add_argument("--drain-batch", type=int, default=500, help="calls per RQ job (INGEST_MAX_BATCH)")
    args = parser.parse_args()

    embedded = None
    url = os.environ.get("DATABASE_URL")
    workdir = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    if not url:
        from ingest.devstack.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(workdir / "pg")
        embedded.start()
        url = embedded.url
    apply_migrations(url)
    try:
        records = make_records("cdm-click", DAY, args.records)
        log = LogFile("cdm-click.2026-11-25.log", "cdm-click", DAY, records)
        path = workdir / f"cdm-click.2026-11-25.{args.format}"
        path.write_bytes(FakeCopernica().render(log, args.format))
        size_mb = path.stat().st_size / 1e6

        with store.connect(url) as conn:
            conn.execute("TRUNCATE events, rejected_events, backfill_files")
            conn.commit()
            env = {**os.environ, "DATABASE_URL": url, "INGEST_LOG_LEVEL": "WARNING"}
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "import", str(path)], env=env, cwd=workdir, stdout=subprocess.DEVNULL
            )
            max_rss_mb = 0.0
            while proc.poll() is None:
                max_rss_mb = max(max_rss_mb, status_mib(proc.pid) or 0.0)
                time.sleep(0.1)
            took_import = time.perf_counter() - started
            assert proc.returncode == 0, proc.returncode
            stored_now = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            assert stored_now == args.records, stored_now

            calls = [
                Envelope(
                    body=urllib.parse.urlencode(webhook_fields("cdm-click", r)).encode(),
                    content_type="application/x-www-form-urlencoded",
                    received_at=time.time(),
                ).to_wire()
                for r in records
            ]
            conn.execute("TRUNCATE events, rejected_events")
            conn.commit()
            started = time.perf_counter()
            stored = 0
            for at in range(0, len(calls), args.drain_batch):
                events, origins, rejects = parse_calls(calls[at : at + args.drain_batch], TZ)
                stored += store.store(conn, events, rejects, origins).stored
            took_drain = time.perf_counter() - started
            assert stored == args.records
    finally:
        if embedded is not None:
            embedded.stop()
    print(f"records: {args.records:,} ({args.format}, {size_mb:.1f} MB file)")
    print(
        f"import (`ingest import`, batches of 5,000): {took_import:6.2f} s  {args.records / took_import:9,.0f} "
        f"records/s  (whole command, peak RSS {max_rss_mb:.0f} MB)"
    )
    print(
        f"drain  (webhook jobs of {args.drain_batch}):               {took_drain:6.2f} s  "
        f"{args.records / took_drain:9,.0f} records/s  (parse + store, no Redis/RQ)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
