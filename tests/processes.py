"""Real `ingest` processes for the tests: start, wait for readiness, stop, and check exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ingest.embedded import free_port, port_is_open


def ingest_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_URL", "DATABASE_URL"))}
    return {**env, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "INGEST_LOG_LEVEL": "WARNING",
            "INGEST_AUTH": "none", "INGEST_WORKER_METRICS_PORT": "0", **extra}


def run_ingest(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@contextmanager
def receiver(env: dict[str, str], *args: str) -> Iterator[str]:
    """A real `ingest serve` on a free port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ingest", "serve", "--host", "127.0.0.1", "--port", str(port),
                             *args], env=env)
    try:
        deadline = time.monotonic() + 20
        while not port_is_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
