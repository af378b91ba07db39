"""The receiver's answers, against a real Redis: every status, body and header."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator

import pytest
import redis
from aiohttp.test_utils import TestClient
from rq import Queue

from common.envelope import unpack_calls
from common.settings import Settings
from tests.clients import receiver_client
from tests.payloads import FORM, OPEN, calls


def queued_calls(conn: redis.Redis, queue: str = "copernica") -> list[dict]:
    """Every call in the queue's jobs, decoded the way an RQ worker decodes them."""
    found = []
    for job_id in Queue(queue, connection=conn).get_job_ids():
        data = conn.hget(f"rq:job:{job_id}", "data")
        func, _instance, args, _kwargs = pickle.loads(data)
        assert func == "workers.jobs.store_packed"
        found.extend(unpack_calls(args[0]))
    return found


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    small = Settings.from_env({**settings.to_env(), "INGEST_MAX_BODY_BYTES": "1000"}, dotenv=False)
    async with receiver_client(small) as client:
        yield client


async def test_post_form_is_queued_with_envelope(client: TestClient, redis_conn: redis.Redis) -> None:
    resp = await client.post(
        "/copernica?x=1",
        data=OPEN,
        headers={
            "Content-Type": FORM,
            "X-Copernica-ID": "account-1234",
            "Digest": "SHA-256=abc",
            "X-Nonce": "n1",
            "Signature": 'keyId="k"',
            "Date": "Sun, 05 Jan 2014 21:31:40 GMT",
            "X-Other": "dropped",
        },
    )
    assert resp.status == 200
    assert await resp.json() == {"status": "queued"}
    [call] = queued_calls(redis_conn)
    assert call["body"] == OPEN
    assert call["content_type"] == FORM
    assert call["method"] == "POST" and call["target"] == "/copernica?x=1"
    assert call["remote"] == "127.0.0.1"
    assert call["headers"]["x-copernica-id"] == "account-1234"
    assert call["headers"]["digest"] == "SHA-256=abc"
    assert call["headers"]["signature"] == 'keyId="k"'
    assert call["headers"]["content-length"] == str(len(OPEN))
    assert "x-other" not in call["headers"]
    assert call["received_at"] > 1.7e9


async def test_post_json_is_queued(client: TestClient, redis_conn: redis.Redis) -> None:
    _fields, body, content_type = calls(10)[9]
    assert content_type == "application/json"
    resp = await client.post("/copernica", data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 200
    assert [c["body"] for c in queued_calls(redis_conn)] == [body]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_probe(client: TestClient, method: str, redis_conn: redis.Redis) -> None:
    resp = await client.request(method, "/copernica")
    assert resp.status == 200
    assert queued_calls(redis_conn) == []


async def test_too_large_is_413(client: TestClient, redis_conn: redis.Redis) -> None:
    resp = await client.post("/copernica", data=b"a=" + b"x" * 2000, headers={"Content-Type": FORM})
    assert resp.status == 413
    assert "larger than 1000" in (await resp.json())["reason"]
    assert queued_calls(redis_conn) == []


async def test_too_large_chunked_is_413(client: TestClient, redis_conn: redis.Redis) -> None:
    async def chunks():
        for _ in range(30):
            yield b"x" * 100

    resp = await client.post("/copernica", data=chunks(), headers={"Content-Type": FORM})
    assert resp.status == 413
    assert queued_calls(redis_conn) == []


async def test_too_large_chunked_body_arriving_whole_is_413(client: TestClient, redis_conn: redis.Redis) -> None:
    """A chunked body already complete when the handler runs is taken from the buffer: its size
    is checked there, not by aiohttp's read."""
    body = b"a=" + b"x" * 1500
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /copernica HTTP/1.1\r\nHost: t\r\nContent-Type: "
        + FORM.encode()
        + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + chunked
    )  # one write
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"larger than 1000" in answer
    assert queued_calls(redis_conn) == []


@pytest.mark.usefixtures("redis_conn")
async def test_empty_is_400(client: TestClient) -> None:
    resp = await client.post("/copernica", data=b"", headers={"Content-Type": FORM})
    assert resp.status == 400
    assert await resp.json() == {"status": "error", "reason": "empty body"}


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", ""])
async def test_other_content_type_is_415(client: TestClient, content_type: str, redis_conn: redis.Redis) -> None:
    resp = await client.post("/copernica", data=OPEN, headers={"Content-Type": content_type})
    assert resp.status == 415
    assert "content type" in (await resp.json())["reason"]
    assert queued_calls(redis_conn) == []


async def test_unknown_path_is_json_404(client: TestClient) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["status"] == "error"


async def test_health_and_ready(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["redis"] == "ok"


async def test_redis_refusing_writes_is_503(client: TestClient, redis_conn: redis.Redis) -> None:
    """A full Redis with noeviction refuses writes: the caller is told to come back."""
    before = redis_conn.config_get("maxmemory")["maxmemory"]
    redis_conn.config_set("maxmemory", "1")
    try:
        resp = await client.post("/copernica", data=OPEN, headers={"Content-Type": FORM})
    finally:
        redis_conn.config_set("maxmemory", before)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert (await resp.json())["reason"] == "could not write to Redis"
    assert queued_calls(redis_conn) == []
    assert (await client.post("/copernica", data=OPEN, headers={"Content-Type": FORM})).status == 200
