"""Mailings: those of the last 90 days with `mailing_stats`' figures (paged by mailing id),
and one mailing's page: its figures (every column the view has, the human/machine ones too
once they exist), opens and clicks over time after the send, the bounce reasons, and the latest
reconcile result (`ingest reconcile --mailing`, `--follow`: Copernica's statistics against ours).

The figures come through `console.computed` (kept in Redis, computed again in the background
when older than two minutes): a page never waits more than its budget for them. The reconcile
results are read on each request (an index probe per mailing, one query per page): a check just
run shows at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp_jinja2
import psycopg
from aiohttp import web

from console.app import COMPUTED, app_db, db
from console.computed import Figure
from workers.storage import browse, reconciliations

PAGE = 25
DAYS = 90
LIST_WAIT = 0.15  # seconds the list waits for figures it does not have yet
PAGE_WAIT = 0.2  # the same for a mailing's page
RELOAD = 3  # seconds after which a page with figures missing reloads itself


def _recent(conn: psycopg.Connection, before: int | None) -> list[int]:
    return browse.recent_mailings(conn, datetime.now(UTC) - timedelta(days=DAYS), before=before, limit=PAGE + 1)


def _stats(conn: psycopg.Connection, mailing_id: int) -> dict[str, Any] | None:
    return browse.mailing_stats_rows(conn, [mailing_id]).get(mailing_id)


def _as_of(figures: list[Figure | None]) -> datetime | None:
    known = [f.computed_at for f in figures if f is not None]
    return datetime.fromtimestamp(min(known), UTC) if known else None


async def mailings(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("before", "")
    before = int(raw) if raw.isdigit() else None
    ids = await db(request, _recent, before)
    more = len(ids) > PAGE
    ids = ids[:PAGE]
    app = request.app

    def compute(mailing_id: int) -> Any:
        return lambda: app_db(app, _stats, mailing_id)

    found = await app[COMPUTED].get_many({f"mailing-stats:{m}": compute(m) for m in ids}, wait=LIST_WAIT)
    figures = [found[f"mailing-stats:{m}"] for m in ids]
    rows = [
        f.value if f is not None and f.value is not None else {"mailing_id": m}
        for m, f in zip(ids, figures, strict=True)
    ]
    columns = next((list(row) for row in rows if len(row) > 1), [])
    missing = sum(1 for f in figures if f is None)
    checks = await db(request, reconciliations.latest_many, ids)
    return aiohttp_jinja2.render_template(
        "mailings.html",
        request,
        {
            "rows": rows,
            "columns": columns,
            "checks": checks,
            "next_before": ids[-1] if more and ids else None,
            "days": DAYS,
            "missing": missing,
            "reload": RELOAD if missing else None,
            "as_of": _as_of(figures),
        },
    )


def _page(conn: psycopg.Connection, mailing_id: int) -> dict[str, Any]:
    """What a mailing's page shows, as plain values (kept as JSON)."""
    stats = _stats(conn, mailing_id)
    if stats is None:
        return {"stats": None}
    sent = browse.mailing_first_sent(conn, mailing_id)
    timeline = browse.mailing_timeline(conn, mailing_id, "hour")
    # hours counted from the hour of the send (the timeline's buckets are whole hours)
    start = sent or (timeline[0][0] if timeline else None)
    start = start.replace(minute=0, second=0, microsecond=0) if start else None
    return {
        "stats": stats,
        "sent": sent.strftime("%Y-%m-%d %H:%M") if sent else None,
        "bounces": browse.mailing_bounce_reasons(conn, mailing_id),
        "chart": {
            "hours": [(t - start).total_seconds() / 3600 if start else 0 for t, _o, _c in timeline],
            "opens": [o for _t, o, _c in timeline],
            "clicks": [c for _t, _o, c in timeline],
        },
    }


async def mailing(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise web.HTTPNotFound(text="No such mailing.")
    mailing_id = int(raw)
    app = request.app
    figure = await app[COMPUTED].get(
        f"mailing-page:{mailing_id}", lambda: app_db(app, _page, mailing_id), wait=PAGE_WAIT
    )
    if figure is not None and figure.value["stats"] is None:
        raise web.HTTPNotFound(text=f"No stored events for mailing {mailing_id}.")
    check = await db(request, reconciliations.latest, mailing_id)
    context: dict[str, Any] = {"mailing_id": mailing_id, "pending": figure is None, "reload": RELOAD, "check": check}
    if figure is not None:
        page = figure.value
        stats = page["stats"]
        context |= {
            "stats": stats,
            "human": [c for c in stats if "human" in c or "machine" in c],
            "sent": page["sent"],
            "bounces": page["bounces"],
            "chart": page["chart"],
            "as_of": datetime.fromtimestamp(figure.computed_at, UTC),
            "reload": None,
        }
    return aiohttp_jinja2.render_template("mailing.html", request, context)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/mailings", mailings)
    app.router.add_get("/mailings/{id}", mailing)
