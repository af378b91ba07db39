"""The overview's history: a bounded rolling series of samples, kept in Redis.

The receivers keep no shared store of what they answered (each process has its own
`/metrics`) and RQ forgets finished jobs, so charts of the last hour and day need samples taken
over time. Every INGEST_CONSOLE_SAMPLE_INTERVAL seconds the console reads what `ingest stats
--watch` reads (`ingest.cli.watch.Watcher`: the queue and its oldest job, started and failed
jobs, the rows written into `events` (`workers.storage.reports.events_inserted`), events per
type and rejected calls of the last hour, and the receivers' `/metrics` of
INGEST_CONSOLE_METRICS_URLS) and appends one JSON record to a Redis list trimmed to 24 hours.
With several console replicas only one samples per interval (a `SET NX` slot).
Rates are differences of successive samples; a counter that went back (a restarted
receiver; rows written into `events`, after a partition was dropped) gives no rate for that
step. Records taken before migration 0014 hold `max(events.id)` under another key (`maxid`):
no rate is made across the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from common.settings import Settings
from ingest.cli.watch import Sample, Watcher

log = logging.getLogger("console.samples")

SAMPLES_KEY = "ingest:console:samples"  # a list of JSON records, newest first
SLOT_KEY = "ingest:console:slot:"  # + slot number: who samples this interval
KEEP_SECONDS = 24 * 3600
MAX_SAMPLES = 17280  # a hard bound whatever the interval (24 h at 5 s)


def record(sample: Sample, now: float) -> dict[str, Any]:
    """The stored form of one sample (short keys: thousands of these are read per page)."""
    return {
        "t": now,
        "q": sample.queued_jobs,
        "age": sample.oldest_age_s,
        "started": sample.started_jobs,
        "failed": sample.failed_jobs,
        "ins": sample.events_inserted,
        "acc": sample.accepted_total,
        "u503": sample.unavailable_total,
        "refused": sample.refused_total,
        "rej1h": sample.rejected_last_hour,
        "types1h": sample.last_hour,
        "errors": sample.errors,
    }


def save(conn: redis.Redis, rec: dict[str, Any], interval: float) -> bool:
    """Append `rec` unless another console sampled this interval; keep 24 hours."""
    slot = int(rec["t"] // interval)
    if not conn.set(f"{SLOT_KEY}{slot}", b"1", nx=True, ex=max(2, math.ceil(interval * 3))):
        return False
    keep = min(MAX_SAMPLES, math.ceil(KEEP_SECONDS / interval) + 1)
    with conn.pipeline(transaction=True) as pipe:
        pipe.lpush(SAMPLES_KEY, orjson.dumps(rec))
        pipe.ltrim(SAMPLES_KEY, 0, keep - 1)
        pipe.execute()
    return True


def load(conn: redis.Redis, since: float) -> list[dict[str, Any]]:
    """The records taken since `since` (epoch seconds), oldest first."""
    out = []
    for raw in conn.lrange(SAMPLES_KEY, 0, MAX_SAMPLES - 1):  # newest first
        rec = orjson.loads(raw)
        if rec["t"] < since:
            break
        out.append(rec)
    out.reverse()
    return out


def _rate(new: float | None, old: float | None, seconds: float) -> float | None:
    if new is None or old is None or seconds <= 0 or new < old:
        return None
    return (new - old) / seconds


@dataclass
class Series:
    """What the overview's charts draw, one list per line, aligned on `times` (epoch ms)."""

    times: list[float] = field(default_factory=list)
    accepted: list[float | None] = field(default_factory=list)  # calls accepted per second
    stored: list[float | None] = field(default_factory=list)  # events stored per second
    unavailable: list[float | None] = field(default_factory=list)  # 503 answers per second
    queue: list[float | None] = field(default_factory=list)  # queued jobs
    oldest_age: list[float | None] = field(default_factory=list)  # seconds
    rejected: list[float | None] = field(default_factory=list)  # rejected in the hour before
    refused: dict[str, list[float | None]] = field(default_factory=dict)  # per second, by reason

    def as_json(self) -> dict[str, Any]:
        return {
            "times": self.times,
            "accepted": self.accepted,
            "stored": self.stored,
            "unavailable": self.unavailable,
            "queue": self.queue,
            "oldest_age": self.oldest_age,
            "rejected": self.rejected,
            "refused": self.refused,
        }


def thin(records: Sequence[dict[str, Any]], step: float) -> list[dict[str, Any]]:
    """The last record of every `step` seconds (the 24-hour charts need no 10-second points)."""
    out: list[dict[str, Any]] = []
    for rec in records:
        if out and int(out[-1]["t"] // step) == int(rec["t"] // step):
            out[-1] = rec
        else:
            out.append(rec)
    return out


def series(records: Sequence[dict[str, Any]]) -> Series:
    """Rates between successive records, gauges as read; the first record gives no rate."""
    result = Series()
    reasons = sorted({reason for rec in records for reason in (rec.get("refused") or {})})
    result.refused = {reason: [] for reason in reasons}
    previous: dict[str, Any] | None = None
    for rec in records:
        seconds = rec["t"] - previous["t"] if previous else 0.0
        old = previous or {}
        result.times.append(rec["t"] * 1000)
        result.accepted.append(_rate(rec.get("acc"), old.get("acc"), seconds))
        result.stored.append(_rate(rec.get("ins"), old.get("ins"), seconds))
        result.unavailable.append(_rate(rec.get("u503"), old.get("u503"), seconds))
        result.queue.append(rec.get("q"))
        result.oldest_age.append(rec.get("age"))
        result.rejected.append(rec.get("rej1h"))
        for reason in reasons:
            now_refused, old_refused = rec.get("refused") or {}, old.get("refused") or {}
            result.refused[reason].append(
                _rate(
                    now_refused.get(reason, 0.0) if rec.get("refused") is not None else None,
                    old_refused.get(reason, 0.0) if old.get("refused") is not None else None,
                    seconds,
                )
            )
        previous = rec
    return result


def growth(records: Sequence[dict[str, Any]], key: str, *, restarts: bool = True) -> float | None:
    """How much a counter grew over `records`. Where it went back: with `restarts` (a process's
    counter, restarted) it counts from zero again; without (a total that lost a part, as the
    rows written into `events` when a partition is dropped) that step counts nothing."""
    values: list[float] = [rec[key] for rec in records if rec.get(key) is not None]
    if not values:
        return None
    step = _step if restarts else _step_or_nothing
    return sum(step(a, b) for a, b in itertools.pairwise(values))


def _step(old: float, new: float) -> float:
    return new - old if new >= old else new


def _step_or_nothing(old: float, new: float) -> float:
    return max(new - old, 0.0)


def refused_growth(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Refused calls over `records`, by reason (counted from zero after a restart)."""
    totals: dict[str, float] = {}
    for old, new in itertools.pairwise(rec for rec in records if rec.get("refused") is not None):
        for reason, value in new["refused"].items():
            totals[reason] = totals.get(reason, 0.0) + _step(old["refused"].get(reason, 0.0), value)
    return totals


async def run_sampler(settings: Settings, conn: redis.Redis, stop: asyncio.Event) -> None:
    """Sample every interval until `stop` is set; a failed round is logged and the next tries again."""
    interval = settings.console_sample_interval
    watcher = Watcher(settings, metrics_urls=list(settings.console_metrics_urls or ()), interval=interval)
    try:
        while not stop.is_set():
            started = time.time()
            try:
                sample = await asyncio.to_thread(watcher.take)
                await asyncio.to_thread(save, conn, record(sample, time.time()), interval)
            except Exception:  # Redis gone: the next round tries again
                log.warning("console sample failed", exc_info=True)
            wait = max(0.05, interval - (time.time() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    finally:
        await asyncio.to_thread(watcher.close)
