"""URL verification files: Copernica's `smtpeter-xxxxx.txt`, kept in Redis and served by every receiver.

Before a webhook is switched on, Copernica fetches a file it handed out from "the same location"
as the webhook's URL: `/smtpeter-xxxxx.txt` for `/copernica`, `/copernica/smtpeter-xxxxx.txt`
for `/copernica/<token>`. `ingest verify-url FILE` stores the file's name and bytes in one Redis
hash; each receiver looks the name up there on a GET, so no restart and no shared disk is needed.

The name check, the key and the reads and writes live here only; the command
(`ingest.cli.verify`) and the receiver (`ingest.app`) both use them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import redis
import redis.asyncio as aredis

log = logging.getLogger("ingest.verification")

# One hash: field = file name, value = the file's bytes.
REDIS_KEY = "ingest:verify"
MAX_BYTES = 4096
NAME = re.compile(r"smtpeter-[A-Za-z0-9_-]{1,64}\.txt")
_PREFIXES = ("/copernica/", "/")  # where a name is served: next to /copernica/<token>, next to /copernica


class VerificationError(ValueError):
    """A file that cannot be stored; the message is one line."""


def valid_name(name: str) -> bool:
    return NAME.fullmatch(name) is not None


def name_in_path(raw_path: str) -> str | None:
    """The verification file name a request target asks for (`/<name>` or `/copernica/<name>`,
    the query left out), or None. Only the shape is checked here, not whether it is stored."""
    if "/smtpeter-" not in raw_path:  # most GETs (probes, /metrics) stop here
        return None
    path = raw_path.partition("?")[0]
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            name = path[len(prefix) :]
            return name if NAME.fullmatch(name) else None
    return None


def read_file(path: str | Path) -> tuple[str, bytes]:
    """The name (the base name of `path`) and bytes of a downloaded verification file.
    Raises VerificationError for a name of another shape, a missing file or one over MAX_BYTES."""
    path = Path(path)
    name = path.name
    if not valid_name(name):
        raise VerificationError(
            f"{name or str(path)!r} is not a verification file name (smtpeter-<letters, digits, _ or -, "
            "at most 64>.txt)"
        )
    try:
        with path.open("rb") as handle:
            content = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise VerificationError(f"{str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise VerificationError(f"{str(path)!r} is a directory, not a file") from None
    except OSError as exc:
        raise VerificationError(f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if len(content) > MAX_BYTES:
        raise VerificationError(f"{str(path)!r} is larger than {MAX_BYTES} bytes: not a verification file")
    return name, content


def store(conn: redis.Redis, name: str, content: bytes) -> None:
    """Keep `content` under `name` (replacing what was there); every receiver serves it at once."""
    if not valid_name(name):
        raise VerificationError(f"{name!r} is not a verification file name")
    if len(content) > MAX_BYTES:
        raise VerificationError(f"{name!r} is larger than {MAX_BYTES} bytes")
    conn.hset(REDIS_KEY, name, content)
    log.info("stored verification file %s (%d bytes)", name, len(content))


def stored_names(conn: redis.Redis) -> list[str]:
    return sorted(raw.decode() if isinstance(raw, bytes) else raw for raw in conn.hkeys(REDIS_KEY))


def remove(conn: redis.Redis, name: str) -> bool:
    """Drop one file; False when it was not stored."""
    removed = bool(conn.hdel(REDIS_KEY, name))
    if removed:
        log.info("removed verification file %s", name)
    return removed


async def lookup(conn: aredis.Redis, name: str) -> bytes | None:
    """The stored bytes of `name`, or None. Redis errors are the caller's to answer."""
    content = await conn.hget(REDIS_KEY, name)
    if content is None or isinstance(content, bytes):
        return content
    return str(content).encode()  # a client that decodes replies
