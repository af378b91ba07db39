"""What the scheduled reconcile found, as Prometheus gauges on a metrics port of its own.

The reconcile (yesterday and today every hour, and every mailing with events in the last 7
days) compares what Copernica knows with what is stored. Each run *sets* these gauges to what
that run found; they are not counters, because a later run that finds the gap filled (by the
backfill it triggered, or by Copernica's retries) must bring them back to 0:

- `copernica_ingest_reconcile_missing_events{source}`: events Copernica has and `events` has
  not, as found by comparing the logfiles (`source="logfile"`) or the per-mailing statistics
  (`source="statistics"`);
- `copernica_ingest_copernica_failed_calls`: webhook calls Copernica logged as failed in the
  window the run checked (its `feedback-loop-errors` logfile: calls to this receiver that got
  an error or no answer);
- `copernica_ingest_reconcile_last_success_timestamp_seconds`: Unix time the last run
  finished without error. It is 0 until the first success, so an alert on its age
  (`deploy/prometheus/alerts.yml`) fires for a reconcile that never succeeds.

The registry is separate from the worker's and the receiver's, so a process that imports all
three never serves one's metrics on another's port; `serve` puts it on a port like a worker's.
"""

from __future__ import annotations

import logging
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import Gauge

from workers import metrics as worker_metrics

log = logging.getLogger("workers.backfill.reconcile_metrics")

PREFIX = worker_metrics.PREFIX
LOGFILE = "logfile"
STATISTICS = "statistics"
SOURCES = (LOGFILE, STATISTICS)

REGISTRY = worker_metrics.process_registry()  # the reconcile's own

MISSING_EVENTS = Gauge(
    f"{PREFIX}_reconcile_missing_events",
    "Events Copernica has that are not stored, as the last reconcile found them, by source (logfile, statistics).",
    ["source"],
    registry=REGISTRY,
)
FAILED_CALLS = Gauge(
    f"{PREFIX}_copernica_failed_calls",
    "Webhook calls Copernica logged as failed (feedback-loop-errors), as the last reconcile found them.",
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    f"{PREFIX}_reconcile_last_success_timestamp_seconds",
    "Unix time the last reconcile run finished without error; 0 before the first.",
    registry=REGISTRY,
)
for _source in SOURCES:  # both series exist (at 0) before the first run: alerts and panels see them
    MISSING_EVENTS.labels(_source)


def _count(n: int) -> int:
    if n < 0:
        raise ValueError(f"a count cannot be negative: {n}")
    return n


def record_logfile_missing(n: int) -> None:
    """The last run found `n` events in Copernica's logfiles that are not stored."""
    MISSING_EVENTS.labels(LOGFILE).set(_count(n))


def record_statistics_missing(n: int) -> None:
    """The last run found `n` events counted in mailing statistics that are not stored."""
    MISSING_EVENTS.labels(STATISTICS).set(_count(n))


def record_failed_calls(n: int) -> None:
    """Copernica logged `n` failed webhook calls in the window the last run checked."""
    FAILED_CALLS.set(_count(n))


def record_success(now: float | None = None) -> None:
    """A run finished without error at `now` (Unix seconds; the current time by default)."""
    LAST_SUCCESS.set(time.time() if now is None else now)


def serve(port: int, addr: str = "0.0.0.0") -> WSGIServer | None:
    """Serve REGISTRY on `port` from a daemon thread; None when `port` is 0 or taken (the run
    goes on without metrics). Stop it with `stop`."""
    return worker_metrics.serve(port, addr, registry=REGISTRY, hint="give the reconcile a metrics port of its own")


stop = worker_metrics.stop
