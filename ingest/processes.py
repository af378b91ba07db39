"""Child processes and ports: wait for a port, stop a process in order, catch stop signals.

Used by `ingest serve --processes N`, the dev stack (`ingest.devstack`), the tests and the
benchmark.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> bool:
    """True once `port` on 127.0.0.1 accepts connections; False when `process` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if port_is_open(port):
            return True
        time.sleep(0.05)
    return False


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it has not exited after `timeout` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


class StopSignals:
    """SIGTERM and SIGINT set a flag instead of interrupting: a supervising loop polls `caught`
    and then stops its children in order (`ingest dev`, `ingest serve --processes N`)."""

    def __init__(self) -> None:
        self.caught = False
        signal.signal(signal.SIGTERM, self._catch)
        signal.signal(signal.SIGINT, self._catch)

    def _catch(self, _signum: int, _frame: object) -> None:
        self.caught = True
