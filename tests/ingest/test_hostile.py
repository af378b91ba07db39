"""Hostile input against a real `ingest serve`: each call gets a 2xx or a 4xx, never a 5xx, the
process keeps answering, and whatever was queued becomes an event or a reject in a real
PostgreSQL without an exception escaping the worker's parse and store path.

The receiver does not parse bodies: JSON bombs, invalid UTF-8 or PHP-style nesting are queued
as they are and contained by the worker (workers/events/parsing.py, fuzzed in tests/test_parsing.py
and tests/test_model.py). What the receiver must refuse itself is malformed HTTP, oversized or
compressed-to-explode bodies and senders that stall.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.checks import store_and_assert_nothing_vanished
from tests.ingest.test_app import queued_calls
from tests.payloads import webhook_body, webhook_json
from tests.processes import ingest_env, receiver
from workers.jobs import parse_calls
from workers.storage import store

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
LIMIT = 1_000_000
TZ = "Europe/Amsterdam"

HOSTILE_BODIES: dict[str, tuple[bytes, str]] = {
    "invalid utf-8 form": (b"id=\xff\xfe&type=open&recipient=\xc3\x28", FORM),
    "invalid utf-8 json": (b'{"id": "\xff\xfe", "type": "open"}', JSON),
    "latin-1 charset form": (b"id=caf\xe9&type=open", FORM + "; charset=iso-8859-1"),
    "unknown charset": (b"id=a&type=open", FORM + "; charset=x-no-such-codec"),
    "nul in json string": (b'{"id": "a\\u0000b", "type": "open", "time": 1795694401}', JSON),
    "nul in form value": (b"id=a%00b&type=open&time=1795694401", FORM),
    "json nested deep": (b"[" * 100_000 + b"]" * 100_000, JSON),
    "json unclosed deep": (b'{"a":' * 50_000, JSON),
    "json huge number": (b'{"id": "x", "type": "open", "time": 1' + b"0" * 5000 + b"}", JSON),
    "json 1e999 and NaN": (b'{"id": "x", "type": "open", "time": 1e999, "ip": NaN}', JSON),
    "json many values": (b"[" + b"0," * 300_000 + b"0]", JSON),
    "json duplicate keys": (b'{"type": "open", "type": "click", "id": "d"}', JSON),
    "json not an object": (b'"just a string"', JSON),
    "php keys nested deep": (b"a" + b"%5Bx%5D" * 20_000 + b"=1&type=open", FORM),
    "php keys brackets only": (b"[][][][]=1&type=open", FORM),
    "php keys many fields": (b"&".join(b"f%d=%d" % (i, i) for i in range(60_000)), FORM),
    "php list index huge": (b"interests[99999999999999999999]=x&type=open", FORM),
    "form separators only": (b"&&&&====&&&", FORM),
    "form percent garbage": (b"%zz%=%%%&type=%", FORM),
    "binary noise": (bytes(range(256)) * 100, FORM),
    "+json media type": (b'{"type": "open", "id": "p"}', "application/vnd.copernica+json"),
}


@pytest.fixture
def base(redis_url: str, database_url: str, redis_conn: redis.Redis) -> Iterator[str]:  # noqa: ARG001 - an emptied queue
    env = ingest_env(redis_url, database_url, INGEST_MAX_BODY_BYTES=str(LIMIT), INGEST_BODY_TIMEOUT="1")
    with receiver(env) as url:
        yield url


async def _exchange(base: str, data: bytes, *, wait: float = 10.0, pause: float = 0.0, more: bytes = b"") -> bytes:
    """Send raw bytes (optionally more after a pause) and return the status line of the answer."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
            if more:
                writer.write(more)
                await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), wait)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        answer = b"closed: " + type(exc).__name__.encode()
    finally:
        writer.close()
    return answer.strip()


def exchange(base: str, data: bytes, **kwargs: float | bytes) -> bytes:
    return asyncio.run(_exchange(base, data, **kwargs))


def post(base: str, body: bytes, content_type: str, *headers: bytes) -> int:
    head = (
        b"POST /copernica HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: "
        + content_type.encode()
        + b"\r\nContent-Length: %d\r\n" % len(body)
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
    )
    line = exchange(base, head + body)
    return int(line.split()[1])


def alive(base: str) -> bool:
    return exchange(base, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").endswith(b"200 OK")


def test_hostile_bodies_are_queued_and_contained_by_the_worker(
    base: str, redis_conn: redis.Redis, db: psycopg.Connection
) -> None:
    for name, (body, content_type) in HOSTILE_BODIES.items():
        assert post(base, body, content_type) == 200, name
    assert alive(base)
    calls = queued_calls(redis_conn)
    assert len(calls) == len(HOSTILE_BODIES)
    started = time.monotonic()
    events, origins, rejects = parse_calls(calls, TZ)  # nothing escapes: every call is one or the other
    assert len(events) + len(rejects) == len(calls)
    assert time.monotonic() - started < 10  # contained, not followed
    _stored_keys, kept = store_and_assert_nothing_vanished(db, events, origins, rejects)
    for reject in rejects:
        assert store.call_key(reject.envelope) in kept


def test_hostile_headers_are_kept_or_refused(base: str, redis_conn: redis.Redis) -> None:
    body = webhook_body("open", id="h")
    assert (
        post(
            base,
            body,
            FORM,
            b"X-Copernica-ID: \xff\xfe\xc3\x28",
            b"Digest: " + b"=" * 8000,
            b'Signature: keyId="\xe2\x82\xac"',
        )
        == 200
    )
    assert post(base, body, FORM, b"X-Nonce: \x7f") == 400  # a control character: aiohttp refuses the call
    [call] = queued_calls(redis_conn)
    assert call["headers"]["x-copernica-id"] == "\xff\xfe\xc3\x28"  # kept byte for byte (latin-1)
    events, _origins, rejects = parse_calls([call], TZ)
    assert len(events) + len(rejects) == 1


MALFORMED_HTTP: dict[str, bytes] = {
    "header flood": b"POST /copernica HTTP/1.1\r\nHost: t\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "huge header": b"POST /copernica HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "huge request line": b"POST /copernica?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    "bad chunk size": b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "length and chunked": b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "negative length": b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n{}",
    "nul in header": b"POST /copernica HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "tls to plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "not http": b"\x00\xff\r\n\r\n",
    "bad gzip": b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    "bad deflate": b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Encoding: deflate\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("name", list(MALFORMED_HTTP))
def test_malformed_http_is_4xx(base: str, name: str, redis_conn: redis.Redis) -> None:
    line = exchange(base, MALFORMED_HTTP[name])
    assert line.startswith(b"HTTP/1.") and line.split()[1].startswith(b"4"), line
    assert alive(base)
    assert queued_calls(redis_conn) == []


def test_compressed_bomb_is_413_with_bounded_memory(base: str, redis_conn: redis.Redis) -> None:
    bomb = gzip.compress(b"\x00" * 200_000_000)  # 200 MB in about 200 KB
    assert len(bomb) < LIMIT
    status = post(base, bomb, JSON, b"Content-Encoding: gzip")
    assert status == 413
    assert alive(base)
    assert queued_calls(redis_conn) == []


def test_stalled_body_gets_408(base: str, redis_conn: redis.Redis) -> None:
    head = b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    started = time.monotonic()
    line = exchange(base, head, wait=10)
    assert line.split()[1] == b"408", line
    assert 0.9 < time.monotonic() - started < 5
    # a slow but steady sender within the limit is fine
    body = webhook_json("open", id="slow")
    head = b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    assert exchange(base, head % len(body) + body[:5], pause=0.3, more=body[5:]).split()[1] == b"200"
    assert len(queued_calls(redis_conn)) == 1
    assert alive(base)
