"""`ingest dev`: starts the embedded stack, takes a webhook, stores it, stops leaving nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

from ingest.processes import free_port, wait_for_port
from tests.payloads import FORM, OPEN


def processes_using(path: Path) -> list[int]:
    """Pids whose command line or working directory mentions `path` (our children do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline or str(path) in env:
            found.append(int(entry.name))
    return found


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def start_dev(data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_URL", "DATABASE_URL"))}
    env.update(INGEST_DATA_DIR=str(data_dir), INGEST_PORT=str(ports["http"]))  # INGEST_HOST unset
    env.update(INGEST_CONSOLE_PORT=str(ports["console"]))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest",
            "dev",
            "--redis-port",
            str(ports["redis"]),
            "--postgres-port",
            str(ports["pg"]),
            "--dashboard-port",
            str(ports["dash"]),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_banner(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if "redis URL" in line:
            return "".join(seen)
    raise AssertionError("ingest dev did not start:\n" + "".join(seen)[-3000:])


def test_dev_stack_end_to_end(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("http", "redis", "pg", "dash", "console")}
    data_dir = tmp_path / "data"
    proc = start_dev(data_dir, ports)
    try:
        banner = wait_for_banner(proc)
        assert f"http://127.0.0.1:{ports['http']}/copernica" in banner
        # INGEST_AUTH=none in dev, so only this machine may reach it unless INGEST_HOST says otherwise.
        assert "INGEST_HOST=127.0.0.1 (this machine only" in banner
        assert listening_addresses(ports["http"]) == {"0100007F"}
        assert f"http://127.0.0.1:{ports['dash']}/" in banner
        database_url = f"postgresql://postgres@127.0.0.1:{ports['pg']}/ingest"
        assert database_url in banner

        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['http']}/copernica", data=OPEN, headers={"Content-Type": FORM}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        deadline = time.monotonic() + 30
        with psycopg.connect(database_url, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT event_type, message_id FROM events").fetchone()
                if row or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert row == ("opened", "b4icbaqjswyrb7tc")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['dash']}/", timeout=10) as resp:
            assert resp.status == 200
        assert f"console        http://127.0.0.1:{ports['console']}/ (no login" in banner
        assert wait_for_port(ports["console"], timeout=30)
        search = f"http://127.0.0.1:{ports['console']}/search?recipient=a%40example.com"
        with urllib.request.urlopen(search, timeout=10) as resp:
            page = resp.read().decode()
            assert resp.status == 200 and "b4icbaqjswyrb7tc" in page  # the event just posted, found
        assert len(processes_using(data_dir)) >= 5  # receiver, worker, console, valkey, postgres (+ dashboard)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 10
        while processes_using(data_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_using(data_dir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_restarts_after_kill_9(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("http", "redis", "pg", "dash", "console")}
    data_dir = tmp_path / "data"
    first = start_dev(data_dir, ports)
    wait_for_banner(first)
    first.kill()  # no chance to clean up
    first.wait()
    deadline = time.monotonic() + 15
    while processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(data_dir) == []  # children died with their parent
    second = start_dev(data_dir, ports)
    try:
        wait_for_banner(second)
        second.send_signal(signal.SIGINT)
        assert second.wait(60) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
