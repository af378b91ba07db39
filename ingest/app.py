"""The receiver: decide whether a call may be taken, queue it raw, answer.

Where every status code is chosen. The handler never parses the event: it checks what its
answer depends on (size, content type, non-empty), wraps the call in an envelope and awaits
the group commit. 200 means the call is in Redis; 503 with Retry-After means it is not.

It runs on aiohttp's low-level server (`web.Server`) with its own dispatch by path: a webhook
is one POST to one path, and an `Application`'s router, match info and handler chain cost
about 2.5 µs of every call (~7 % of a call's CPU, measured here with wrk against both).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

import redis
from aiohttp import web

from common.envelope import KEPT_HEADERS, media_type, wire
from common.settings import Settings
from ingest import metrics, openapi, verification
from ingest.auth import Authenticator, Refused
from ingest.batching import Closed, GroupCommitter, Overloaded, WriteFailed
from ingest.highwater import HighWater
from ingest.queueing import BatchQueue

log = logging.getLogger("ingest.app")

ACCEPTED_TYPES = ("application/x-www-form-urlencoded", "application/json")
ENDPOINT = "/copernica"
TOKEN_ROUTE = ENDPOINT + "/{token}"  # the token in the path (ingest.auth)

_QUEUED = b'{"status":"queued"}'
_KEPT = {name.encode(): name for name in KEPT_HEADERS}
_OK = b'{"status":"ok"}'

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json(status: int, reason: str, **headers: str) -> web.Response:
    body = {"status": "error" if status < 500 else "unavailable", "reason": reason}
    return web.json_response(body, status=status, headers=headers or None)


def _unavailable(settings: Settings, reason: str) -> web.Response:
    return _json(503, reason, **{"Retry-After": str(settings.retry_after)})


@lru_cache(maxsize=64)  # a sender sends the same Content-Type every time
def _accepted_type(content_type: str) -> bool:
    media = media_type(content_type)
    return media in ACCEPTED_TYPES or (media.startswith("application/") and media.endswith("+json"))


def route_of(raw_path: str) -> str | None:
    """The route a request target belongs to: /copernica, /copernica/{token}, another fixed path,
    or None. Matched on the raw path (the query left out), as the token is stripped from it."""
    path = raw_path.partition("?")[0]
    if path.startswith(ENDPOINT + "/"):
        token = path[len(ENDPOINT) + 1 :]
        return TOKEN_ROUTE if token and "/" not in token else None
    return path


async def ok(_request: web.BaseRequest) -> web.Response:
    """GET and HEAD /copernica (senders check that the endpoint exists) and /healthz (alive)."""
    return web.Response(body=_OK, content_type="application/json")


class Receiver:
    """The receiver's parts (queue writer, group committer, high-water watch, auth) and its
    request handler. `start` and `close` bracket its life; `handle` serves every request."""

    def __init__(self, settings: Settings, queue: BatchQueue | None = None, auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.queue = queue or BatchQueue(settings)
        self.high_water = HighWater(self.queue.connection, self.queue.queue.key, settings.max_queue_depth)
        self.committer = GroupCommitter(
            self.queue.enqueue,
            max_batch=settings.max_batch,
            max_pending=settings.max_pending,
            max_in_flight=settings.max_in_flight,
            observe=self._observe,
        )
        self.auth = auth or Authenticator(settings)
        self._receive = self._receiver(path_token=False)
        # Every route with its handler per method; HEAD is answered by GET's handler.
        self.routes: dict[str, dict[str, Handler]] = {
            ENDPOINT: {"POST": self._receive, "GET": ok},
            TOKEN_ROUTE: {"POST": self._receiver(path_token=True), "GET": ok},
            "/openapi.json": {"GET": openapi.handler(settings)},
            "/healthz": {"GET": ok},
            "/readyz": {"GET": self._readyz},
            "/metrics": {
                "GET": metrics.handler(
                    self.queue.connection,
                    settings.queue,
                    lambda: self.committer.pending,
                    min(metrics.SCRAPE_REDIS_TIMEOUT, settings.redis_timeout),
                )
            },
        }

    def _observe(self, size: int, seconds: float, ok: bool) -> None:
        metrics.observe_batch(size, seconds, ok)
        self.high_water.observe(size, ok)

    def start(self) -> None:
        self.committer.start()
        self.high_water.start()

    async def close(self) -> None:
        """Write and answer every batch already taken, then let go of Redis."""
        await self.high_water.stop()
        await self.committer.close()
        await self.queue.close()

    async def __aenter__(self) -> Receiver:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def server_options(self) -> dict[str, Any]:
        """What `web.Server` needs besides the handler: requests that know the body size limit."""
        limit = self.settings.max_body_bytes

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, task.get_loop(), client_max_size=limit)

        return {"request_factory": make_request}

    def handle(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """Every request: the webhook POST first, then the other routes by path. A plain method
        returning the handler's coroutine: one coroutine per call, not two."""
        raw_path = request.raw_path
        if request.method == "POST" and (raw_path == ENDPOINT or raw_path.startswith(ENDPOINT + "?")):
            return self._receive(request)
        return self._dispatch(request, raw_path)

    async def _dispatch(self, request: web.BaseRequest, raw_path: str) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and (name := verification.name_in_path(raw_path)) is not None:
            return await self._verification_file(name)
        route = route_of(raw_path)
        methods = self.routes.get(route) if route is not None else None
        if methods is None:
            return _json(404, "not found")
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allowed = ", ".join(sorted({"GET", "HEAD", *methods}))
            return _json(405, "method not allowed", Allow=allowed)
        return await handler(request)

    async def _verification_file(self, name: str) -> web.Response:
        """GET /<name> and /copernica/<name>: a stored URL verification file (ingest.verification),
        unauthenticated (Copernica fetches it unsigned); 404 for a name not stored."""
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                content = await verification.lookup(self.queue.connection, name)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            log.warning("verification file %s: redis failed: %s", name, exc)
            return _unavailable(self.settings, "redis does not answer")
        if content is None:
            return _json(404, "not found")
        return web.Response(body=content, content_type="text/plain")

    async def _readyz(self, _request: web.BaseRequest) -> web.Response:
        if await self.queue.ping():
            return web.json_response({"status": "ready", "redis": "ok"})
        return _unavailable(self.settings, "redis does not answer")

    def _receiver(self, *, path_token: bool) -> Handler:  # noqa: C901 - it is `receive`, the hot path
        """POST /copernica: the hot path. Checks only what the answer depends on, then queues.

        What it needs is bound here, not looked up on every request, and its answers are counted
        by status here (a wrapper would cost every call another coroutine)."""
        settings, committer, high_water, auth = self.settings, self.committer, self.high_water, self.auth
        answers = metrics.ANSWERS
        max_bytes = settings.max_body_bytes
        too_large = f"body larger than {max_bytes} bytes"

        def answer(response: web.Response) -> web.Response:
            answers[response.status] += 1
            return response

        async def receive(request: web.BaseRequest) -> web.Response:  # noqa: C901 - hot path: one coroutine per call
            try:
                declared = request.content_length
                if declared is not None and declared > max_bytes:
                    return answer(_json(413, too_large))
                content_type = request.headers.get("Content-Type", "")
                if not _accepted_type(content_type):
                    return answer(
                        _json(415, "content type must be application/x-www-form-urlencoded or application/json")
                    )
                try:
                    content = request.content
                    if content.is_eof():  # the whole body has arrived (most calls): taken as it is
                        body = content.read_nowait()
                        if len(body) > max_bytes:  # chunked, or more than Content-Length said
                            return answer(_json(413, too_large))
                    else:
                        async with asyncio.timeout(settings.body_timeout):
                            body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    return answer(_json(413, too_large))
                except TimeoutError:
                    return answer(_json(408, f"body not received within {settings.body_timeout:g} s"))
                except (web.RequestPayloadError, ConnectionError):  # broken chunking or encoding, a dropped sender
                    return answer(_json(400, "body could not be read"))
                if not body:
                    return answer(_json(400, "empty body"))
                if high_water.over:
                    return answer(_unavailable(settings, "queue is above its high-water mark"))
                try:  # who may post (ingest.auth): before anything is queued; the kept target has no token
                    target = auth.check(request, body, path_token=path_token)
                    if not isinstance(target, str):  # only a signature check can decide
                        target = await target
                except Refused as refused:
                    return answer(_json(refused.status, refused.reason, **refused.headers))
                # The kept headers, in one pass over the raw pairs (cheaper than eight look-ups).
                headers = {}
                for name, value in request.raw_headers:
                    key = name.lower()
                    if key in _KEPT:
                        headers[_KEPT[key]] = value.decode("latin-1")
                call = wire(body, content_type, time.time(), request.remote or "", request.method, target, headers)
                try:
                    await committer.submit(call)
                except Overloaded:
                    return answer(_unavailable(settings, "too many calls waiting for Redis"))
                except WriteFailed:
                    return answer(_unavailable(settings, "could not write to Redis"))
                except Closed:
                    return answer(_unavailable(settings, "receiver is shutting down"))
                answers[200] += 1
                return web.Response(body=_QUEUED, content_type="application/json")
            except Exception:  # aiohttp answers it with a 500
                answers[500] += 1
                raise

        return receive
