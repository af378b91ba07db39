"""Real `ingest` processes for the tests: start, wait for readiness, stop, and check exits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ingest.embedded import free_port, stop_process, wait_for_port


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
        if not wait_for_port(port, proc, timeout=20):
            raise RuntimeError("receiver did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
