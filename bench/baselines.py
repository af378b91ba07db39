"""The receivers the project is measured against, each as small as it can honestly be.

- bare:    aiohttp + uvloop, reads the body and answers; no Redis at all (the ceiling).
- enqueue: one synchronous `rq.Queue.enqueue` per request (what a first version would do).
- lpush:   one `LPUSH` per request through redis.asyncio (no RQ job, no batching).

Run one: `python -m bench.baselines KIND PORT [REDIS_URL]`.
"""

from __future__ import annotations

import sys

import redis
import redis.asyncio as aredis
import uvloop
from aiohttp import web
from rq import Queue

OK = b'{"status":"queued"}'


def bare_app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=OK, content_type="application/json")

    app = web.Application()
    app.router.add_post("/copernica", handle)
    return app


def enqueue_app(redis_url: str) -> web.Application:
    queue = Queue("bench-enqueue", connection=redis.Redis.from_url(redis_url))

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        queue.enqueue("workers.jobs.store_batch", [{"body": body}])
        return web.Response(body=OK, content_type="application/json")

    app = web.Application()
    app.router.add_post("/copernica", handle)
    return app


def lpush_app(redis_url: str) -> web.Application:
    client = aredis.Redis.from_url(redis_url)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await client.lpush("bench-lpush", body)
        return web.Response(body=OK, content_type="application/json")

    app = web.Application()
    app.router.add_post("/copernica", handle)
    return app


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    redis_url = argv[2] if len(argv) > 2 else ""
    app = {
        "bare": lambda: bare_app(),
        "enqueue": lambda: enqueue_app(redis_url),
        "lpush": lambda: lpush_app(redis_url),
    }[kind]()
    web.run_app(
        app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None, backlog=4096
    )


if __name__ == "__main__":
    main(sys.argv[1:])
