"""The overview's kept samples: rates, restarts, thinning, the 24-hour bound and one sampler
per interval; and the sampler against the real servers."""

from __future__ import annotations

import asyncio

import redis

from common.settings import Settings
from console import samples


def rec(t: float, **values: object) -> dict:
    return {"t": t, **values}


def test_rates_are_differences_and_a_restart_gives_none() -> None:
    records = [rec(0, acc=0, maxid=10), rec(10, acc=100, maxid=60), rec(20, acc=5, maxid=110)]
    s = samples.series(records)
    assert s.accepted == [None, 10.0, None]  # the receiver restarted between 10 and 20
    assert s.stored == [None, 5.0, 5.0]
    assert s.times == [0, 10000, 20000]
    assert samples.growth(records, "acc") == 105  # 100, then 5 after the restart
    assert samples.growth([rec(0)], "acc") is None


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
    assert records[-1]["q"] == 0 and records[-1]["maxid"] == 0 and records[-1]["errors"] == []
    assert records[-1]["acc"] is None  # no receiver /metrics configured
