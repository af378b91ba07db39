"""The reconcile's gauges (workers.backfill.reconcile_metrics), scraped over HTTP from their port."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.processes import free_port
from workers import metrics as worker_metrics
from workers.backfill import reconcile_metrics

MISSING = "copernica_ingest_reconcile_missing_events"
FAILED_CALLS = "copernica_ingest_copernica_failed_calls"
LAST_SUCCESS = "copernica_ingest_reconcile_last_success_timestamp_seconds"


@pytest.fixture
def server() -> Iterator[WSGIServer]:
    served = reconcile_metrics.serve(free_port(), addr="127.0.0.1")
    assert served is not None
    try:
        yield served
    finally:
        reconcile_metrics.stop(served)


def scrape(server: WSGIServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = server.server_address[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_gauges_are_served_with_what_the_last_run_found(server: WSGIServer) -> None:
    reconcile_metrics.record_logfile_missing(7)
    reconcile_metrics.record_statistics_missing(3)
    reconcile_metrics.record_failed_calls(2)
    reconcile_metrics.record_success(1_795_694_401.5)
    served = scrape(server)
    assert served[(MISSING, (("source", "logfile"),))] == 7
    assert served[(MISSING, (("source", "statistics"),))] == 3
    assert served[(FAILED_CALLS, ())] == 2
    assert served[(LAST_SUCCESS, ())] == 1_795_694_401.5
    assert ("process_cpu_seconds_total", ()) in served

    # The next run found the gaps filled: gauges, not counters, so they come back to 0.
    reconcile_metrics.record_logfile_missing(0)
    reconcile_metrics.record_statistics_missing(0)
    reconcile_metrics.record_failed_calls(0)
    before = time.time()
    reconcile_metrics.record_success()
    served = scrape(server)
    assert served[(MISSING, (("source", "logfile"),))] == 0
    assert served[(MISSING, (("source", "statistics"),))] == 0
    assert served[(FAILED_CALLS, ())] == 0
    assert before <= served[(LAST_SUCCESS, ())] <= time.time()


def test_both_sources_exist_before_the_first_run() -> None:
    """Alerts and panels see both series (at 0) as soon as the port answers."""
    samples = {
        (s.name, s.labels.get("source")) for family in reconcile_metrics.REGISTRY.collect() for s in family.samples
    }
    assert {(MISSING, "logfile"), (MISSING, "statistics"), (FAILED_CALLS, None), (LAST_SUCCESS, None)} <= samples


def test_the_registry_is_its_own(server: WSGIServer) -> None:
    """Neither the worker's nor the receiver's metrics on the reconcile's port, nor the other way round."""
    served = {name for name, _ in scrape(server)}
    assert not any(name.startswith(("copernica_ingest_events_stored", "copernica_ingest_requests")) for name in served)
    worker_port = worker_metrics.serve(free_port(), addr="127.0.0.1")
    assert worker_port is not None
    try:
        assert not any(name.startswith("copernica_ingest_reconcile") for name, _ in scrape(worker_port))
    finally:
        worker_metrics.stop(worker_port)


def test_a_negative_count_is_refused() -> None:
    for record in (
        reconcile_metrics.record_logfile_missing,
        reconcile_metrics.record_statistics_missing,
        reconcile_metrics.record_failed_calls,
    ):
        with pytest.raises(ValueError, match="negative"):
            record(-1)


def test_a_taken_port_costs_the_metrics_not_the_run(server: WSGIServer) -> None:
    assert reconcile_metrics.serve(server.server_address[1], addr="127.0.0.1") is None
    assert reconcile_metrics.serve(0) is None
