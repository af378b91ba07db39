"""Group commit: many requests, one Redis write.

A request adds its call to the open batch and awaits that batch's write. A flusher hands
batches to writers; while a batch is being written the next one fills, so batches grow with
load and a lone request is written after one loop iteration. Before a batch goes, the calls
still arriving join it (`_gather`), up to `overlap_min` calls or `gather_seconds`. A second
write (up to `max_in_flight`) goes out beside the first only for a batch of at least
`overlap_min` calls: writing every small batch at once costs the receiver more CPU per call
(measured here: 10-35 % more, most with short-lived connections), while waiting with a big
batch for the fsync of the one before leaves the CPU idle.
Every request of a batch gets the batch's outcome: all are in Redis, or all are told they
are not.

Memory is bounded: a batch holds at most `max_batch` calls and at most `max_pending` calls wait
at once; past that `Overloaded` is raised at once and the receiver answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("ingest.batching")


# Calls a batch needs before it is written beside one already in flight (see the docstring);
# also the size at which a batch stops waiting for more calls to join it.
OVERLAP_MIN = 10  # with 3 writes in flight: 64 keep-alive connections were answered ~5 % faster than 16 and 2
# The longest a batch waits for more calls while they keep arriving (see `_gather`).
GATHER_SECONDS = 0.002


class Overloaded(Exception):
    """Too many calls are already waiting for Redis."""


class WriteFailed(Exception):
    """The batch holding this call could not be written."""


class Closed(Exception):
    """The committer is shutting down and takes no new calls."""


class _Outcome(asyncio.Future):
    """A batch's outcome, shared by all its requests: one request cancelled (its caller gone, a
    shutdown) must not cancel it for the others. Refusing `cancel` does what `asyncio.shield`
    would, without a second future per request: the cancelled request's task still gets its
    CancelledError, once the outcome is known."""

    __slots__ = ()

    def cancel(self, msg: Any = None) -> bool:  # noqa: ARG002 - asyncio passes msg by keyword
        return False


class _Batch:
    __slots__ = ("done", "items")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.items: list[Any] = []
        self.done: asyncio.Future[None] = _Outcome(loop=loop)

    def fail(self, exc: Exception) -> None:
        """Every request of the batch learns it failed."""
        self.done.set_exception(exc)
        self.done.exception()  # retrieved: no "exception never retrieved" warning


Writer = Callable[[list[Any]], Awaitable[Any]]
Observer = Callable[[int, float, bool], None]  # batch size, seconds, succeeded


class GroupCommitter:
    def __init__(
        self,
        write: Writer,
        *,
        max_batch: int,
        max_pending: int,
        max_in_flight: int = 3,
        overlap_min: int = OVERLAP_MIN,
        gather_seconds: float = GATHER_SECONDS,
        observe: Observer | None = None,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._max_pending = max(max_pending, max_batch)
        self._max_in_flight = max(1, max_in_flight)
        self._overlap_min = max(1, overlap_min)
        self._gather_seconds = gather_seconds
        self._observe = observe
        self._waiting: deque[_Batch] = deque()
        self._pending = 0
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Calls accepted into a batch whose write has not ended."""
        return self._pending

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    def submit(self, item: Any) -> asyncio.Future[None]:
        """Add `item` to the open batch. The future returned is done once the batch is durably
        written, or fails with `WriteFailed`; `Overloaded` and `Closed` come as a failed future.
        A plain method returning the batch's own future: a coroutine would cost every call one
        more frame, and every call of a batch shares the one future anyway."""
        if self._closing:
            return self._refused(Closed())
        if self._pending >= self._max_pending:
            return self._refused(Overloaded())
        if self._flusher is None:
            self.start()
        batch = self._waiting[-1] if self._waiting else None
        if batch is None or len(batch.items) >= self._max_batch:
            batch = _Batch(asyncio.get_running_loop())
            self._waiting.append(batch)
        batch.items.append(item)
        self._pending += 1
        size = len(batch.items)
        if size == 1 or size == self._overlap_min:  # only then can `_may_write` change its answer
            self._wakeup.set()
        return batch.done

    @staticmethod
    def _refused(exc: Exception) -> asyncio.Future[None]:
        refused = asyncio.get_running_loop().create_future()
        refused.set_exception(exc)
        return refused

    async def _run(self) -> None:
        """Hand each waiting batch to a writer, as `_may_write` allows."""
        writes: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._waiting and self._may_write():
                    await self._gather(self._waiting[0])
                    self._in_flight += 1
                    task = loop.create_task(self._write_batch(self._waiting.popleft()))
                    writes.add(task)
                    task.add_done_callback(writes.discard)
                    continue
                if self._closing and not self._waiting:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
            if writes:
                await asyncio.gather(*writes)
        except asyncio.CancelledError:
            self._fail_waiting(WriteFailed("shutting down"))
            raise

    async def _gather(self, batch: _Batch) -> None:
        """Let the calls already on their way join `batch` before it is written.

        Each loop iteration reads what the sockets hold; when the last one added calls to the
        batch, the next one likely adds more: under load (many short-lived connections above
        all) this makes fewer, bigger writes, and each write costs the receiver ~0.1 ms of CPU
        and Redis one fsync. A lone call adds no more than one loop iteration. The batch goes
        once an iteration adds nothing, once it holds `overlap_min` calls or another batch
        waits behind it, or after `gather_seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._gather_seconds
        seen = len(batch.items)
        while seen < self._overlap_min and len(self._waiting) == 1 and not self._closing:
            await asyncio.sleep(0)
            size = len(batch.items)
            if size == seen or loop.time() >= deadline:
                return
            seen = size

    def _may_write(self) -> bool:
        """The first write goes at once; another, up to `max_in_flight`, only for a batch that
        has grown to `overlap_min` calls (or is full, or we are closing)."""
        if self._in_flight == 0:
            return True
        if self._in_flight >= self._max_in_flight:
            return False
        return len(self._waiting) > 1 or len(self._waiting[0].items) >= self._overlap_min or self._closing

    async def _write_batch(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            await self._write(batch.items)
        except Exception as exc:
            log.warning("batch of %d calls not written: %s", len(batch.items), exc)
            batch.fail(WriteFailed(str(exc)))
            ok = False
        else:
            batch.done.set_result(None)
            ok = True
        finally:
            self._in_flight -= 1
            self._pending -= len(batch.items)
            self._wakeup.set()  # a write slot is free
        if self._observe is not None:
            self._observe(len(batch.items), time.perf_counter() - started, ok)

    def _fail_waiting(self, exc: Exception) -> None:
        while self._waiting:
            batch = self._waiting.popleft()
            self._pending -= len(batch.items)
            batch.fail(exc)

    async def close(self) -> None:
        """Take no new calls; write every batch already accepted, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
