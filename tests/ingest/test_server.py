"""`ingest serve --processes N`: N receivers on one port (SO_REUSEPORT) under one supervisor
that stops them together. Real processes against a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis
from rq import Queue

from common.envelope import unpack_calls
from ingest.processes import child_pids, free_port, stop_process, wait_for_port
from tests.payloads import FORM, webhook_body
from tests.processes import ingest_env


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1:`port` (state 0A is LISTEN)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


async def post_many(url: str, count: int) -> list[int]:
    """Each call on a new connection, so the kernel spreads them over the listeners."""

    async def one(n: int) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            body = webhook_body("open", id=f"m{n}", time=str(1795694401 + n))
            headers = {"Content-Type": FORM}
            async with session.post(url, data=body, headers=headers) as resp:
                return resp.status

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def start(env: dict[str, str], port: int, processes: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--processes",
            str(processes),
        ],
        env=env,
    )
    assert wait_for_port(port, proc, timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(listening_inodes(port)) < processes:
        time.sleep(0.1)
    return proc


def test_n_processes_share_the_port_and_stop_together(
    redis_url: str, database_url: str, redis_conn: redis.Redis
) -> None:
    port = free_port()
    proc = start(ingest_env(redis_url, database_url), port, 3)
    try:
        kids = child_pids(proc.pid)
        assert len(kids) == 3
        listeners = listening_inodes(port)
        assert len(listeners) == 3
        assert all(socket_inodes(kid) & listeners for kid in kids)  # each child has its own listener
        statuses = asyncio.run(post_many(f"http://127.0.0.1:{port}/copernica", 60))
        assert statuses == [200] * 60
        queue = Queue("copernica", connection=redis_conn)
        assert sum(len(unpack_calls(queue.fetch_job(job_id).args[0])) for job_id in queue.get_job_ids()) == 60
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(Path(f"/proc/{kid}").exists() for kid in kids)  # stopped and reaped before it exited
    finally:
        stop_process(proc)


def test_one_receiver_dying_stops_the_rest(redis_url: str, database_url: str) -> None:
    port = free_port()
    proc = start(ingest_env(redis_url, database_url), port, 2)
    try:
        first, second = child_pids(proc.pid)
        os.kill(first, signal.SIGKILL)
        assert proc.wait(30) == 1  # the supervisor says something went wrong
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{second}").exists():
            time.sleep(0.1)
        assert not Path(f"/proc/{second}").exists()
    finally:
        stop_process(proc)
