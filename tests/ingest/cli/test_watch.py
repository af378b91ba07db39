"""`ingest stats --watch`: what a frame shows for given numbers, sampling real servers, Ctrl-C."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import selectors
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from rich.console import Console

from common.settings import Settings
from ingest.cli.watch import Frame, Sample, Watcher, rate, render_frame, run_watch, sparkline
from tests.payloads import calls
from tests.processes import ingest_env, receiver, run_ingest
from tests.test_e2e import post_all
from tests.workers.storage.test_reports import counted
from tests.workers.test_jobs import _enqueue, _parsed, envelope
from workers.storage import store


def text_of(frame: Frame, width: int = 110) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(render_frame(frame))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_frame_shows_the_numbers_given() -> None:
    sample = Sample(
        at=0.0,
        queued_jobs=1234,
        oldest_age_s=42.25,
        started_jobs=2,
        failed_jobs=3,
        events_inserted=99,
        last_hour={"opened": 1500, "clicked": 20, "bounced": 1},
        rejected_last_hour=4,
        errors=["postgresql: connection refused"],
    )
    frame = Frame(
        queue="copernica",
        interval=2.0,
        sample=sample,
        intake_per_s=2500.5,
        drain_per_s=1800.0,
        growth_jobs_per_s=-3.5,
        unavailable_per_s=0.0,
        metrics_urls=2,
        depth_history=[0.0, 600.0, 1234.0],
        intake_history=[None, 2500.5],
        drain_history=[None, 1800.0],
        clock=datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC),
    )
    text = text_of(frame)
    assert "queue 'copernica' · every 2 s · 12:00:01 UTC" in text
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines() if line.strip()}
    assert "1,234 jobs" in lines["queue depth"] and "▁▄█" in lines["queue depth"]
    assert "42.2 s" in lines["lag"] or "42.3 s" in lines["lag"]
    assert "2,500.5 events/s" in lines["intake"]
    assert "1,800.0 events/s" in lines["drain"]
    assert "-3.5 jobs/s" in lines["queue growth"]
    assert "0.0 /s" in lines["503 answers"]
    assert "3" in lines["failed jobs"] and "ingest requeue-failed --all" in lines["failed jobs"]
    assert "4 calls" in lines["rejected (1 h)"]
    assert "events in the last hour" in text
    order = [
        line.split()[0]
        for line in text.splitlines()
        if line.strip().split(" ")[0] in {"opened", "clicked", "bounced", "total"}
    ]
    assert order == ["opened", "clicked", "bounced", "total"]  # most first, then the total
    assert any(line.split() == ["total", "1,521"] for line in text.splitlines())
    assert "! postgresql: connection refused" in text


def test_frame_without_receivers_or_history_is_honest() -> None:
    frame = Frame(
        queue="q",
        interval=0.5,
        sample=Sample(
            at=0.0, queued_jobs=0, oldest_age_s=0.0, started_jobs=0, failed_jobs=0, events_inserted=0, last_hour={}
        ),
    )
    text = text_of(frame)
    assert "give --metrics-url" in text
    assert "503 answers" not in text
    drain = next(line for line in text.splitlines() if line.startswith("drain"))
    assert drain.split()[1] == "-"  # one sample: no rate yet
    assert "requeue-failed" not in text


def test_sparkline_and_rates() -> None:
    assert sparkline([0, 1, 2, None, 4]) == "▁▃▅ █"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline(list(range(100)), width=10) == sparkline(list(range(90, 100)), width=10)
    assert rate(150, 100, 2.0) == 25.0
    assert rate(10, 100, 2.0) is None  # a counter that went back: a receiver restarted
    assert rate(None, 100, 2.0) is None and rate(1, 0, 0) is None


def _recent(wires: list[dict]) -> tuple:
    """The parsed calls, as if they had occurred just now (the last hour counts by occurred_at)."""
    events, rejects, origins = _parsed(wires)
    now = datetime.now(UTC)
    return [dataclasses.replace(e, occurred_at=now) for e in events], rejects, origins


@pytest.mark.usefixtures("redis_conn")
def test_watcher_samples_real_servers(settings: Settings, database_url: str) -> None:
    asyncio.run(_enqueue(settings, [envelope(b"a=1", "application/x-www-form-urlencoded")]))
    asyncio.run(_enqueue(settings, [envelope(b"a=2", "application/x-www-form-urlencoded")]))
    wires = [envelope(body, ct, i) for i, (_f, body, ct) in enumerate(calls(30))]
    with store.connect(database_url) as conn:
        store.store(conn, *_recent(wires[:18]))
        counted(conn)
        watcher = Watcher(settings, interval=0.1)
        try:
            first = watcher.next_frame()
            assert first.sample.errors == []
            assert first.sample.queued_jobs == 2 and first.sample.failed_jobs == 0
            assert 0 <= first.sample.oldest_age_s < 30
            assert sum(first.sample.last_hour.values()) == 18
            assert first.drain_per_s is None  # no rate from one sample
            store.store(conn, *_recent(wires[18:]))
            counted(conn)
            time.sleep(0.05)
            second = watcher.next_frame()
        finally:
            watcher.close()
    seconds = second.sample.at - first.sample.at
    assert second.sample.events_inserted - first.sample.events_inserted == 12  # the rows stored between
    assert abs(second.drain_per_s - 12 / seconds) < 1e-6
    assert second.growth_jobs_per_s == 0
    assert second.depth_history == [2.0, 2.0] and second.drain_history[0] is None


def test_watcher_reads_intake_from_the_receivers(redis_url: str, database_url: str, settings: Settings) -> None:
    with receiver(ingest_env(redis_url, database_url)) as base:
        watcher = Watcher(settings, metrics_urls=[f"{base}/metrics"], interval=0.1)
        try:
            first = watcher.next_frame()
            assert first.sample.accepted_total == 0
            assert asyncio.run(post_all(base, [(b, ct) for _f, b, ct in calls(7)])) == [200] * 7
            second = watcher.next_frame()
        finally:
            watcher.close()
    assert second.sample.accepted_total == 7
    assert second.intake_per_s is not None and second.intake_per_s > 0
    assert second.growth_jobs_per_s is not None and second.growth_jobs_per_s > 0
    assert "events/s" in next(line for line in text_of(second).splitlines() if line.startswith("intake"))


def test_a_source_that_is_down_is_shown_not_raised(settings: Settings) -> None:
    dead = Settings.from_env(
        {**settings.to_env(), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, dotenv=False
    )
    out = io.StringIO()
    assert run_watch(dead, interval=0.05, frames=2, console=Console(file=out, width=120)) == 0
    assert "! postgresql:" in out.getvalue()


@pytest.mark.usefixtures("db")
def test_stats_watch_frames(redis_url: str, database_url: str) -> None:
    done = run_ingest(
        ["stats", "--watch", "--interval", "0.1", "--frames", "2"], ingest_env(redis_url, database_url), timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "queue depth" in done.stdout and "events in the last hour" in done.stdout
    bad = run_ingest(["stats", "--watch", "--interval", "0"], ingest_env(redis_url, database_url), timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--interval" in bad.stderr


@pytest.mark.usefixtures("db")
def test_ctrl_c_ends_the_watch_with_exit_0(redis_url: str, database_url: str) -> None:
    env = {**ingest_env(redis_url, database_url), "TTY_COMPATIBLE": "1"}  # rich draws as on a terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "stats", "--watch", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        seen = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while b"queue depth" not in seen and time.monotonic() < deadline:
                if selector.select(timeout=0.5):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    seen += chunk
        assert b"queue depth" in seen, proc.stderr.read() if proc.poll() is not None else seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
