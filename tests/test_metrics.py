"""Prometheus metrics: the receiver's /metrics, a worker's port, and the Grafana dashboard."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from common.settings import Settings
from ingest import app as app_module
from ingest import metrics as receiver_metrics
from ingest.processes import free_port, stop_process
from tests.clients import receiver_client
from tests.conftest import ROOT
from tests.payloads import calls
from tests.processes import ingest_env, receiver
from tests.test_e2e import post_all
from tests.workers.test_jobs import _enqueue, envelope
from workers import jobs
from workers import metrics as worker_metrics
from workers.backfill import reconcile_metrics

FORM = "application/x-www-form-urlencoded"
DASHBOARD = ROOT / "deploy" / "grafana" / "copernica-ingest.json"


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def receiver_numbers() -> dict[str, float]:
    r = receiver_metrics.REGISTRY
    return {
        "200": value(r, "copernica_ingest_requests_total", status="200"),
        "400": value(r, "copernica_ingest_requests_total", status="400"),
        "415": value(r, "copernica_ingest_requests_total", status="415"),
        "accepted": value(r, "copernica_ingest_events_accepted_total"),
        "batch_sum": value(r, "copernica_ingest_batch_size_sum"),
        "batch_count": value(r, "copernica_ingest_batch_size_count"),
        "enqueue_count": value(r, "copernica_ingest_enqueue_seconds_count"),
    }


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    async with receiver_client(settings) as client:
        yield client


# --- the receiver ------------------------------------------------------------------------------


@pytest.mark.usefixtures("redis_conn")
async def test_metrics_count_answers_events_and_batches(client: TestClient) -> None:
    before = receiver_numbers()
    bodies = [body for _f, body, ct in calls(10) if ct == FORM][:5]
    statuses = await asyncio.gather(
        *(client.post("/copernica", data=b, headers={"Content-Type": FORM}) for b in bodies)
    )
    assert [s.status for s in statuses] == [200] * 5
    assert (await client.post("/copernica", data=b"", headers={"Content-Type": FORM})).status == 400
    assert (await client.post("/copernica", data=b"x", headers={"Content-Type": "text/plain"})).status == 415
    assert (await client.get("/healthz")).status == 200  # other routes are not counted

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    served = scrape(await resp.text())
    after = receiver_numbers()
    delta = {key: after[key] - before[key] for key in after}
    assert delta["200"] == 5 and delta["400"] == 1 and delta["415"] == 1
    assert delta["accepted"] == 5
    assert delta["batch_sum"] == 5  # the batch size observations add up to the calls queued
    assert 1 <= delta["batch_count"] <= 5 and delta["enqueue_count"] == delta["batch_count"]
    assert served[("copernica_ingest_requests_total", (("status", "200"),))] == after["200"]
    assert served[("copernica_ingest_events_accepted_total", ())] == after["accepted"]
    assert ("copernica_ingest_enqueue_seconds_bucket", (("le", "0.005"),)) in served


async def test_queue_gauges_equal_the_rq_queue(client: TestClient, redis_conn: redis.Redis) -> None:
    bodies = [body for _f, body, ct in calls(3) if ct == FORM]
    for body in bodies:  # one at a time: one job each
        assert (await client.post("/copernica", data=body, headers={"Content-Type": FORM})).status == 200
    await asyncio.sleep(0.2)
    served = scrape(await (await client.get("/metrics")).text())
    queue = Queue("copernica", connection=redis_conn)
    assert queue.count == len(bodies)
    assert served[("copernica_ingest_queue_depth", ())] == queue.count
    assert 0.15 <= served[("copernica_ingest_queue_oldest_age_seconds", ())] < 30
    assert served[("copernica_ingest_failed_jobs", ())] == 0
    assert served[("copernica_ingest_pending_calls", ())] == 0

    redis_conn.delete(queue.key)
    served = scrape(await (await client.get("/metrics")).text())
    assert served[("copernica_ingest_queue_depth", ())] == 0
    assert served[("copernica_ingest_queue_oldest_age_seconds", ())] == 0


@pytest.mark.usefixtures("redis_url")
async def test_metrics_answer_when_redis_is_down() -> None:
    dead = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "INGEST_AUTH": "none"}, dotenv=False)
    async with receiver_client(dead) as client:
        started = time.monotonic()
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert time.monotonic() - started < 2
        served = scrape(await resp.text())
    for name in (
        "copernica_ingest_queue_depth",
        "copernica_ingest_queue_oldest_age_seconds",
        "copernica_ingest_failed_jobs",
    ):
        assert math.isnan(served[(name, ())]), name


async def test_metrics_answer_when_redis_hangs() -> None:
    """A Redis that accepts the connection and never answers costs the scrape at most the timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        hung = Settings.from_env(
            {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "INGEST_AUTH": "none", "INGEST_REDIS_TIMEOUT": "5"},
            dotenv=False,
        )
        async with receiver_client(hung) as client:
            started = time.monotonic()
            resp = await client.get("/metrics")
            elapsed = time.monotonic() - started
            assert resp.status == 200
            assert math.isnan(scrape(await resp.text())[("copernica_ingest_queue_depth", ())])
        assert elapsed < receiver_metrics.SCRAPE_REDIS_TIMEOUT + 1
    finally:
        server.close()


def test_refusals_come_from_ingest_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("ingest.auth")
    fake.REFUSALS = Counter({"bad signature": 3, "unknown account": 1})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ingest.auth", fake)
    r = receiver_metrics.REGISTRY
    assert value(r, "copernica_ingest_refused_total", reason="bad signature") == 3
    assert value(r, "copernica_ingest_refused_total", reason="unknown account") == 1
    del fake.REFUSALS  # a module without the counter yet: no samples, no error
    assert receiver_metrics.refusals() == {}


async def test_a_refused_call_is_counted_by_status_and_reason(settings: Settings, redis_conn: redis.Redis) -> None:
    guarded = Settings.from_env(
        {**settings.to_env(), "INGEST_AUTH": "token", "INGEST_TOKENS": "s3cret-token-0123456789"}, dotenv=False
    )
    before = dict(receiver_metrics.refusals())
    async with receiver_client(guarded) as client:
        resp = await client.post("/copernica?token=wrong", data=b"a=1", headers={"Content-Type": FORM})
        assert resp.status == 401
        served = scrape(await (await client.get("/metrics")).text())
    after = receiver_metrics.refusals()
    [code] = [code for code in after if after[code] != before.get(code, 0)]
    assert served[("copernica_ingest_refused_total", (("reason", code),))] == after[code]
    assert served[("copernica_ingest_requests_total", (("status", "401"),))] >= 1
    assert Queue("copernica", connection=redis_conn).count == 0


async def test_an_unexpected_error_is_counted_as_500(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> dict:
        raise RuntimeError("bug")

    monkeypatch.setattr(app_module, "wire", broken)
    before = dict(receiver_metrics.ANSWERS)
    async with receiver_client(settings) as client:
        resp = await client.post("/copernica", data=b"a=1", headers={"Content-Type": FORM})
        assert resp.status == 500
        assert (await client.post("/copernica", data=b"", headers={"Content-Type": FORM})).status == 400
    assert receiver_metrics.ANSWERS[500] == before.get(500, 0) + 1
    assert receiver_metrics.ANSWERS[400] == before.get(400, 0) + 1


def test_a_fresh_receiver_shows_exact_counts(redis_url: str, database_url: str, redis_conn: redis.Redis) -> None:
    """A real `ingest serve`: five posts are exactly five, from a process that saw nothing else."""
    bodies = [(body, ct) for _f, body, ct in calls(5)]
    with receiver(ingest_env(redis_url, database_url)) as base:
        assert asyncio.run(post_all(base, bodies)) == [200] * 5
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            served = scrape(resp.read().decode())
    assert served[("copernica_ingest_requests_total", (("status", "200"),))] == 5
    assert served[("copernica_ingest_events_accepted_total", ())] == 5
    assert served[("copernica_ingest_batch_size_sum", ())] == 5
    assert (
        served[("copernica_ingest_batch_size_bucket", (("le", "+Inf"),))]
        == served[("copernica_ingest_batch_size_count", ())]
    )
    assert served[("copernica_ingest_queue_depth", ())] == Queue("copernica", connection=redis_conn).count
    assert ("process_resident_memory_bytes", ()) in served


# --- the worker --------------------------------------------------------------------------------


def worker_numbers() -> dict[str, float]:
    r = worker_metrics.REGISTRY
    stored = {}
    for family in r.collect():
        if family.name == "copernica_ingest_events_stored":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    stored[sample.labels["event_type"]] = sample.value
    return {
        **{f"stored:{kind}": count for kind, count in stored.items()},
        "duplicates": value(r, "copernica_ingest_duplicates_skipped_total"),
        "rejected": value(r, "copernica_ingest_rejected_total"),
        "store_count": value(r, "copernica_ingest_store_seconds_count"),
        "batch_calls": value(r, "copernica_ingest_store_batch_calls_sum"),
        "failures": value(r, "copernica_ingest_store_failures_total"),
    }


def changed(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


@pytest.fixture
def in_process_job(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[None]:
    """`workers.jobs.store_batch` run here (no RQ job: nothing borrowed) against the test servers."""
    monkeypatch.setattr(jobs, "_settings", settings)
    monkeypatch.setattr(jobs, "_conn", None)
    yield
    if jobs._conn is not None:
        jobs._conn.close()


@pytest.mark.usefixtures("in_process_job")
def test_store_batch_records_worker_metrics() -> None:
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(18))]
    events, _origins, _rejects = jobs.parse_calls(wires, "Europe/Amsterdam")
    by_type = Counter(event.event_type for event in events)

    before = worker_numbers()
    jobs.store_batch([*wires, envelope(b"not json", "application/json", 99)])
    delta = changed(before, worker_numbers())
    assert {k.split(":", 1)[1]: v for k, v in delta.items() if k.startswith("stored:")} == by_type
    assert delta["rejected"] == 1 and delta["store_count"] == 1 and delta["batch_calls"] == 19
    assert "duplicates" not in delta

    before = worker_numbers()
    jobs.store_batch(wires)  # every one a duplicate now
    delta = changed(before, worker_numbers())
    assert delta == {"duplicates": 18, "store_count": 1, "batch_calls": 18}

    before = worker_numbers()
    more = [envelope(body, ct, 100 + i) for i, (_f, body, ct) in enumerate(calls(20)[18:])]
    jobs.store_batch(wires[:3] + more)  # some new, some not: the split is unknown, the sum exact
    delta = changed(before, worker_numbers())
    assert delta == {"stored:unattributed": 2, "duplicates": 3, "store_count": 1, "batch_calls": 5}


def test_failed_store_is_counted(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    dead = Settings.from_env(
        {**settings.to_env(), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, dotenv=False
    )
    monkeypatch.setattr(jobs, "_settings", dead)
    monkeypatch.setattr(jobs, "_conn", None)
    before = worker_numbers()
    with pytest.raises(Exception):  # noqa: B017 - whatever psycopg raises for a refused connection
        jobs.store_batch([envelope(calls(1)[0][1], FORM)])
    assert changed(before, worker_numbers()) == {"failures": 1}


def test_worker_serves_its_metrics(redis_url: str, database_url: str, settings: Settings) -> None:
    """A real `ingest worker` drains five calls and shows them on INGEST_WORKER_METRICS_PORT."""
    port = free_port()
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(5))]
    asyncio.run(_enqueue(settings, wires))
    env = ingest_env(redis_url, database_url, INGEST_WORKER_METRICS_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "worker"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        stored = 0.0
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    served = scrape(resp.read().decode())
            except OSError:
                served = {}
            stored = sum(v for (name, _labels), v in served.items() if name == "copernica_ingest_events_stored_total")
            if stored >= 5:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        assert stored == 5
        assert served[("copernica_ingest_store_seconds_count", ())] >= 1
        assert not any(name.startswith("copernica_ingest_requests") for name, _ in served)  # not the receiver's
    finally:
        stop_process(proc)


def test_a_taken_port_costs_the_metrics_not_the_worker() -> None:
    server = worker_metrics.serve(free_port(), addr="127.0.0.1")
    assert server is not None
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"copernica_ingest_store_seconds_bucket" in resp.read()
        assert worker_metrics.serve(port, addr="127.0.0.1") is None
    finally:
        worker_metrics.stop(server)
    assert worker_metrics.serve(0) is None


# --- the dashboard -----------------------------------------------------------------------------


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can export, labelled metrics without children included."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert all(p.get("targets") for p in panels), "a panel without a query"
    used = {name for expr in exprs for name in re.findall(r"\bcopernica_ingest_[a-z_]+", expr)}
    known = set().union(*(exported_names(m.REGISTRY) for m in (receiver_metrics, worker_metrics, reconcile_metrics)))
    assert used and used <= known, used - known
    for wanted in (
        "copernica_ingest_requests_total",
        "copernica_ingest_enqueue_seconds_bucket",
        "copernica_ingest_queue_depth",
        "copernica_ingest_queue_oldest_age_seconds",
        "copernica_ingest_events_stored_total",
        "copernica_ingest_rejected_total",
        "copernica_ingest_refused_total",
        "copernica_ingest_store_seconds_bucket",
        "copernica_ingest_reconcile_missing_events",
        "copernica_ingest_copernica_failed_calls",
        "copernica_ingest_reconcile_last_success_timestamp_seconds",
    ):
        assert wanted in used, wanted
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert all(t["refId"] for p in panels for t in p["targets"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def test_stopping_the_metrics_server_is_prompt() -> None:
    """A burst worker exits once its metrics server stopped: that must not wait out a long poll."""
    took = []
    for _ in range(3):
        server = worker_metrics.serve(free_port(), addr="127.0.0.1")
        assert server is not None
        time.sleep(0.01)
        started = time.perf_counter()
        worker_metrics.stop(server)
        took.append(time.perf_counter() - started)
    assert max(took) < 0.2, took
