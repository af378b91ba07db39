"""Figures that take long to compute, kept in Redis: a mailing's `mailing_stats` row and its
page (opens and clicks over time, bounce reasons).

`mailing_stats` aggregates every event of a mailing at each read (about 5 µs per event: a
mailing of 5,000 recipients takes 60-80 ms, a page of 25 mailings seconds). The console keeps
what it computed in Redis for CACHE_SECONDS and shows it with the time it was computed; a
figure older than FRESH_SECONDS is shown as it is and computed again in the background. A page
waits at most its budget for what is missing, then shows what it has and reloads itself.
One computation per key runs at a time in a console process; replicas share the results.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import redis

log = logging.getLogger("console.computed")

PREFIX = "ingest:console:computed:"
CACHE_SECONDS = 24 * 3600
FRESH_SECONDS = 120
AT_ONCE = 2  # computations running at once: the pages keep connections of the pool for themselves


@dataclass(frozen=True, slots=True)
class Figure:
    value: Any
    computed_at: float  # epoch seconds


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot keep {type(value).__name__}")


class Computed:
    """Results of slow computations, by key: from Redis when there, else computed (once)."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.running: dict[str, asyncio.Task[Figure]] = {}
        self.slots = asyncio.Semaphore(AT_ONCE)

    async def get_many(self, keys: dict[str, Callable[[], Awaitable[Any]]], *, wait: float) -> dict[str, Figure | None]:
        """The figure of every key (its computation given): those kept, and those computed
        within `wait` seconds; None for the rest (their computation goes on)."""
        names = list(keys)
        raws = await asyncio.to_thread(self.conn.mget, [PREFIX + name for name in names]) if names else []
        found: dict[str, Figure | None] = {}
        pending: dict[str, asyncio.Task[Figure]] = {}
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                pending[name] = self._start(name, keys[name])
                found[name] = None
                continue
            kept = orjson.loads(raw)
            found[name] = Figure(kept["value"], kept["at"])
            if time.time() - kept["at"] > FRESH_SECONDS:
                self._start(name, keys[name])  # shown as kept, refreshed meanwhile
        if pending:
            done, _ = await asyncio.wait([asyncio.shield(t) for t in pending.values()], timeout=wait)
            del done
            for name, task in pending.items():
                if task.done() and not task.cancelled() and task.exception() is None:
                    found[name] = task.result()
        return found

    async def get(self, name: str, compute: Callable[[], Awaitable[Any]], *, wait: float) -> Figure | None:
        return (await self.get_many({name: compute}, wait=wait))[name]

    def _start(self, name: str, compute: Callable[[], Awaitable[Any]]) -> asyncio.Task[Figure]:
        task = self.running.get(name)
        if task is None or task.done():
            task = asyncio.create_task(self._compute(name, compute), name=f"console-compute-{name}")
            self.running[name] = task
            task.add_done_callback(lambda done: self._finished(name, done))
        return task

    def _finished(self, name: str, task: asyncio.Task[Figure]) -> None:
        if self.running.get(name) is task:
            del self.running[name]
        if not task.cancelled():
            task.exception()  # logged in _compute; retrieved here so asyncio does not warn

    async def _compute(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Figure:
        try:
            async with self.slots:
                value = await compute()
            figure = Figure(value, time.time())
            raw = orjson.dumps({"value": value, "at": figure.computed_at}, default=_default)
            await asyncio.to_thread(self.conn.set, PREFIX + name, raw, ex=CACHE_SECONDS)
            return Figure(orjson.loads(raw)["value"], figure.computed_at)  # as a later read gives it
        except Exception:
            log.warning("computing %s failed", name, exc_info=True)
            raise

    async def close(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
