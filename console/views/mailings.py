"""Mailings: those of the last 90 days with `mailing_stats`' figures (paged by mailing id),
and one mailing's page: its figures (every column the view has, the human/machine ones too
once they exist), opens and clicks over time after the send, the bounce reasons, and the latest
reconcile result (`ingest reconcile --mailing`, `--follow`: Copernica's statistics against ours).

Everything is read at each request, so a page shows what was stored just before: `mailing_stats`
reads `mailing_totals` (kept by triggers, migration 0006), a primary-key probe per mailing; a
mailing's charts aggregate its own events through `events_mailing_type_idx` (one mailing's
events, never the table's: `bench/README.md` has the figures); the reconcile results are an
index probe per mailing. Each page reads over one pooled connection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
import psycopg
from aiohttp import web

from console.app import db
from workers.storage import browse, reconciliations

PAGE = 25
DAYS = 90


def _listing(conn: psycopg.Connection, before: int | None) -> dict[str, Any]:
    """One page of the list: up to PAGE mailings below `before`, their figures and checks."""
    ids = browse.recent_mailings(conn, datetime.now(UTC) - timedelta(days=DAYS), before=before, limit=PAGE + 1)
    more = len(ids) > PAGE
    ids = ids[:PAGE]
    stats = browse.mailing_stats_rows(conn, ids)
    rows = [stats.get(m, {"mailing_id": m}) for m in ids]
    return {
        "rows": rows,
        "columns": next((list(row) for row in rows if len(row) > 1), []),
        "checks": reconciliations.latest_many(conn, ids),
        "next_before": ids[-1] if more and ids else None,
    }


async def mailings(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("before", "")
    before = int(raw) if raw.isdigit() else None
    listing = await db(request, _listing, before)
    return aiohttp_jinja2.render_template("mailings.html", request, listing | {"days": DAYS})


def _page(conn: psycopg.Connection, mailing_id: int) -> dict[str, Any] | None:
    """What a mailing's page shows, or None when the mailing has no stored events."""
    stats = browse.mailing_stats_rows(conn, [mailing_id]).get(mailing_id)
    if stats is None:
        return None
    sent = browse.mailing_first_sent(conn, mailing_id)
    timeline = browse.mailing_timeline(conn, mailing_id, "hour")
    # hours counted from the hour of the send (the timeline's buckets are whole hours)
    start = sent or (timeline[0][0] if timeline else None)
    start = start.replace(minute=0, second=0, microsecond=0) if start else None
    return {
        "stats": stats,
        "human": [c for c in stats if "human" in c or "machine" in c],
        "sent": sent.strftime("%Y-%m-%d %H:%M") if sent else None,
        "bounces": browse.mailing_bounce_reasons(conn, mailing_id),
        "chart": {
            "hours": [(t - start).total_seconds() / 3600 if start else 0 for t, _o, _c in timeline],
            "opens": [o for _t, o, _c in timeline],
            "clicks": [c for _t, _o, c in timeline],
        },
        "check": reconciliations.latest(conn, mailing_id),
    }


async def mailing(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise web.HTTPNotFound(text="No such mailing.")
    mailing_id = int(raw)
    page = await db(request, _page, mailing_id)
    if page is None:
        raise web.HTTPNotFound(text=f"No stored events for mailing {mailing_id}.")
    return aiohttp_jinja2.render_template("mailing.html", request, page | {"mailing_id": mailing_id})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/mailings", mailings)
    app.router.add_get("/mailings/{id}", mailing)
