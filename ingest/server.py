"""Running the receiver: one process, or N processes sharing a port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from aiohttp import web

from common.settings import Settings
from ingest.app import Receiver
from ingest.connections import GuardedServer, descriptor_room
from ingest.processes import StopSignals

log = logging.getLogger("ingest.server")

SHUTDOWN_SECONDS = 30  # how long requests in flight may take to finish after SIGTERM


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serve(
    settings: Settings,
    *,
    processes: int = 1,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
) -> int:
    host = host or settings.host
    port = port if port is not None else settings.port
    if processes < 1:
        raise ValueError("--processes must be at least 1")
    if processes > 1:
        return _supervise(processes, host, port)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(settings, host, port, reuse_port))
    return 0


async def _serve(settings: Settings, host: str, port: int, reuse_port: bool) -> None:
    """Serve until SIGTERM or SIGINT; then stop taking connections, let the requests in flight
    finish (up to SHUTDOWN_SECONDS), write what they queued, and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    receiver = Receiver(settings)
    server = GuardedServer(
        receiver.handle,
        **receiver.server_options(),
        access_log=None,
        # Hostile input (issues 6, 14): a request head not finished within INGEST_HEAD_TIMEOUT is
        # closed, and past INGEST_MAX_CONNECTIONS a new connection gets 503 (ingest.connections); an
        # idle keep-alive connection is closed after keepalive_timeout (longer than nginx's upstream
        # keepalive, so nginx never reuses a closing connection); a stalled body gets 408 after
        # INGEST_BODY_TIMEOUT (app.py); oversized request lines, headers or header counts get
        # aiohttp's 400. No access log: targets may hold a token.
        head_timeout=settings.head_timeout,
        max_connections=descriptor_room(settings.max_connections),
        retry_after=settings.retry_after,
        keepalive_timeout=75,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=128,
    )
    runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    try:
        receiver.start()
        await web.TCPSite(runner, host, port, backlog=4096, reuse_port=reuse_port or None).start()
        log.info("receiver listening on http://%s:%d/copernica (queue %r)", host, port, settings.queue)
        _tune_gc()
        await stop.wait()
    finally:
        await runner.cleanup()
        await receiver.close()


def _tune_gc() -> None:
    """Each request allocates a few dozen short-lived objects: with the default threshold the
    cyclic collector runs every few requests. Freeze what start-up made (never garbage) and
    collect the young generation less often; reference counting frees nearly everything."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _supervise(processes: int, host: str, port: int) -> int:
    """Start N receivers on one port; stop them all on SIGTERM/SIGINT or when one dies."""
    argv = [sys.executable, "-m", "ingest", "serve", "--host", host, "--port", str(port), "--reuse-port"]
    children = [subprocess.Popen(argv) for _ in range(processes)]
    log.info("started %d receiver processes on %s:%d", processes, host, port)
    signals = StopSignals()
    code = 0
    while not signals.caught:
        if any(child.poll() is not None for child in children):
            log.error("a receiver process exited; stopping the others")
            code = 1
            break
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait()
    return code


if os.name != "posix":  # pragma: no cover
    raise ImportError("the receiver runs on POSIX systems")
