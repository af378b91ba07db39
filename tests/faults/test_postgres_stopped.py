"""Fault 2: PostgreSQL stopped for 30 s during the stream. The receiver keeps answering 200 (it
never touches PostgreSQL), jobs fail and are retried with back-off, and everything is stored
once PostgreSQL is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import Stream, assert_stored_exactly_once, servers, stored_ids, wait_for
from tests.processes import Process, receiver

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_postgres_down_for_30_seconds(tmp_path: Path) -> None:
    with servers(tmp_path) as srv, receiver(srv.env, INGEST_MAX_BATCH="20") as serving:
        with Process(["worker"], srv.env):
            stream = Stream(serving.url, count=6000, tag="pg", concurrency=4, pause=0.02).start()
            time.sleep(2)
            srv.postgres.stop()
            down_at = stream.sent
            time.sleep(30)
            srv.postgres.start()
            up_at = stream.sent
            stream.join()
            stream.check_answers()
            assert up_at - down_at > 500, "the stream should have gone on while PostgreSQL was down"
            assert set(stream.statuses.values()) == {200}  # the receiver never noticed
            waited = wait_for(lambda: len(stored_ids(srv.postgres.url, "pg")) >= stream.count, timeout=180)
            print(
                f"{up_at - down_at} calls taken while PostgreSQL was down; all stored {waited:.0f} s after "
                "the stream ended"
            )
        assert_stored_exactly_once(srv.postgres.url, stream)
