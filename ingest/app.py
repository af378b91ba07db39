"""The receiver: decide whether a call may be taken, queue it raw, answer.

Where every status code is chosen. The handler never parses the event: it checks what its
answer depends on (size, content type, non-empty), wraps the call in an envelope and awaits
the group commit. 200 means the call is in Redis; 503 with Retry-After means it is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ingest import metrics, openapi
from ingest.auth import Authenticator, Refused
from ingest.batching import Closed, GroupCommitter, Overloaded, WriteFailed
from ingest.highwater import HighWater
from ingest.queueing import BatchQueue
from ingest.settings import Settings
from workers.envelope import KEPT_HEADERS, wire

log = logging.getLogger("ingest.app")

ACCEPTED_TYPES = ("application/x-www-form-urlencoded", "application/json")

SETTINGS = web.AppKey("settings", Settings)
COMMITTER = web.AppKey("committer", GroupCommitter)
QUEUE = web.AppKey("queue", BatchQueue)
HIGH_WATER = web.AppKey("high_water", HighWater)
AUTH = web.AppKey("auth", Authenticator)

_QUEUED = b'{"status":"queued"}'
_KEPT = {name.encode(): name for name in KEPT_HEADERS}
_OK = b'{"status":"ok"}'

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(status: int, reason: str, **headers: str) -> web.Response:
    body = {"status": "error" if status < 500 else "unavailable", "reason": reason}
    return web.json_response(body, status=status, headers=headers or None)


def _unavailable(settings: Settings, reason: str) -> web.Response:
    return _json(503, reason, **{"Retry-After": str(settings.retry_after)})


def _accepted_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ACCEPTED_TYPES or (media.startswith("application/") and media.endswith("+json"))


def receiver(app: web.Application) -> Handler:
    """POST /copernica: the hot path. Checks only what the answer depends on, then queues.

    Built once per app: what it needs is bound here, not looked up on every request, and its
    answers are counted by status here (a wrapper would cost every call another coroutine)."""
    settings, committer, high_water, auth = app[SETTINGS], app[COMMITTER], app[HIGH_WATER], app[AUTH]
    answers = metrics.ANSWERS
    max_bytes = settings.max_body_bytes
    too_large = f"body larger than {max_bytes} bytes"

    def answer(response: web.Response) -> web.Response:
        answers[response.status] += 1
        return response

    async def receive(request: web.Request) -> web.Response:
        try:
            declared = request.content_length
            if declared is not None and declared > max_bytes:
                return answer(_json(413, too_large))
            content_type = request.headers.get("Content-Type", "")
            if not _accepted_type(content_type):
                return answer(_json(415, "content type must be application/x-www-form-urlencoded or application/json"))
            try:
                if request.content.is_eof():  # the whole body has arrived (most calls): no timer needed
                    body = await request.read()
                else:
                    async with asyncio.timeout(settings.body_timeout):
                        body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return answer(_json(413, too_large))
            except TimeoutError:
                return answer(_json(408, f"body not received within {settings.body_timeout:g} s"))
            except (web.RequestPayloadError, ConnectionError):  # broken chunking or Content-Encoding, a dropped sender
                return answer(_json(400, "body could not be read"))
            if not body:
                return answer(_json(400, "empty body"))
            if high_water.over:
                return answer(_unavailable(settings, "queue is above its high-water mark"))
            try:  # who may post (ingest.auth): before anything is queued; the kept target has no token
                target = await auth.check(request, body)
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


async def ok(request: web.Request) -> web.Response:
    """GET and HEAD /copernica (senders check that the endpoint exists) and /healthz (alive)."""
    return web.Response(body=_OK, content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    if await request.app[QUEUE].ping():
        return web.json_response({"status": "ready", "redis": "ok"})
    return _unavailable(request.app[SETTINGS], "redis does not answer")


async def not_found(request: web.Request) -> web.Response:
    return _json(404, "not found")


async def method_not_allowed(request: web.Request) -> web.Response:
    return _json(405, "method not allowed", Allow="GET, HEAD, POST")


def create_app(settings: Settings, queue: BatchQueue | None = None, auth: Authenticator | None = None
               ) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    batch_queue = queue or BatchQueue(settings)
    app[QUEUE] = batch_queue
    high_water = HighWater(batch_queue.connection, batch_queue.queue.key, settings.max_queue_depth)
    app[HIGH_WATER] = high_water

    def observe(size: int, seconds: float, ok: bool) -> None:
        metrics.observe_batch(size, seconds, ok)
        high_water.observe(size, ok)

    committer = GroupCommitter(batch_queue.enqueue, max_batch=settings.max_batch, max_pending=settings.max_pending,
                               max_in_flight=settings.max_in_flight, observe=observe)
    app[COMMITTER] = committer
    app[AUTH] = auth or Authenticator(settings)

    async def on_startup(app: web.Application) -> None:
        committer.start()
        high_water.start()

    async def on_shutdown(app: web.Application) -> None:
        # In-flight batches are written and answered before the process exits.
        await high_water.stop()
        await committer.close()
        await batch_queue.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_shutdown)
    receive = receiver(app)  # answers counted by status, this route only
    app.router.add_post("/copernica", receive)
    app.router.add_get("/copernica", ok)  # aiohttp answers HEAD through the GET route
    app.router.add_post("/copernica/{token}", receive)  # token in the path (ingest.auth)
    app.router.add_get("/copernica/{token}", ok)
    app.router.add_get("/openapi.json", openapi.handler(settings))
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics.handler(
        batch_queue.connection, settings.queue, lambda: committer.pending,
        min(metrics.SCRAPE_REDIS_TIMEOUT, settings.redis_timeout)))
    # JSON refusals without a middleware (a middleware costs every request on the hot path).
    app.router.add_route("*", "/copernica", method_not_allowed)
    app.router.add_route("*", "/copernica/{token}", method_not_allowed)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
