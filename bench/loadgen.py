"""wrk as the load generator: run it pinned to its own core and read its report."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTALL_HINT = "wrk is missing: install it with `apt-get install -y wrk` (Debian's package)"


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def failures(self) -> int:
        return self.non_2xx + self.socket_errors


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def pinned(argv: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


def status_mib(pid: int, key: str = "VmRSS") -> float | None:
    """A memory figure of a process from /proc/<pid>/status in MiB (VmRSS now, VmHWM its peak);
    None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    return float(match[1]) * _UNITS[match[2]]


def parse(output: str) -> LoadResult:
    requests = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    count = int(requests[1]) if requests else 0
    seconds = _ms(requests[2] + requests[3]) / 1000 if requests else 0.0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", output)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return LoadResult(
        requests=count,
        seconds=seconds,
        rps=float(rps[1]) if rps else 0.0,
        p50_ms=_ms(p50[1]) if p50 else float("nan"),
        p99_ms=_ms(p99[1]) if p99 else float("nan"),
        non_2xx=int(non2xx[1]) if non2xx else 0,
        # A "read" error is the server closing a Connection: close socket: not a failure.
        socket_errors=(int(errors[1]) + int(errors[3]) + int(errors[4])) if errors else 0,
    )


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    keepalive: bool = True,
    core: int | None = 0,
    per_thread_limit: int = 0,
    threads: int = 1,
    timeout: float = 10.0,
) -> LoadResult:
    """Post distinct Copernica events at `url` for `seconds` (or until each thread sent its limit)."""
    script = HERE / ("burst.lua" if per_thread_limit else "events.lua")
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        f"--timeout={timeout:g}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        "keep" if keepalive else "close",
    ]
    if not per_thread_limit:
        done = subprocess.run(pinned(argv, core), capture_output=True, text=True, timeout=seconds + 120)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
        return parse(done.stdout)
    return _run_counted([*argv, str(per_thread_limit)], core, seconds)


def _run_counted(argv: list[str], core: int | None, seconds: float) -> LoadResult:
    """A run of a fixed number of requests: wrk's threads stop at their share and the script
    marks the end in a file; wrk is then interrupted (SIGINT), and prints its report."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "done"
        argv = [*argv, str(marker)]
        started = time.monotonic()
        proc = subprocess.Popen(pinned(argv, core), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not marker.exists() and proc.poll() is None and time.monotonic() - started < seconds:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        time.sleep(0.2)  # let the last answers land
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    result = parse(out)
    if not result.requests:
        raise RuntimeError(f"wrk failed: {err.strip() or out.strip()}")
    # wrk's own rate counts the time until it was interrupted; the run ended at the marker.
    result.seconds = elapsed
    result.rps = result.requests / elapsed if elapsed else 0.0
    return result
