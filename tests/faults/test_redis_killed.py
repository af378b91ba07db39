"""Fault 4: Redis SIGKILLed under load and restarted. With `appendfsync always` no acknowledged
event is lost. With `everysec` the same kill loses nothing either (the AOF is written before
the reply; only its fsync waits): the loss window of `everysec` is a crash of the machine
itself (up to about a second of acknowledged calls), which a process kill cannot show."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import Stream, assert_stored_exactly_once, servers
from tests.processes import Process, receiver

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_redis_killed_loses_no_acknowledged_event(tmp_path: Path, appendfsync: str) -> None:
    with servers(tmp_path, appendfsync=appendfsync) as srv, receiver(srv.env) as serving:
        stream = Stream(serving.url, count=400_000, tag="kill", concurrency=32, pause=0.002).start()
        time.sleep(1.5)
        srv.valkey.kill()  # SIGKILL, mid-stream
        time.sleep(1.0)
        srv.valkey.start()  # same data directory and port: the AOF is replayed
        time.sleep(1.5)
        stream.stop()
        stream.check_answers()
        answers = set(stream.statuses.values())
        assert 503 in answers or 0 in answers, "the outage should have refused some calls"
        assert 200 in answers
        with Process(["worker", "--burst"], srv.env) as worker:
            assert worker.wait(180) == 0
        assert_stored_exactly_once(srv.postgres.url, stream)
