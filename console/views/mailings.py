"""Mailings: those of the last 90 days with `mailing_stats`' figures (paged by mailing id),
and one mailing's page: its figures (every column the view has, the human/machine ones too
once they exist), opens and clicks over time after the send, and the bounce reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
import psycopg
from aiohttp import web

from console.app import db
from workers.storage import browse

PAGE = 25
DAYS = 90


def _list(conn: psycopg.Connection, before: int | None) -> tuple[list[int], dict[int, dict[str, Any]]]:
    ids = browse.recent_mailings(conn, datetime.now(UTC) - timedelta(days=DAYS), before=before, limit=PAGE + 1)
    return ids, browse.mailing_stats_rows(conn, ids[:PAGE])


async def mailings(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("before", "")
    before = int(raw) if raw.isdigit() else None
    ids, stats = await db(request, _list, before)
    more = len(ids) > PAGE
    ids = ids[:PAGE]
    columns = list(next(iter(stats.values())).keys()) if stats else []
    return aiohttp_jinja2.render_template(
        "mailings.html",
        request,
        {
            "rows": [stats.get(m, {"mailing_id": m}) for m in ids],
            "columns": columns,
            "next_before": ids[-1] if more and ids else None,
            "days": DAYS,
        },
    )


def _one(conn: psycopg.Connection, mailing_id: int) -> dict[str, Any]:
    stats = browse.mailing_stats_rows(conn, [mailing_id]).get(mailing_id)
    sent = browse.mailing_first_sent(conn, mailing_id)
    timeline = browse.mailing_timeline(conn, mailing_id, "hour")
    bounces = browse.mailing_bounce_reasons(conn, mailing_id)
    return {"stats": stats, "sent": sent, "timeline": timeline, "bounces": bounces}


async def mailing(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise web.HTTPNotFound(text="No such mailing.")
    mailing_id = int(raw)
    found = await db(request, _one, mailing_id)
    if found["stats"] is None:
        raise web.HTTPNotFound(text=f"No stored events for mailing {mailing_id}.")
    # hours counted from the hour of the send (the timeline's buckets are whole hours)
    start = found["sent"] or (found["timeline"][0][0] if found["timeline"] else None)
    start = start.replace(minute=0, second=0, microsecond=0) if start else None
    chart = {
        "hours": [(t - start).total_seconds() / 3600 if start else 0 for t, _o, _c in found["timeline"]],
        "times": [t.timestamp() * 1000 for t, _o, _c in found["timeline"]],
        "opens": [o for _t, o, _c in found["timeline"]],
        "clicks": [c for _t, _o, c in found["timeline"]],
    }
    stats = found["stats"]
    return aiohttp_jinja2.render_template(
        "mailing.html",
        request,
        {
            "mailing_id": mailing_id,
            "stats": stats,
            "human": [c for c in stats if "human" in c or "machine" in c],
            "sent": found["sent"],
            "bounces": found["bounces"],
            "chart": chart,
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/mailings", mailings)
    app.router.add_get("/mailings/{id}", mailing)
