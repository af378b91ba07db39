"""Rejected calls: the list, one call with its reason and raw body, and replaying one or all
(after a confirmation, through `console.views.confirmed`) with `workers.storage.rejected.replay`,
the outcome shown."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
import psycopg
from aiohttp import web

from console.app import SETTINGS, db
from console.views.confirmed import ConfirmedAction
from workers.storage import browse
from workers.storage.rejected import ReplayResult, count_rejected, list_rejected, replay

PAGE = 50


async def _read_page(request: web.Request, page: int) -> tuple[list[Any], int]:
    def read(conn: psycopg.Connection) -> tuple[list[Any], int]:
        return list_rejected(conn, limit=PAGE, offset=(page - 1) * PAGE), count_rejected(conn)

    return await db(request, read)


def _id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPNotFound(text="No such rejected call.") from None


async def rejected_call(request: web.Request) -> web.StreamResponse:
    call_id = _id(request.match_info["id"])
    call = await db(request, browse.get_rejected, call_id)
    if call is None:
        raise web.HTTPNotFound(text=f"No rejected call with id {call_id} (replayed, or never kept).")
    body = bytes(call.pop("body"))
    return aiohttp_jinja2.render_template(
        "rejected_call.html",
        request,
        {"call": call, "body": body.decode("utf-8", "replace"), "size": len(body)},
    )


async def _known(request: web.Request, raw: str) -> int:
    call_id = _id(raw)
    if await db(request, browse.get_rejected, call_id) is None:
        raise web.HTTPNotFound(text=f"No rejected call with id {call_id}.")
    return call_id


async def _count(request: web.Request) -> int:
    return await db(request, count_rejected)


async def _replay(request: web.Request, call_id: int | None) -> tuple[dict[str, Any], int]:
    tz = request.app[SETTINGS].copernica_timezone
    result: ReplayResult = await db(request, replay, tz, only=call_id)
    reasons = sorted(result.reasons.items(), key=lambda item: -item[1])[:20]
    return {"result": result, "reasons": reasons}, 200


REPLAY = ConfirmedAction(
    path="/rejected",
    action="replay",
    page_size=PAGE,
    items_name="calls",
    read_page=_read_page,
    id_name="call_id",
    count=_count,
    act=_replay,
    find=_known,
)


def add_routes(app: web.Application) -> None:
    REPLAY.add_routes(app, item=rejected_call)
