"""The receiver in-process, on aiohttp's test server, as `ingest serve` runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp.test_utils import RawTestServer, TestClient

from common.settings import Settings
from ingest.app import Receiver
from ingest.auth import Authenticator
from ingest.queueing import BatchQueue


@asynccontextmanager
async def receiver_client(
    settings: Settings, *, queue: BatchQueue | None = None, auth: Authenticator | None = None
) -> AsyncIterator[TestClient]:
    """A test client of a started receiver; on exit the server stops first, then the receiver
    writes what it holds (the order `ingest serve` follows)."""
    async with Receiver(settings, queue=queue, auth=auth) as receiver:
        server = RawTestServer(receiver.handle)
        await server.start_server(access_log=None, **receiver.server_options())
        async with TestClient(server) as client:
            yield client


def enqueue(settings: Settings, *batches: list[dict]) -> list[str]:
    """Each batch written as the receiver writes it (one RQ job each); their job ids."""

    async def go() -> list[str]:
        queue = BatchQueue(settings)
        try:
            return [await queue.enqueue(batch) for batch in batches]
        finally:
            await queue.close()

    return asyncio.run(go())
