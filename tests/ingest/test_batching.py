"""Group commit keeps the contract: an answer only after the batch's write, failures reach
every request of the batch, memory stays bounded. Pure logic: the writer is a test double."""

from __future__ import annotations

import asyncio

import pytest

from ingest.batching import Closed, GroupCommitter, Overloaded, WriteFailed


class Writer:
    def __init__(self, delay: float = 0.0, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on or set()
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> None:
        await self.release.wait()
        await asyncio.sleep(self.delay)
        index = len(self.batches)
        self.batches.append(list(items))
        if index in self.fail_on:
            raise ConnectionError("redis down")


async def submit_all(committer: GroupCommitter, items: range) -> list[object]:
    return await asyncio.gather(*(committer.submit(i) for i in items), return_exceptions=True)


async def test_every_answer_follows_its_write() -> None:
    writer = Writer(delay=0.01)
    committer = GroupCommitter(writer, max_batch=50, max_pending=10_000)
    written: set[int] = set()

    async def one(i: int) -> None:
        await committer.submit(i)
        written_now = {x for batch in writer.batches for x in batch}
        assert i in written_now  # the answer comes after the item was written
        written.add(i)

    await asyncio.gather(*(one(i) for i in range(500)))
    assert written == set(range(500))
    assert sorted(x for b in writer.batches for x in b) == list(range(500))
    assert max(len(b) for b in writer.batches) <= 50
    assert len(writer.batches) < 500  # requests were grouped
    await committer.close()


async def test_lone_request_is_written_at_once() -> None:
    writer = Writer()
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000)
    await asyncio.wait_for(committer.submit(1), timeout=1)
    assert writer.batches == [[1]]
    await committer.close()


async def test_failed_write_fails_every_request_of_that_batch_only() -> None:
    writer = Writer(fail_on={1})
    writer.release.clear()
    committer = GroupCommitter(writer, max_batch=10, max_pending=1000)
    task = asyncio.gather(*(committer.submit(i) for i in range(30)), return_exceptions=True)
    await asyncio.sleep(0.01)
    writer.release.set()
    results = await task
    failed = {i for i, r in enumerate(results) if isinstance(r, WriteFailed)}
    assert failed == set(writer.batches[1])
    assert all(r is None for i, r in enumerate(results) if i not in failed)
    await committer.close()


async def test_overload_is_refused_at_once_and_bounded() -> None:
    writer = Writer()
    writer.release.clear()  # Redis hangs
    committer = GroupCommitter(writer, max_batch=10, max_pending=25)
    task = asyncio.gather(*(committer.submit(i) for i in range(40)), return_exceptions=True)
    await asyncio.sleep(0.01)
    assert committer.pending == 25
    writer.release.set()
    results = await task
    assert sum(isinstance(r, Overloaded) for r in results) == 15
    assert sum(r is None for r in results) == 25
    await committer.close()


async def test_close_writes_accepted_batches_then_refuses() -> None:
    writer = Writer(delay=0.02)
    committer = GroupCommitter(writer, max_batch=5, max_pending=1000)
    task = asyncio.gather(*(committer.submit(i) for i in range(20)))
    await asyncio.sleep(0)
    await committer.close()
    assert await task == [None] * 20
    assert sorted(x for b in writer.batches for x in b) == list(range(20))
    with pytest.raises(Closed):
        await committer.submit(99)


async def request(committer: GroupCommitter, item: int) -> None:
    """What a request's task does: submit, then await the outcome."""
    await committer.submit(item)


async def test_a_cancelled_request_leaves_its_batch_alone() -> None:
    writer = Writer()
    writer.release.clear()  # the first write waits: the next requests share one batch
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000)
    first = asyncio.ensure_future(committer.submit(0))
    await asyncio.sleep(0.01)
    waiting = [asyncio.ensure_future(request(committer, i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    waiting[0].cancel()  # its caller (a request's task) went away
    await asyncio.sleep(0.01)
    assert not waiting[0].done()  # cancelled only once the batch's outcome is known
    writer.release.set()
    await asyncio.gather(first, waiting[1], waiting[2])  # the others are answered normally
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert writer.batches == [[0], [1, 2, 3]]  # the cancelled call was written all the same
    assert committer.pending == 0
    await committer.close()


class HeldWriter:
    """Each write waits until the test lets it finish; records what is in flight at once."""

    def __init__(self) -> None:
        self.started: list[list[int]] = []
        self.gates: list[asyncio.Event] = []
        self.most_at_once = 0
        self.in_flight = 0

    async def __call__(self, items: list[int]) -> None:
        gate = asyncio.Event()
        self.started.append(list(items))
        self.gates.append(gate)
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        await gate.wait()
        self.in_flight -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_small_batch_waits_for_the_write_in_flight() -> None:
    writer = HeldWriter()
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000, max_in_flight=2, overlap_min=4)
    tasks = [asyncio.ensure_future(committer.submit(0))]
    await settle()
    tasks += [asyncio.ensure_future(committer.submit(i)) for i in (1, 2, 3)]  # below overlap_min
    await settle()
    assert writer.started == [[0]]  # the three wait: not worth a write of their own yet
    writer.gates[0].set()
    await settle()
    assert writer.started == [[0], [1, 2, 3]]  # written as soon as the first write finished
    writer.gates[1].set()
    await asyncio.gather(*tasks)
    assert writer.most_at_once == 1
    await committer.close()


async def test_a_batch_of_overlap_min_goes_beside_the_write_in_flight() -> None:
    writer = HeldWriter()
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000, max_in_flight=2, overlap_min=4)
    tasks = [asyncio.ensure_future(committer.submit(0))]
    await settle()
    tasks += [asyncio.ensure_future(committer.submit(i)) for i in (1, 2, 3, 4)]
    await settle()
    assert writer.started == [[0], [1, 2, 3, 4]] and writer.most_at_once == 2
    tasks += [asyncio.ensure_future(committer.submit(i)) for i in range(5, 15)]
    await settle()
    assert len(writer.started) == 2  # max_in_flight: a third write waits, however big its batch
    for gate in writer.gates:
        gate.set()
    await settle()
    assert writer.started[2] == list(range(5, 15))
    writer.gates[2].set()
    await asyncio.gather(*tasks)
    await committer.close()


async def test_close_writes_a_small_batch_without_waiting_for_it_to_grow() -> None:
    writer = HeldWriter()
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000, max_in_flight=2, overlap_min=50)
    tasks = [asyncio.ensure_future(committer.submit(i)) for i in range(3)]
    await settle()
    tasks.append(asyncio.ensure_future(committer.submit(3)))
    await settle()
    closing = asyncio.ensure_future(committer.close())
    await settle()
    assert writer.started == [[0, 1, 2], [3]]  # closing: the small batch goes beside the first
    for gate in writer.gates:
        gate.set()
    await asyncio.gather(*tasks, closing)


async def trickle(committer: GroupCommitter, count: int) -> list[asyncio.Future]:
    """One call per loop iteration, as calls arrive from a busy socket set."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.ensure_future(committer.submit(i)))
        await asyncio.sleep(0)
    return tasks


async def test_a_lone_call_does_not_wait_to_be_joined() -> None:
    writer = Writer()
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000, gather_seconds=30)
    await asyncio.wait_for(committer.submit(1), timeout=1)  # one quiet loop iteration, not 30 s
    assert writer.batches == [[1]]
    await committer.close()


async def test_calls_still_arriving_join_the_batch_before_it_is_written() -> None:
    writer = HeldWriter()
    committer = GroupCommitter(writer, max_batch=100, max_pending=1000, overlap_min=16, gather_seconds=30)
    tasks = await trickle(committer, 10)
    await settle()
    assert writer.started == [list(range(10))]  # without gathering: [0] went alone, the rest behind it
    writer.gates[0].set()
    await asyncio.gather(*tasks)
    await committer.close()


async def release_all(writer: HeldWriter, tasks: list[asyncio.Future]) -> None:
    while not all(task.done() for task in tasks):
        for gate in writer.gates:
            gate.set()
        await asyncio.sleep(0)


async def test_gathering_stops_at_overlap_min() -> None:
    writer = HeldWriter()
    committer = GroupCommitter(
        writer, max_batch=100, max_pending=1000, max_in_flight=1, overlap_min=16, gather_seconds=30
    )
    tasks = await trickle(committer, 40)
    assert writer.started[0] == list(range(16))
    await release_all(writer, tasks)
    await committer.close()


async def test_gathering_stops_after_gather_seconds() -> None:
    writer = HeldWriter()
    committer = GroupCommitter(writer, max_batch=10_000, max_pending=10_000, overlap_min=10_000, gather_seconds=0.001)
    tasks = await trickle(committer, 3000)  # thousands of loop iterations take longer than 1 ms
    assert 0 < len(writer.started[0]) < 3000
    await release_all(writer, tasks)
    await committer.close()
