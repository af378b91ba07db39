"""Slow figures kept in Redis: computed once, waited for within a budget, refreshed when old."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import redis

from console import computed
from console.computed import Computed


async def test_a_figure_is_computed_once_and_kept(redis_conn: redis.Redis) -> None:
    calls = 0

    async def slow() -> dict:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return {"n": calls, "rate": Decimal("0.25")}

    kept = Computed(redis_conn)
    assert await kept.get("x", slow, wait=0.01) is None  # not yet: the page says so
    assert await kept.get("x", slow, wait=0.01) is None  # the same computation goes on
    figure = await kept.get("x", slow, wait=2)
    assert figure is not None and figure.value == {"n": 1, "rate": 0.25}
    again = await Computed(redis_conn).get("x", slow, wait=0)  # another console: from Redis
    assert again is not None and again.value == {"n": 1, "rate": 0.25} and calls == 1
    assert redis_conn.ttl(computed.PREFIX + "x") > 3600


async def test_an_old_figure_is_shown_and_computed_again(redis_conn: redis.Redis, monkeypatch: object) -> None:
    values = iter([1, 2])

    async def compute() -> int:
        return next(values)

    kept = Computed(redis_conn)
    assert (await kept.get("y", compute, wait=1)).value == 1
    monkeypatch.setattr(computed, "FRESH_SECONDS", -1)  # type: ignore[attr-defined]
    stale = await kept.get("y", compute, wait=1)
    assert stale.value == 1  # shown as kept ...
    await asyncio.gather(*kept.running.values())
    assert (await kept.get("y", compute, wait=1)).value == 2  # ... and refreshed meanwhile
    assert time.time() - (await kept.get("y", compute, wait=1)).computed_at < 60
    await kept.close()


async def test_a_failed_computation_is_missing_not_raised(redis_conn: redis.Redis) -> None:
    async def broken() -> int:
        raise RuntimeError("PostgreSQL went away")

    kept = Computed(redis_conn)
    assert await kept.get("z", broken, wait=1) is None
    assert redis_conn.get(computed.PREFIX + "z") is None
