"""Fault: the PostgreSQL primary lost mid-drain (immediate shutdown, as when its machine goes),
its streaming replica promoted. The worker runs on a two-host DATABASE_URL with
`target_session_attrs=read-write`: the job that failed on the old primary is retried, the next
ones reconnect to the promoted replica, and the worker is never restarted. Every event answered
200 is stored exactly once in the promoted server.

The primary commits synchronously (`synchronous_standby_names = '*'`): a commit the worker saw
succeed is on the replica too. With asynchronous replication, the batches committed in the last
instant before the loss may be missing from the promoted server while their jobs are done in
Redis; only a backfill from Copernica's logfiles (`ingest reconcile`) would bring them back."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ingest.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from tests.faults.harness import Stream, assert_stored_exactly_once, stored_ids, wait_for
from tests.processes import Process, ingest_env, receiver
from workers.storage.schema import apply_migrations

# In the fast subset (about 10 s): the job that failed on the old primary comes back after RQ's
# first back-off (5 s), as do those taken while no server accepted writes.
pytestmark = pytest.mark.faults


@contextlib.contextmanager
def primary_and_replica(tmp: Path) -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    """A migrated primary and its streaming replica, the replica synchronous when yielded."""
    primary = EmbeddedPostgres(tmp / "pg-primary")
    primary.start()
    standby = EmbeddedPostgres.replica_of(primary, tmp / "pg-replica")
    try:
        apply_migrations(primary.url)
        standby.start()
        # After the base backup: the setting stays the primary's (the promoted replica must not
        # wait for a standby of its own, which it does not have).
        with psycopg.connect(primary.admin_url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
            wait_for(
                lambda: (
                    conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0]
                    == 1
                ),
                timeout=20,
                interval=0.1,
            )
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


def test_workers_follow_a_promoted_replica(tmp_path: Path) -> None:
    valkey = EmbeddedValkey(tmp_path / "valkey")
    valkey.start()
    try:
        with primary_and_replica(tmp_path) as (primary, standby):
            both = (
                f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/ingest"
                "?target_session_attrs=read-write"
            )
            env = ingest_env(valkey.url, both)
            with receiver(env, INGEST_MAX_BATCH="20") as serving, Process(["worker"], env) as worker:
                stream = Stream(serving.url, count=1_000_000, tag="pgswitch", concurrency=4, pause=0.01).start()
                wait_for(lambda: len(stored_ids(primary.url, "pgswitch")) >= 300, timeout=60, interval=0.1)
                primary.crash()  # mid-drain: the worker is storing as the stream goes on
                lost_at = time.monotonic()
                time.sleep(1.0)  # what a failover manager takes to decide, at the least
                standby.promote()
                at_promotion = len(stored_ids(standby.url, "pgswitch"))
                time.sleep(3.0)  # the stream goes on into the promoted server
                stream.stop()

                stream.check_answers()
                assert set(stream.statuses.values()) == {200}, "the receiver never touches PostgreSQL"
                accepted = stream.accepted()
                waited = wait_for(
                    lambda: accepted <= set(stored_ids(standby.url, "pgswitch")), timeout=120, interval=0.5
                )
                assert worker.popen is not None and worker.popen.poll() is None, "the worker stopped"
                stored_after = len(stored_ids(standby.url, "pgswitch")) - at_promotion
                assert stored_after > 0, "nothing was stored in the promoted server"
                print(
                    f"{len(accepted)} calls accepted, {at_promotion} stored before the switch; all stored in the "
                    f"promoted server {time.monotonic() - lost_at:.0f} s after the primary was lost "
                    f"({waited:.0f} s after the stream ended)"
                )
            assert_stored_exactly_once(standby.url, stream)
    finally:
        valkey.stop()
