"""Fault 6: the receiver SIGTERMed under load writes and answers its in-flight batches before it
exits; no 2xx for a call that is not in Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.faults.harness import Stream, assert_stored_exactly_once, servers
from tests.processes import Process, receiver

pytestmark = pytest.mark.faults


def test_sigterm_under_load_answers_only_what_is_written(tmp_path: Path) -> None:
    with servers(tmp_path) as srv:
        with receiver(srv.env) as serving:
            stream = Stream(serving.url, count=50_000, tag="term", concurrency=64).start()
            time.sleep(0.7)
            assert 0 < stream.sent < stream.count, "the stream should still be running"
            assert serving.proc.terminate(timeout=45) == 0
            stream.join()
        stream.check_answers()
        accepted = stream.accepted()
        assert accepted and len(accepted) < stream.count  # some were taken, the rest refused

        conn = redis.Redis.from_url(srv.valkey.url)
        assert conn.llen("rq:queue:copernica") > 0
        conn.close()
        with Process(["worker", "--burst"], srv.env) as worker:
            assert worker.wait(120) == 0
        assert_stored_exactly_once(srv.postgres.url, stream)
