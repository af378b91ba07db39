"""Webhook bodies for the tests: one call built from the fields a test names (`webhook_body`,
`webhook_json`), and many distinct calls of every type built from the documented field lists
(../shared/copernica.md, section 1), for volume tests. tests/fixtures_copernica.py has the
single cases with the columns each must give, and the form encoding all use."""

from __future__ import annotations

import random
import string

import orjson

from common.envelope import wire
from tests.fixtures_copernica import encode_form

BASE_TIME = 1795694401  # 2026-11-26 12:00:01 UTC
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def webhook_body(kind: str = "open", /, **fields: object) -> bytes:
    """A webhook call's body as Copernica posts it by default: form-urlencoded (nested values
    PHP-style), `type=kind` first, then `fields` in the order given."""
    return encode_form({"type": kind, **fields})


def webhook_json(kind: str = "open", /, **fields: object) -> bytes:
    """The same call as a JSON body (Copernica's other encoding)."""
    return orjson.dumps({"type": kind, **fields})


def queued_call(n: int, *, prefix: str = "m", remote: str = "127.0.0.1", headers: dict[str, str] | None = None) -> dict:
    """The `n`th of a run of distinct opens, as the receiver queues a call (`common.envelope.wire`)."""
    body = webhook_body("open", id=f"{prefix}{n}", time=str(BASE_TIME + n))
    return wire(body, FORM, BASE_TIME + n, remote, "POST", "/copernica", headers or {})


# The README's example open: one ordinary call for tests that need any valid one.
OPEN = webhook_body(
    "open",
    id="b4icbaqjswyrb7tc",
    timestamp="2026-11-26 12:00:01",
    time=str(BASE_TIME),
    recipient="a@example.com",
    ip="192.0.2.1",
    useragent="Mozilla/5.0",
    tags="news;weekly",
)


def message_id(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=16))


def webhook_fields(kind: str, n: int, rng: random.Random) -> dict[str, object]:
    """Fields of one webhook call of type `kind`; `n` makes each call a distinct event."""
    t = BASE_TIME + n
    stamp = f"2026-11-26 {12 + (n // 3600) % 12:02d}:{(n // 60) % 60:02d}:{n % 60:02d}"
    common = {"type": kind, "timestamp": stamp, "time": str(t)}
    mail = {"id": message_id(rng), "recipient": f"user{n}@example.com", "tags": "news;weekly"}
    ip = f"192.0.2.{n % 250 + 1}"
    if kind == "open":
        return {**mail, **common, "ip": ip, "useragent": "Mozilla/5.0", "referer": ""}
    if kind == "click":
        return {**mail, **common, "ip": ip, "original": f"https://example.com/a?n={n}", "useragent": "Mozilla/5.0"}
    if kind == "delivery":
        return {**mail, **common}
    if kind == "failure":
        return {
            **mail,
            **common,
            "action": "failed",
            "state": "rcpt",
            "code": "550",
            "extended": "5.1.1",
            "description": "user unknown",
        }
    if kind == "bounce":
        return {**mail, **common, "envelope": "bounces@example.com", "mime": "From: x\r\n\r\nbody " * 5}
    if kind == "unsubscribe":
        return {**common, "id": message_id(rng), "database": "12", "profile": str(1000 + n), "mailing": "77"}
    if kind in ("create", "update"):
        return {
            **common,
            "profile": str(1000 + n),
            "database": "12",
            "created": stamp,
            "modified": stamp,
            "fields": {"email": f"user{n}@example.com", "name": f"User {n}"},
            "interests": ["a", "b"],
            "parameters": {"mail": "x"},
        }
    if kind == "delete":
        return {**common, "profile": str(1000 + n), "database": "12"}
    raise ValueError(kind)


WEBHOOK_TYPES = ("open", "click", "delivery", "failure", "bounce", "unsubscribe", "create", "update", "delete")


def encode(fields: dict[str, object], as_json: bool) -> tuple[bytes, str]:
    """(body, content type) of a call, form-urlencoded or JSON."""
    if as_json:
        return orjson.dumps(fields), JSON
    return encode_form(fields), FORM


def calls(count: int, seed: int = 1) -> list[tuple[dict[str, object], bytes, str]]:
    """`count` distinct calls cycling through every type, alternating form and JSON."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        fields = webhook_fields(WEBHOOK_TYPES[n % len(WEBHOOK_TYPES)], n, rng)
        body, content_type = encode(fields, as_json=bool((n // len(WEBHOOK_TYPES)) % 2))
        out.append((fields, body, content_type))
    return out
