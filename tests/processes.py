"""Real `ingest` processes for the tests: start, wait for readiness, stop or kill, and check exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ingest.processes import free_port, stop_process, wait_for_port

WEBHOOK_PATH = "/copernica"


def ingest_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_URL", "DATABASE_URL"))}
    return {
        **env,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "INGEST_LOG_LEVEL": "WARNING",
        "INGEST_AUTH": "none",
        "INGEST_WORKER_METRICS_PORT": "0",
        **extra,
    }


def run_ingest(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class Process:
    """A real `python -m ingest ...` child that a test may wait for, stop, SIGTERM or SIGKILL.
    `quiet`: its output is dropped (a worker under a stream of faults logs every retry);
    otherwise it goes where the test's does (pytest shows it when the test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], *, quiet: bool = True) -> None:
        self.args, self.env, self.quiet = args, env, quiet
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        output = subprocess.DEVNULL if self.quiet else None
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "ingest", *self.args], env=self.env, stdout=output, stderr=output
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not started"
        return self.popen.pid

    def wait(self, timeout: float) -> int:
        """Its exit code once it has exited; subprocess.TimeoutExpired after `timeout` seconds."""
        assert self.popen is not None, "not started"
        return self.popen.wait(timeout)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit code (subprocess.TimeoutExpired if it takes longer)."""
        assert self.popen is not None, "not started"
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """A graceful stop: SIGTERM, then SIGKILL if it lingers."""
        if self.popen is not None:
            stop_process(self.popen)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Receiver(str):
    """A running `ingest serve`. The string is its base URL (`http://127.0.0.1:PORT`), so it
    formats and parses as one; `url` is its webhook endpoint, `proc` its `Process`."""

    proc: Process

    @property
    def url(self) -> str:
        return self + WEBHOOK_PATH


@contextmanager
def receiver(env: dict[str, str], *args: str, **extra_env: str) -> Iterator[Receiver]:
    """A real `ingest serve` (with command-line `args`, and `env` plus `extra_env`) on a free
    port, ready when yielded; stopped gracefully at the end."""
    port = free_port()
    proc = Process(
        ["serve", "--host", "127.0.0.1", "--port", str(port), *args], {**env, **extra_env}, quiet=False
    ).start()
    try:
        if not wait_for_port(port, proc.popen, timeout=20):
            raise RuntimeError("receiver did not start")
        running = Receiver(f"http://127.0.0.1:{port}")
        running.proc = proc
        yield running
    finally:
        proc.stop()
