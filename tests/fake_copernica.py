"""A fake Copernica REST API (v4) for the backfill tests: an aiohttp app on 127.0.0.1.

It serves the authenticate endpoint (JWT in three answer shapes), logfile lists and logfiles
in JSON, CSV (with or without header) and XML, built from the column layouts documented in
copernica.md section 3 (written out here again, not imported from the code under test), and
fails on script: a status (401, 429 with Retry-After, 503, ...), a connection dropped midway
(with Content-Length or chunked), a body cut short, a malformed record, a slow body.

Runs in a thread with its own event loop, so synchronous code and subprocesses can call it.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import itertools
import secrets
import socket
import threading
import time
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import orjson
from aiohttp import web

ZONE = zoneinfo.ZoneInfo("Europe/Amsterdam")

# copernica.md, section 3, in file order.
COLUMNS: dict[str, tuple[str, ...]] = {
    "cdm-attempts": (
        "id",
        "time",
        "mailingid",
        "profileid",
        "subprofileid",
        "databaseid",
        "collectionid",
        "senderdomain",
        "templateid",
        "tags",
        "email",
    ),
    "cdm-delivery": ("id", "time", "attempts", "email", "tags", "senderdomain", "profile", "subprofile", "template"),
    "cdm-impression": (
        "id",
        "time",
        "ip",
        "header",
        "email",
        "tags",
        "countrycode",
        "countryname",
        "regioncode",
        "city",
        "senderdomain",
        "profile",
        "subprofile",
        "template",
    ),
    "cdm-click": (
        "id",
        "senderdomain",
        "time",
        "linkinfo",
        "ip",
        "header",
        "email",
        "tags",
        "countrycode",
        "countryname",
        "regioncode",
        "city",
        "profile",
        "subprofile",
        "template",
    ),
    "cdm-error": (
        "id",
        "time",
        "type",
        "status",
        "description",
        "code",
        "email",
        "tags",
        "senderdomain",
        "profile",
        "subprofile",
        "template",
    ),
    "pom-deliveries": (
        "id",
        "time",
        "attempts",
        "email",
        "tags",
        "senderdomain",
        "groupid",
        "profile",
        "subprofile",
        "template",
        "document",
    ),
    "pom-clicks": (
        "id",
        "time",
        "ip",
        "header",
        "email",
        "tags",
        "countrycode",
        "countryname",
        "regioncode",
        "city",
        "linkinfo",
        "senderdomain",
        "groupid",
        "profile",
        "subprofile",
        "template",
        "document",
    ),
}
COLUMNS["pom-delivery"] = COLUMNS["pom-deliveries"]  # some pages name the file so
# Copernica's own log of the webhook calls that failed (no events; records have no `id`).
COLUMNS["feedback-loop-errors"] = ("time", "response", "recipient", "header")
# The webhook `type` of each log, for tests that send the same events as webhooks.
WEBHOOK_TYPE = {
    "cdm-impression": "open",
    "cdm-click": "click",
    "cdm-delivery": "delivery",
    "cdm-error": "failure",
    "pom-clicks": "click",
    "pom-deliveries": "delivery",
}


def local_time(unix: int, zone: zoneinfo.ZoneInfo = ZONE) -> str:
    return datetime.fromtimestamp(unix, zone).strftime("%Y-%m-%d %H:%M:%S")


def make_records(
    log_type: str,
    day: date,
    count: int,
    *,
    seed: int = 0,
    start_hour: int = 8,
    zone: zoneinfo.ZoneInfo = ZONE,
    step: int = 7,
) -> list[dict]:
    """`count` plausible records of `log_type` on `day` (Amsterdam time), one every `step`
    seconds; `time` written in `zone` (a logfile in another zone than Copernica's)."""
    base = int(datetime(day.year, day.month, day.day, start_hour, tzinfo=ZONE).timestamp())
    records = []
    for n in range(count):
        unix = base + step * n
        values = {
            "id": f"m{seed}x{log_type[4:]}{n:06d}",
            "time": local_time(unix, zone),
            "_unix": unix,
            "ip": f"192.0.2.{n % 250 + 1}",
            "header": "Mozilla/5.0 (X11)",
            "email": f"user{n}@example.com",
            "tags": "news;weekly",
            "countrycode": "NL",
            "countryname": "Netherlands",
            "regioncode": "NH",
            "city": "Amsterdam",
            "senderdomain": "mail.example.com",
            "profile": str(1000 + n),
            "subprofile": "",
            "template": "17",
            "linkinfo": str(500 + n % 9),
            "attempts": "1",
            "type": "hard",
            "status": "5.1.1",
            "description": "user unknown",
            "code": "550",
            "mailingid": "42",
            "profileid": str(1000 + n),
            "subprofileid": "",
            "databaseid": "3",
            "collectionid": "",
            "templateid": "17",
            "groupid": "5",
            "document": "9",
        }
        records.append({c: values[c] for c in COLUMNS[log_type]} | {"_unix": unix})
    return records


def webhook_fields(log_type: str, record: dict) -> dict[str, Any]:
    """The webhook Copernica would have posted for the same event."""
    fields = {
        "id": record["id"],
        "type": WEBHOOK_TYPE[log_type],
        "time": str(record["_unix"]),
        "timestamp": local_time(record["_unix"]),
        "recipient": record["email"],
        "tags": record.get("tags", ""),
    }
    if "ip" in record:
        fields["ip"] = record["ip"]
        fields["useragent"] = record["header"]
    if log_type == "cdm-click":
        fields["original"] = f"https://example.com/l/{record['linkinfo']}"
    return fields


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


@dataclass
class LogFile:
    name: str
    log_type: str
    day: date
    records: list[dict]
    malformed_after: int | None = None  # insert one malformed record after this many
    cut: int | None = None  # serve only the first `cut` bytes (as a complete answer)


@dataclass
class Hit:
    method: str
    path: str
    query: dict[str, str]
    at: float
    authorization: str | None


# --- webhooks (REST v4: GET /v4/webhooks paged, POST /v4/webhooks, DELETE /v4/webhook/{id}) ---------
# Kept apart from the logfile part above: FakeCopernica mixes it in. Scripted failures match
# "<METHOD> <path>", so fail("POST /v4/webhooks", ...) hits only creations and fail("/v4/webhooks", ...)
# every method.

WEBHOOK_TRIGGERS = ("create", "update", "delete", "click", "delivery", "open", "bounce", "failure")


class FakeWebhooks:
    webhook_page_limit = 1000  # the most items per page the fake gives (Copernica: start/limit <= 1000)

    def init_webhooks(self) -> None:
        self.webhooks: dict[int, dict[str, Any]] = {}  # id -> as GET shows it
        self.webhook_bodies: list[Any] = []  # every POST body as received
        self._webhook_ids = itertools.count(1894)

    def add_webhook(self, handler: str, trigger: str, **extra: Any) -> int:
        webhook_id = next(self._webhook_ids)
        self.webhooks[webhook_id] = {
            "ID": str(webhook_id),
            "handler": handler,
            "trigger": trigger,
            "callers": extra.pop("callers", ["ms", "publisher"]),
            **extra,
        }
        return webhook_id

    def webhook_hits(self) -> list[Hit]:
        return [h for h in self.hits if "/v4/webhook" in h.path]  # type: ignore[attr-defined]

    async def _webhook_gate(self, request: web.Request) -> web.StreamResponse | None:
        self._hit(request)  # type: ignore[attr-defined]
        if not self._authorised(request):  # type: ignore[attr-defined]
            return web.json_response({"error": {"message": "Invalid access token"}}, status=401)
        action = self._next_action(f"{request.method} {request.path}")  # type: ignore[attr-defined]
        if action is None:
            return None
        if isinstance(action, tuple):
            status, retry_after = action
            return web.json_response({"error": "slow down"}, status=status, headers={"Retry-After": str(retry_after)})
        if action == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        return web.Response(status=int(action), text="Loadbalancer Error")

    async def list_webhooks(self, request: web.Request) -> web.StreamResponse:
        refused = await self._webhook_gate(request)
        if refused is not None:
            return refused
        try:
            start, limit = int(request.query.get("start", 0)), int(request.query.get("limit", 100))
        except ValueError:
            return web.json_response({"error": {"message": "bad start or limit"}}, status=400)
        if start < 0 or not 0 < limit <= 1000:
            return web.json_response({"error": {"message": "start/limit out of range"}}, status=400)
        items = [self.webhooks[k] for k in sorted(self.webhooks)]
        page = items[start : start + min(limit, self.webhook_page_limit)]
        return web.json_response(
            {"start": start, "limit": limit, "count": len(page), "total": len(items), "data": page}
        )

    async def create_webhook(self, request: web.Request) -> web.StreamResponse:
        refused = await self._webhook_gate(request)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        self.webhook_bodies.append(body)
        problem = _webhook_problem(body)
        if problem:
            return web.json_response({"error": {"message": problem}}, status=400)
        webhook_id = self.add_webhook(
            body["handler"], body["trigger"], **{k: v for k, v in body.items() if k not in ("handler", "trigger")}
        )
        return web.Response(headers={"X-Created": str(webhook_id), "Location": f"{request.url}/{webhook_id}"})

    async def delete_webhook(self, request: web.Request) -> web.StreamResponse:
        refused = await self._webhook_gate(request)
        if refused is not None:
            return refused
        raw = request.match_info["id"]
        if not raw.isdigit() or int(raw) not in self.webhooks:
            return web.json_response({"error": {"message": "webhook not found"}}, status=404)
        del self.webhooks[int(raw)]
        return web.Response(status=204)

    def add_webhook_routes(self, app: web.Application) -> None:
        app.router.add_get("/v4/webhooks", self.list_webhooks)
        app.router.add_post("/v4/webhooks", self.create_webhook)
        app.router.add_delete("/v4/webhook/{id}", self.delete_webhook)


def _webhook_problem(body: Any) -> str | None:
    """Why Copernica would refuse this POST body, or None (copernica.md section 1)."""
    if not isinstance(body, dict):
        return "expected an object"
    if not isinstance(body.get("handler"), str) or not body["handler"].startswith(("http://", "https://")):
        return "handler must be a URL"
    if body.get("trigger") not in WEBHOOK_TRIGGERS:
        return "unknown trigger"
    callers = body.get("callers", ["ms", "publisher"])
    if not isinstance(callers, list) or not callers or not set(callers) <= {"ms", "publisher"}:
        return "callers must be a list of ms, publisher"
    for key in ("database", "collection"):
        if key in body and (not isinstance(body[key], int) or isinstance(body[key], bool)):
            return f"{key} must be a numeric id"
    unknown = set(body) - {"handler", "trigger", "callers", "database", "collection"}
    return f"unknown fields {sorted(unknown)}" if unknown else None


# --- per-mailing statistics (REST v4: GET /v4/ms/emailing/{id}/statistics, GET /v4/html/...) -------
# Kept apart like the webhooks: FakeCopernica mixes it in. A mailing unknown to a path answers 404
# there. Scripted failures match the path: fail("/statistics", (429, 0), 503) answers the next
# two statistics calls so, whichever mailing they ask for.


class FakeStatistics:
    def init_statistics(self) -> None:
        self.statistics: dict[tuple[str, int], dict[str, Any]] = {}  # ("ms" | "html", id) -> answer

    def add_statistics(self, mailing_id: int, stats: dict[str, Any], *, publisher: bool = False) -> None:
        """What `GET /v4/{ms|html}/emailing/{mailing_id}/statistics` answers, e.g.
        `{"destinations": 10, "deliveries": {"total": 10}, "impressions": {"total": 7, "unique": 5}}`."""
        self.statistics[("html" if publisher else "ms", mailing_id)] = stats

    def statistics_hits(self) -> list[Hit]:
        return [h for h in self.hits if h.path.endswith("/statistics")]  # type: ignore[attr-defined]

    async def mailing_statistics(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)  # type: ignore[attr-defined]
        if not self._authorised(request):  # type: ignore[attr-defined]
            return web.json_response({"error": {"message": "Invalid access token"}}, status=401)
        scripted = await self._scripted(request)  # type: ignore[attr-defined]
        if scripted is not None:
            return scripted
        raw = request.match_info["id"]
        stats = self.statistics.get((request.match_info["kind"], int(raw))) if raw.isdigit() else None
        if stats is None:
            return web.json_response({"error": {"message": "mailing not found"}}, status=404)
        return web.json_response(stats)

    def add_statistics_routes(self, app: web.Application) -> None:
        app.router.add_get(r"/v4/{kind:ms|html}/emailing/{id}/statistics", self.mailing_statistics)


@dataclass
class FakeCopernica(FakeWebhooks, FakeStatistics):
    token: str = field(default_factory=lambda: "tok-" + secrets.token_hex(12))
    auth_shape: str = "object"  # object | string | bare
    jwt_exp: bool = True  # put `exp` in the JWT payload
    jwt_lifetime: int = 86400
    csv_header: bool = True
    paged: bool = False  # answer lists as {"start","limit","count","total","data"}, 2 per page
    chunk_size: int = 16384
    chunk_delay: float = 0.0  # seconds between body chunks (a slow server)
    files: dict[str, LogFile] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._valid: dict[str, float] = {}
        self._script: list[tuple[str, list[Any]]] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.init_webhooks()
        self.init_statistics()

    # --- set-up -------------------------------------------------------------------------------

    def add_file(self, log_type: str, day: date, records: list[dict], **options: Any) -> LogFile:
        name = f"{log_type}.{day.isoformat()}.log"
        self.files[name] = LogFile(name, log_type, day, records, **options)
        return self.files[name]

    def fail(self, path_part: str, *actions: Any) -> None:
        """The next requests whose path contains `path_part` get `actions` in turn: a status
        (int), (status, retry_after), 'drop' (Content-Length, connection closed midway) or
        'drop-chunked'."""
        with self._lock:
            self._script.append((path_part, list(actions)))

    def expire_tokens(self) -> None:
        with self._lock:
            self._valid.clear()

    def downloads(self, name: str | None = None) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith("/v4/logfile/") and (name is None or name in h.path)]

    def _next_action(self, path: str) -> Any:
        with self._lock:
            for index, (part, actions) in enumerate(self._script):
                if part in path and actions:
                    action = actions.pop(0)
                    if not actions:
                        del self._script[index]
                    return action
        return None

    # --- rendering ----------------------------------------------------------------------------

    def render(self, log: LogFile, fmt: str, since: int | None = None) -> bytes:
        columns = COLUMNS[log.log_type]
        rows = [r for r in log.records if since is None or r["_unix"] > since]
        bad_at = log.malformed_after if since is None else None
        if fmt == "json":
            items: list[bytes] = [orjson.dumps({c: r[c] for c in columns}) for r in rows]
            if bad_at is not None:
                items.insert(bad_at, b'"not a record"')
            body = b"[" + b",\n".join(items) + b"]"
        elif fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            if self.csv_header:
                writer.writerow(columns)
            lines = [[r[c] for c in columns] for r in rows]
            if bad_at is not None:
                lines.insert(bad_at, ["broken", "row"])
            writer.writerows(lines)
            body = out.getvalue().encode()
        elif fmt == "xml":
            parts = ["<records>"]
            for n, r in enumerate(rows):
                if n == bad_at:
                    parts.append("<record><id>broken</id><time>not a time</time></record>")
                parts.append("<record>" + "".join(f"<{c}>{escape(str(r[c]))}</{c}>" for c in columns) + "</record>")
            if bad_at is not None and bad_at >= len(rows):
                parts.append("<record><id>broken</id><time>not a time</time></record>")
            parts.append("</records>")
            body = "\n".join(parts).encode()
        else:
            raise web.HTTPNotFound(text="unknown format")
        return body[: log.cut] if log.cut is not None else body

    # --- handlers -----------------------------------------------------------------------------

    def _jwt(self) -> str:
        payload: dict[str, Any] = {"sub": "account-1", "jti": next(self._counter)}
        if self.jwt_exp:
            payload["exp"] = int(time.time()) + self.jwt_lifetime
        jwt = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(payload)}.{secrets.token_urlsafe(16)}"
        with self._lock:
            self._valid[jwt] = time.time() + self.jwt_lifetime
            self.issued.append(jwt)
        return jwt

    async def _scripted(self, request: web.Request, body: bytes | None = None) -> web.StreamResponse | None:
        action = self._next_action(request.path)
        if action is None:
            return None
        if isinstance(action, tuple):
            status, retry_after = action
            return web.json_response({"error": "slow down"}, status=status, headers={"Retry-After": str(retry_after)})
        if isinstance(action, int):
            return web.Response(status=action, text="Loadbalancer Error")
        if action in ("drop", "drop-chunked") and body is not None:
            resp = web.StreamResponse()
            if action == "drop":
                resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return resp
        raise AssertionError(f"unknown scripted action {action!r}")

    async def authenticate(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        scripted = await self._scripted(request)
        if scripted is not None:
            return scripted
        form = await request.post()
        if form.get("access_token") != self.token:
            return web.json_response({"error": {"message": "invalid access token"}}, status=401)
        jwt = self._jwt()
        if self.auth_shape == "bare":
            return web.Response(text=jwt)
        if self.auth_shape == "string":
            return web.json_response(jwt)
        return web.json_response({"access_token": jwt, "token_type": "bearer"})

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        jwt = header[7:] if header.startswith("Bearer ") else ""
        with self._lock:
            return self._valid.get(jwt, 0) > time.time()

    def _hit(self, request: web.Request) -> None:
        self.hits.append(
            Hit(
                request.method,
                request.path,
                dict(request.query),
                time.monotonic(),
                request.headers.get("Authorization"),
            )
        )

    async def logfiles(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        if not self._authorised(request):
            return web.json_response({"error": {"message": "Invalid access token"}}, status=401)
        scripted = await self._scripted(request)
        if scripted is not None:
            return scripted
        day, kind = request.query.get("date"), request.query.get("type")
        if not day and not kind:
            items: list[str] = sorted({f.day.isoformat() for f in self.files.values()})
        else:
            items = sorted(
                f.name
                for f in self.files.values()
                if (not day or f.day.isoformat() == day) and (not kind or f.log_type == kind)
            )
        if self.paged:
            start = int(request.query.get("start", 0))
            page = items[start : start + 2]
            return web.json_response(
                {"start": start, "limit": 2, "count": len(page), "total": len(items), "data": page}
            )
        return web.json_response(items)

    async def logfile(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        if not self._authorised(request):
            return web.json_response({"error": {"message": "Invalid access token"}}, status=401)
        log = self.files.get(request.match_info["name"])
        if log is None:
            return web.json_response({"error": {"message": "no such logfile"}}, status=404)
        since = request.query.get("from") if request.match_info["fmt"] != "csv" else None  # as documented
        body = self.render(log, request.match_info["fmt"], int(since) if since else None)
        scripted = await self._scripted(request, body)
        if scripted is not None:
            return scripted
        content_type = {"json": "application/json", "csv": "text/csv", "xml": "application/xml"}
        resp = web.StreamResponse(headers={"Content-Type": content_type[request.match_info["fmt"]]})
        resp.content_length = len(body)
        await resp.prepare(request)
        for start in range(0, len(body), self.chunk_size):
            await resp.write(body[start : start + self.chunk_size])
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/authenticate", self.authenticate)
        app.router.add_get("/v4/logfiles", self.logfiles)
        app.router.add_get("/v4/logfile/{name}/{fmt}", self.logfile)
        self.add_webhook_routes(app)
        self.add_statistics_routes(app)
        return app

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeCopernica:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def run() -> None:
            self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", port).start()
            ready.set()

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(run())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="fake-copernica", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Copernica did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    @property
    def api_url(self) -> str:
        return f"{self.url}/v4"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/authenticate"

    def env(self) -> dict[str, str]:
        return {
            "COPERNICA_ACCESS_TOKEN": self.token,
            "COPERNICA_API_URL": self.api_url,
            "COPERNICA_AUTH_URL": self.auth_url,
        }


def days(first: date, count: int) -> Iterable[date]:
    return (first + timedelta(days=n) for n in range(count))
