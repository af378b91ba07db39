"""Rejected calls: the list, one call with its reason and raw body, and replaying one or all
(after a confirmation) through `workers.storage.rejected.replay`, the outcome shown."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp_jinja2
import psycopg
from aiohttp import web

from console.app import SETTINGS, db
from workers.storage import browse
from workers.storage.rejected import ReplayResult, count_rejected, list_rejected, replay

log = logging.getLogger("console.views.rejected")

PAGE = 50


def _page(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


async def rejected_list(request: web.Request) -> web.StreamResponse:
    page = _page(request)

    def read(conn: psycopg.Connection) -> tuple[list[Any], int]:
        return list_rejected(conn, limit=PAGE, offset=(page - 1) * PAGE), count_rejected(conn)

    calls, total = await db(request, read)
    return aiohttp_jinja2.render_template(
        "rejected.html", request, {"calls": calls, "total": total, "page": page, "more": page * PAGE < total}
    )


def _id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="No such rejected call.") from None


async def rejected_call(request: web.Request) -> web.StreamResponse:
    call_id = _id(request)
    call = await db(request, browse.get_rejected, call_id)
    if call is None:
        raise web.HTTPNotFound(text=f"No rejected call with id {call_id} (replayed, or never kept).")
    body = bytes(call.pop("body"))
    return aiohttp_jinja2.render_template(
        "rejected_call.html",
        request,
        {"call": call, "body": body.decode("utf-8", "replace"), "size": len(body)},
    )


async def confirm_replay(request: web.Request) -> web.StreamResponse:
    call_id = _id(request) if "id" in request.match_info else None
    if call_id is not None and await db(request, browse.get_rejected, call_id) is None:
        raise web.HTTPNotFound(text=f"No rejected call with id {call_id}.")
    total = await db(request, count_rejected)
    return aiohttp_jinja2.render_template("replay_confirm.html", request, {"call_id": call_id, "total": total})


async def do_replay(request: web.Request) -> web.StreamResponse:
    call_id = _id(request) if "id" in request.match_info else None
    if call_id is not None and await db(request, browse.get_rejected, call_id) is None:
        raise web.HTTPNotFound(text=f"No rejected call with id {call_id}.")
    tz = request.app[SETTINGS].copernica_timezone
    result: ReplayResult = await db(request, replay, tz, only=call_id)
    log.info("console replay of %s: %s", call_id if call_id is not None else "all", result)
    reasons = sorted(result.reasons.items(), key=lambda item: -item[1])[:20]
    return aiohttp_jinja2.render_template(
        "replay_result.html", request, {"call_id": call_id, "result": result, "reasons": reasons}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/rejected", rejected_list)
    app.router.add_get("/rejected/replay", confirm_replay)
    app.router.add_post("/rejected/replay", do_replay)
    app.router.add_get("/rejected/{id}", rejected_call)
    app.router.add_get("/rejected/{id}/replay", confirm_replay)
    app.router.add_post("/rejected/{id}/replay", do_replay)
