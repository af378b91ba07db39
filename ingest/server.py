"""Running the receiver: one process, or N processes sharing a port with SO_REUSEPORT."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time

from aiohttp import web

from ingest.app import create_app
from ingest.embedded import StopSignals
from ingest.settings import Settings

log = logging.getLogger("ingest.server")


def _event_loop():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        import asyncio

        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(settings: Settings, *, processes: int = 1, host: str | None = None, port: int | None = None,
          reuse_port: bool = False) -> int:
    host = host or settings.host
    port = port if port is not None else settings.port
    if processes < 1:
        raise ValueError("--processes must be at least 1")
    if processes > 1:
        return _supervise(processes, host, port)
    log.info("receiver listening on http://%s:%d/copernica (queue %r)", host, port, settings.queue)
    _tune_gc()
    web.run_app(
        create_app(settings), host=host, port=port, reuse_port=reuse_port or None,
        loop=_event_loop(), access_log=None, print=None, backlog=4096, shutdown_timeout=30,
        # Hostile input (issue 6): an idle or never-finished request head is closed after
        # keepalive_timeout (longer than nginx's upstream keepalive, so nginx never reuses a closing
        # connection); a stalled body gets 408 after INGEST_BODY_TIMEOUT (app.py); oversized request
        # lines, headers or header counts get aiohttp's 400. No access log: targets may hold a token.
        keepalive_timeout=75, max_line_size=8190, max_field_size=8190, max_headers=128,
    )
    return 0


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
