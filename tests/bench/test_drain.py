"""The drain benchmark's raw-COPY baseline against the real schema: it must keep storing as the
schema moves (it broke once, when 0012 replaced `user_agent` by `user_agent_hash`)."""

from __future__ import annotations

import psycopg

from bench import drain


def test_the_raw_copy_baseline_stores_each_event_once(database_url: str) -> None:
    calls = drain.make_calls(60)

    first = drain.raw_copy(database_url, calls, 25, None)
    again = drain.raw_copy(database_url, calls, 25, None)  # the same calls: ON CONFLICT keeps one

    assert first.events == again.events == 60
    with psycopg.connect(database_url) as conn:
        stored, agents = conn.execute("SELECT count(*), count(user_agent_hash) FROM events").fetchone()
    assert stored == 60
    assert agents == 60  # the user agent went in as its hash, as the worker stores it
