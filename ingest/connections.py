"""Bounds on connections: how long a request's head may take, and how many may be open.

aiohttp has no timeout for reading a request's line and headers: a sender that trickles a
header byte now and then holds its connection (one file descriptor) until keepalive_timeout.
`GuardedServer` is aiohttp's low-level `web.Server` with two bounds added, both paid per
connection, never per request (the keep-alive hot path is untouched):

- INGEST_HEAD_TIMEOUT: one timer per connection, re-armed only when it fires. When it fires on
  a connection that waits for a request head (aiohttp's own idle test), the head has had
  `head_timeout` seconds since the connection opened, or since the previous response when bytes
  of the next request have arrived since (the kernel's TCP_INFO tells when data last came), and
  the connection is closed. An idle keep-alive connection that has sent nothing is left to
  keepalive_timeout, so nginx's pooled upstream connections are not cut.
- INGEST_MAX_CONNECTIONS: past it a new connection is answered 503 with Retry-After and closed,
  without building aiohttp's request handler for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import struct
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ingest import metrics

log = logging.getLogger("ingest.connections")

REFUSAL_LINGER = 1.0  # seconds a refused connection may stay open for its sender to read the 503
FD_RESERVE = 64  # descriptors kept free for Redis, logs and the listening sockets
# Kernel times are whole milliseconds of jiffies: data this close to the response counts as before it.
_CLOCK_SLACK = 0.05
_TCP_INFO_SIZE = 104
_LAST_DATA_RECV_OFFSET = 52  # struct tcp_info: 8 one-byte fields, then u32s; tcpi_last_data_recv is the 12th u32


def received_within(transport: asyncio.BaseTransport, seconds: float) -> bool | None:
    """Whether the peer sent data in the last `seconds` (TCP_INFO `tcpi_last_data_recv`);
    None where the kernel does not say (not Linux, not TCP)."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_SIZE)
        (last_recv_ms,) = struct.unpack_from("I", info, _LAST_DATA_RECV_OFFSET)
    except (OSError, struct.error):
        return None
    return last_recv_ms / 1000 < seconds


def descriptor_room(wanted: int) -> int:
    """`wanted`, lowered to what the process's descriptor limit (RLIMIT_NOFILE) leaves room for:
    past that limit accept() fails and the event loop pauses accepting for everyone."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft - FD_RESERVE:
        return wanted
    room = max(1, soft - FD_RESERVE)
    log.warning("INGEST_MAX_CONNECTIONS=%d exceeds the descriptor limit (ulimit -n %d): using %d", wanted, soft, room)
    return room


class _Refusal(asyncio.Protocol):
    """A connection past the limit: 503 with Retry-After at once, then closed. Its sender gets up to
    REFUSAL_LINGER seconds to read the answer (closing over unread data would reset it away)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: bytes) -> None:
        self._loop = loop
        self._answer = answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read

    def eof_received(self) -> bool:
        return False  # the sender is done: close

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio.Protocol's signature
        if self._timer is not None:
            self._timer.cancel()


def refusal_answer(retry_after: int) -> bytes:
    body = json.dumps({"status": "unavailable", "reason": "too many connections"}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {retry_after}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Watch:
    """One connection's head timer."""

    __slots__ = ("handler", "opened", "timer", "transport")

    def __init__(self, handler: RequestHandler, transport: asyncio.Transport, opened: float) -> None:
        self.handler = handler
        self.transport = transport
        self.opened = opened
        self.timer: asyncio.TimerHandle | None = None


class GuardedServer(web.Server):
    """`web.Server` with a head timeout and a cap on open connections (see the module docstring)."""

    def __init__(
        self, handler: Any, *, head_timeout: float, max_connections: int, retry_after: int, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self._answer = refusal_answer(retry_after)
        self._open = 0  # counted when the protocol is made: a burst of accepts comes before connection_made
        self._watches: dict[RequestHandler, _Watch] = {}

    @property
    def open_connections(self) -> int:
        return self._open

    def __call__(self) -> Any:  # the protocol factory, called once per accepted connection
        if self._open >= self.max_connections:
            metrics.REFUSED_CONNECTIONS.inc()
            return _Refusal(self._loop, self._answer)
        self._open += 1
        return super().__call__()

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        now = self._loop.time()
        watch = _Watch(handler, transport, now)
        watch.timer = self._loop.call_at(now + self.head_timeout, self._check, watch)
        self._watches[handler] = watch

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._open -= 1
        watch = self._watches.pop(handler, None)
        if watch is not None and watch.timer is not None:
            watch.timer.cancel()
        super().connection_lost(handler, exc)

    def _check(self, watch: _Watch) -> None:
        """The head timer fired: close the connection if its head is late, else re-arm."""
        watch.timer = None
        handler = watch.handler
        if handler.transport is None:
            return
        loop = self._loop
        now = loop.time()
        timeout = self.head_timeout
        waiter = handler._waiter
        if waiter is None or waiter.done():  # a head is complete: the request is being handled
            watch.timer = loop.call_at(now + timeout, self._check, watch)
            return
        fresh = handler._request_count == 0
        # aiohttp stamps the keep-alive deadline when a response has been sent.
        waiting_since = watch.opened if fresh else handler._next_keepalive_close_time - handler.keepalive_timeout
        if now < waiting_since + timeout:
            watch.timer = loop.call_at(waiting_since + timeout, self._check, watch)
            return
        if fresh or received_within(watch.transport, now - waiting_since - _CLOCK_SLACK):
            metrics.HEAD_TIMEOUTS.inc()
            log.debug("closing a connection whose request head took over %g s", timeout)
            handler.force_close()
            return
        # Idle after a response, nothing sent since: keepalive_timeout's business; look again later.
        watch.timer = loop.call_at(now + timeout, self._check, watch)
