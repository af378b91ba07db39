"""The overview's kept samples: rates, restarts, thinning, the 24-hour bound and one sampler
per interval; and the sampler against the real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis

from common.settings import Settings
from console import samples
from tests.payloads import calls
from tests.workers.storage.test_reports import counted
from tests.workers.test_jobs import _parsed, envelope
from workers.storage import store


def rec(t: float, **values: object) -> dict:
    return {"t": t, **values}


def test_rates_are_differences_and_a_restart_gives_none() -> None:
    records = [rec(0, acc=0, ins=10), rec(10, acc=100, ins=60), rec(20, acc=5, ins=110)]
    s = samples.series(records)
    assert s.accepted == [None, 10.0, None]  # the receiver restarted between 10 and 20
    assert s.stored == [None, 5.0, 5.0]
    assert s.times == [0, 10000, 20000]
    assert samples.growth(records, "acc") == 105  # 100, then 5 after the restart
    assert samples.growth([rec(0)], "acc") is None


def test_rows_written_that_went_back_count_nothing_for_that_step() -> None:
    """The rows written into `events` go back when a partition is dropped (`ingest prune`): that
    step is no restart from zero (the rest of the table's rows would count as stored)."""
    records = [rec(0, ins=1000), rec(10, ins=1500), rec(20, ins=200), rec(30, ins=260)]
    assert samples.growth(records, "ins", restarts=False) == 560  # 500, nothing, 60
    assert samples.series(records).stored == [None, 50.0, None, 6.0]


def test_no_rate_between_a_record_of_max_id_and_one_of_rows_written() -> None:
    """Records kept from before migration 0014 hold `max(events.id)`, another counter."""
    records = [rec(0, maxid=5_000_000), rec(10, ins=1_000), rec(20, ins=1_100)]
    assert samples.series(records).stored == [None, None, 10.0]
    assert samples.growth(records, "ins", restarts=False) == 100


def test_refusals_by_reason() -> None:
    records = [rec(0, refused={"token": 1}), rec(10, refused={"token": 3, "network": 2}), rec(20, refused=None)]
    s = samples.series(records)
    assert s.refused == {"network": [None, 0.2, None], "token": [None, 0.2, None]}
    assert samples.refused_growth(records) == {"token": 2, "network": 2}


def test_thin_keeps_the_last_record_of_each_step() -> None:
    records = [rec(t) for t in (0, 100, 299, 300, 650)]
    assert [r["t"] for r in samples.thin(records, 300)] == [299, 300, 650]


def test_save_keeps_one_sample_per_interval_and_24_hours(redis_conn: redis.Redis) -> None:
    assert samples.save(redis_conn, rec(1000.0, acc=1), interval=3600)
    assert not samples.save(redis_conn, rec(1001.0, acc=2), interval=3600)  # another console, same slot
    for n in range(30):
        samples.save(redis_conn, rec(3600.0 * (n + 2)), interval=3600)
    assert redis_conn.llen(samples.SAMPLES_KEY) == 25  # 24 hours at one an hour, and the one now
    loaded = samples.load(redis_conn, since=3600.0 * 20)
    assert [r["t"] for r in loaded] == [3600.0 * n for n in range(20, 32)]


async def test_the_sampler_records_the_servers(settings: Settings, redis_conn: redis.Redis) -> None:
    fast = Settings.from_env({**settings.to_env(), "INGEST_CONSOLE_SAMPLE_INTERVAL": "0.2"}, dotenv=False)
    stop = asyncio.Event()
    task = asyncio.create_task(samples.run_sampler(fast, redis_conn, stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if redis_conn.llen(samples.SAMPLES_KEY) >= 2:
            break
    stop.set()
    await task
    records = samples.load(redis_conn, 0)
    assert len(records) >= 2
    assert records[-1]["q"] == 0 and isinstance(records[-1]["ins"], int) and records[-1]["errors"] == []
    assert records[-1]["acc"] is None  # no receiver /metrics configured


async def test_the_sampled_drain_moves_when_events_are_stored(
    settings: Settings, redis_conn: redis.Redis, database_url: str
) -> None:
    fast = Settings.from_env({**settings.to_env(), "INGEST_CONSOLE_SAMPLE_INTERVAL": "0.2"}, dotenv=False)
    stop = asyncio.Event()
    task = asyncio.create_task(samples.run_sampler(fast, redis_conn, stop))
    try:
        first = await _next_record(redis_conn, lambda _rec: True)
        with store.connect(database_url) as conn:
            assert (
                store.store(conn, *_parsed([envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(7))])).stored
                == 7
            )
            counted(conn)
        last = await _next_record(redis_conn, lambda rec: rec["ins"] >= first["ins"] + 7)
    finally:
        stop.set()
        await task
    assert last["ins"] == first["ins"] + 7
    records = samples.load(redis_conn, first["t"])
    assert samples.growth(records, "ins", restarts=False) == 7
    assert any(rate and rate > 0 for rate in samples.series(records).stored)


async def _next_record(conn: redis.Redis, done: Callable[[dict], bool]) -> dict:
    """The newest kept record once one satisfies `done` (polled; the sampler takes one each 0.2 s)."""
    for _ in range(300):
        records = samples.load(conn, 0)
        if records and done(records[-1]):
            return records[-1]
        await asyncio.sleep(0.05)
    raise AssertionError("no such sample was kept in 15 s")
