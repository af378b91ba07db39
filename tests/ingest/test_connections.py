"""Connection bounds (ingest.connections) in a real `ingest serve`: a request head that trickles
is cut off after INGEST_HEAD_TIMEOUT and its descriptor freed, while ordinary calls are answered;
an idle keep-alive connection is left alone; past INGEST_MAX_CONNECTIONS a connection gets 503."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from ingest import connections
from tests.payloads import FORM, OPEN
from tests.processes import ingest_env, receiver

HEAD_TIMEOUT = 2.0
MARGIN = 2.5  # the bound's slack on a busy two-core machine
TRICKLERS = 50
POST = (
    b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: "
    + FORM.encode()
    + b"\r\nContent-Length: "
    + str(len(OPEN)).encode()
    + b"\r\n\r\n"
    + OPEN
)


def receiver_pid(base_url: str) -> int:
    """The `ingest serve` started by tests.processes.receiver on this URL's port."""
    wanted = f" --port {urlsplit(base_url).port} "
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if " ingest serve " in cmdline and wanted in cmdline + " ":
                return int(entry.name)
    raise AssertionError(f"no receiver process for {base_url}")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def counter(base_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def trickle(host: str, port: int, *, first: bytes = b"") -> tuple[float, float]:
    """Send `first` (a whole request, whose answer is read), then a request line and a header
    byte every second until the server closes. Returns (seconds from the first partial byte
    to the close, seconds the connection was open)."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if first:
            writer.write(first)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            )
            await reader.readexactly(length)
        started = time.monotonic()
        writer.write(b"POST /copernica HTTP/1.1\r\nX-Slow: ")
        while time.monotonic() - started < HEAD_TIMEOUT + 10:
            try:
                if await asyncio.wait_for(reader.read(100), 1.0) == b"":
                    break
            except TimeoutError:
                writer.write(b"x")
            except ConnectionResetError:
                break
        else:
            raise AssertionError("the server never closed a trickling connection")
        now = time.monotonic()
        return now - started, now - opened
    finally:
        writer.close()


async def post(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url, data=OPEN, headers={"Content-Type": FORM}) as resp:
        await resp.read()
        return resp.status


def test_trickling_heads_are_closed_and_their_descriptors_freed(redis_url: str, database_url: str) -> None:
    env = ingest_env(redis_url, database_url, INGEST_HEAD_TIMEOUT=str(HEAD_TIMEOUT))
    with receiver(env) as base:
        pid = receiver_pid(base)
        parts = urlsplit(base)
        before = open_fds(pid)

        async def scenario() -> tuple[list[tuple[float, float]], list[int], int]:
            tricklers = [asyncio.create_task(trickle(parts.hostname, parts.port)) for _ in range(TRICKLERS)]
            statuses = []
            held = 0
            async with aiohttp.ClientSession() as session:
                for _ in range(10):  # ordinary calls keep being answered meanwhile
                    statuses.append(await post(session, f"{base}/copernica"))
                    held = max(held, open_fds(pid))
                    await asyncio.sleep(0.15)
            return await asyncio.gather(*tricklers), statuses, held

        closed, statuses, held = asyncio.run(scenario())
        assert statuses == [200] * 10
        assert held >= before + TRICKLERS  # each trickler did hold a descriptor
        assert all(HEAD_TIMEOUT - 0.2 <= since_open <= HEAD_TIMEOUT + MARGIN for _, since_open in closed), closed
        deadline = time.monotonic() + 5
        while open_fds(pid) > before + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_fds(pid) <= before + 3
        assert counter(base, "copernica_ingest_head_timeouts_total") >= TRICKLERS


def test_a_trickling_head_after_a_response_is_cut(redis_url: str, database_url: str) -> None:
    """On a kept-alive connection the clock starts at the previous response, once bytes arrive."""
    env = ingest_env(redis_url, database_url, INGEST_HEAD_TIMEOUT=str(HEAD_TIMEOUT))
    with receiver(env) as base:
        parts = urlsplit(base)
        since_partial, _ = asyncio.run(trickle(parts.hostname, parts.port, first=POST))
        assert HEAD_TIMEOUT - 0.2 <= since_partial <= HEAD_TIMEOUT + MARGIN, since_partial


def test_idle_keep_alive_connection_outlives_the_head_timeout(redis_url: str, database_url: str) -> None:
    """nginx pools upstream connections: one idle after its response must not be cut at the head timeout."""
    env = ingest_env(redis_url, database_url, INGEST_HEAD_TIMEOUT=str(HEAD_TIMEOUT))
    with receiver(env) as base, socket.create_connection((urlsplit(base).hostname, urlsplit(base).port)) as sock:
        sock.settimeout(10)
        for round_ in range(2):
            sock.sendall(POST)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200"), (round_, answer)
            time.sleep(2 * HEAD_TIMEOUT + 0.5)  # same socket: still open after the idle spell


def test_connections_past_the_limit_get_503_at_once(redis_url: str, database_url: str) -> None:
    limit = 5
    env = ingest_env(redis_url, database_url, INGEST_MAX_CONNECTIONS=str(limit), INGEST_RETRY_AFTER="7")
    with receiver(env) as base:
        address = (urlsplit(base).hostname, urlsplit(base).port)
        held = [socket.create_connection(address) for _ in range(limit)]
        try:
            time.sleep(0.3)  # the server has taken all of them
            with socket.create_connection(address) as extra:
                extra.settimeout(5)
                started = time.monotonic()
                answer = b""
                while chunk := extra.recv(4096):
                    answer += chunk
                assert time.monotonic() - started < 1.5  # answered and closed at once
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After: 7\r\n" in answer and b"too many connections" in answer
            for sock in held:  # the held connections still work
                sock.settimeout(10)
            held[0].sendall(POST)
            assert held[0].recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5
        while True:  # once the server has seen them go, a new connection is served
            with socket.create_connection(address) as again:
                again.settimeout(10)
                again.sendall(POST)
                answer = again.recv(4096)
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert counter(base, "copernica_ingest_connections_refused_total") >= 1


def test_the_limit_fits_the_descriptor_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past RLIMIT_NOFILE accept() fails and the loop stops accepting for everyone: the limit is lowered."""
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _which: (1024, 4096))
    assert connections.descriptor_room(4096) == 1024 - connections.FD_RESERVE
    assert connections.descriptor_room(500) == 500


def test_refusal_answer_is_well_formed_http() -> None:
    head, _, body = connections.refusal_answer(9).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Retry-After"] == "9" and fields["Connection"] == "close"
    assert int(fields["Content-Length"]) == len(body) and json.loads(body)["reason"] == "too many connections"
