"""A worker's Prometheus metrics, served on INGEST_WORKER_METRICS_PORT by `serve`.

Recorded once per stored batch (thousands of calls), so their cost does not show in the drain.

Events stored by type: `store` reports how many rows were new, not which. When every parsed
event of a batch was new (the common case: duplicates come from retries and backfill overlap)
the per-type split is the parsed events' types, exactly. When only some were new, the split is
unknown and those rows are counted under `event_type="unattributed"`; the sum over all types
is always the exact number of rows stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from workers.events.model import Event
    from workers.storage.store import StoreResult

log = logging.getLogger("workers.metrics")

PREFIX = "copernica_ingest"
UNATTRIBUTED = "unattributed"
STORE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STORE_BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000)


def process_registry() -> CollectorRegistry:
    """A registry of a process's own (the receiver's metrics never appear on its port), with the
    standard process, platform and GC metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


REGISTRY = process_registry()  # the worker's

EVENTS_STORED = PromCounter(
    f"{PREFIX}_events_stored",
    "New rows in events, by event type (see workers/metrics.py on 'unattributed').",
    ["event_type"],
    registry=REGISTRY,
)
DUPLICATES = PromCounter(
    f"{PREFIX}_duplicates_skipped", "Events already stored (same event_key), skipped.", registry=REGISTRY
)
REJECTED = PromCounter(
    f"{PREFIX}_rejected", "Calls kept in rejected_events (unparseable, or refused by PostgreSQL).", registry=REGISTRY
)
STORE_SECONDS = Histogram(
    f"{PREFIX}_store_seconds",
    "Seconds to parse and store one worker batch in PostgreSQL (one transaction).",
    buckets=STORE_SECONDS_BUCKETS,
    registry=REGISTRY,
)
STORE_BATCH_CALLS = Histogram(
    f"{PREFIX}_store_batch_calls",
    "Calls in one worker batch (the job's own and those it borrowed).",
    buckets=STORE_BATCH_BUCKETS,
    registry=REGISTRY,
)
STORE_FAILURES = PromCounter(
    f"{PREFIX}_store_failures",
    "Store jobs that failed (RQ retries them with back-off, then keeps them failed).",
    registry=REGISTRY,
)
BATCHES_RETURNED = PromCounter(
    f"{PREFIX}_batches_returned",
    "Borrowed batches put back on the queue: their store failed, or their borrower died (abandoned).",
    ["reason"],
    registry=REGISTRY,
)
RETURNED_STORE_FAILED = BATCHES_RETURNED.labels("store_failed")
RETURNED_ABANDONED = BATCHES_RETURNED.labels("abandoned")


_Chunk = TypeVar("_Chunk", bound="tuple[Sequence[Event], Any, Any]")  # events first (store.Chunk)


class TypeTally:
    """Counts the event types of parsed chunks as they flow to the store (a pass-through)."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()

    def add(self, events: Iterable[Event]) -> None:
        self.types.update(event.event_type for event in events)

    def chunks(self, chunks: Iterable[_Chunk]) -> Iterator[_Chunk]:
        for chunk in chunks:
            self.add(chunk[0])
            yield chunk

    @property
    def events(self) -> int:
        return sum(self.types.values())


def record_store(tally: TypeTally, result: StoreResult, calls: int, seconds: float) -> None:
    """One batch stored: rows by type, duplicates, rejects, its latency and size."""
    if result.stored:
        if result.stored == tally.events:  # every parsed event is a new row: the split is exact
            for event_type, count in tally.types.items():
                EVENTS_STORED.labels(event_type).inc(count)
        else:
            EVENTS_STORED.labels(UNATTRIBUTED).inc(result.stored)
    if result.duplicates:
        DUPLICATES.inc(result.duplicates)
    if result.rejected:
        REJECTED.inc(result.rejected)
    STORE_SECONDS.observe(seconds)
    STORE_BATCH_CALLS.observe(calls)


class StoreRecorder:
    """Times one store job and records its outcome: `with recorder, coalesce.borrowing(...)`.

    On an exception (the job fails; RQ retries it) it counts the failure and the borrowed
    batches that went back to the queue (`borrowed`, set once they are held)."""

    def __init__(self) -> None:
        self.tally = TypeTally()
        self.borrowed = 0
        self.started = 0.0

    def __enter__(self) -> StoreRecorder:
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None and issubclass(kind, Exception):
            record_failure(self.borrowed)

    def stored(self, result: StoreResult, calls: int) -> None:
        record_store(self.tally, result, calls, time.perf_counter() - self.started)


def record_failure(returned_batches: int) -> None:
    """A store job failed; `returned_batches` borrowed batches went back to the queue."""
    STORE_FAILURES.inc()
    if returned_batches:
        RETURNED_STORE_FAILED.inc(returned_batches)


def record_abandoned(returned_batches: int) -> None:
    if returned_batches:
        RETURNED_ABANDONED.inc(returned_batches)


def serve(
    port: int,
    addr: str = "0.0.0.0",
    *,
    registry: CollectorRegistry = REGISTRY,
    hint: str = "set INGEST_WORKER_METRICS_PORT per worker",
) -> WSGIServer | None:
    """Serve `registry` (the worker's by default) on `port` from a daemon thread; None when
    `port` is 0 or taken.

    A port that is taken (two workers on one machine with the same setting) costs the metrics,
    not the worker: it logs a warning (ending in `hint`) and drains the queue all the same."""
    if not port:
        return None
    try:
        server = make_server(addr, port, make_wsgi_app(registry), ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as exc:
        log.warning("metrics not served on port %d: %s (%s)", port, exc, hint)
        return None
    # A short poll: `stop` waits for the loop to see it, and a burst worker exits only then.
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": STOP_POLL_SECONDS}, name="metrics", daemon=True
    ).start()
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return server


STOP_POLL_SECONDS = 0.05


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # `format`: the base class's name
        """Scrapes are not worth a log line each."""


def stop(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
