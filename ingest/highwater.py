"""The queue's high-water mark: past `INGEST_MAX_QUEUE_DEPTH` queued calls the receiver answers
503 + Retry-After at once, and takes calls again as workers drain the queue.

Why an estimate: the exact number of queued calls would need a counter kept right by every
receiver, worker, retry and operator action. Instead the receiver polls the queue's length in
jobs (O(1), twice a second) and multiplies it by the average size of the batches it writes
itself. Receivers behind one load balancer see the same load, so their averages agree; the
mark is a guard against exhausting Redis, not an exact quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis

log = logging.getLogger("ingest.highwater")

POLL_SECONDS = 0.5
_SMOOTHING = 0.05  # weight of a new batch in the running average of batch sizes


class HighWater:
    def __init__(self, connection: object, queue_key: str, max_calls: int) -> None:
        self._connection = connection
        self._queue_key = queue_key
        self.max_calls = max_calls
        self.over = False
        self.average_batch = 1.0
        self.estimated_calls = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def observe(self, size: int, ok: bool) -> None:
        """Feed each written batch's size into the running average."""
        if ok:
            self.average_batch += _SMOOTHING * (size - self.average_batch)

    async def check(self) -> None:
        jobs = await self._connection.llen(self._queue_key)  # type: ignore[attr-defined]
        self.estimated_calls = jobs * self.average_batch
        over = self.estimated_calls > self.max_calls
        if over != self.over:
            log.warning(
                "queue %s the high-water mark: about %d calls queued (mark %d)",
                "above" if over else "back under",
                self.estimated_calls,
                self.max_calls,
            )
        self.over = over

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.check()
            except (TimeoutError, redis.RedisError, OSError) as exc:
                log.debug("high-water check failed: %s", exc)  # writes fail on their own then
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), POLL_SECONDS)

    def start(self) -> None:
        if self.max_calls > 0 and self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="high-water")

    async def stop(self) -> None:
        """Stop between checks: cancelling a Redis command midway can wedge its connection."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
