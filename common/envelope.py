"""The raw webhook call as the receiver queues it, and as workers and `rejected_events` read it.

The receiver does not parse events: it wraps what Copernica sent, byte for byte, with the few
facts only the receiver knows (when, from where, which request line), so that a worker can
parse, verify and re-parse it later. This module is the wire format shared by both sides; it
imports nothing but the standard library and zstandard, so the edge stays light.

A batch of calls travels as the single argument of its RQ job: one zstd frame holding the
pickled list of wire dicts (`pack_calls`). RQ would otherwise zlib-compress the job's data:
zstd at level -1 takes a fifth of zlib's CPU at level 1 and makes a smaller job, and the
receiver compresses on the event loop that answers the calls.
"""

from __future__ import annotations

import operator
import pickle
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import zstandard

# The request headers kept with every call (lower-case names). Signature verification needs
# all of them; anything else Copernica sends carries no event data.
KEPT_HEADERS: tuple[str, ...] = (
    "host",
    "date",
    "content-type",
    "content-length",
    "x-copernica-id",
    "digest",
    "x-nonce",
    "signature",
)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~3x to build, and workers build millions
class Envelope:
    body: bytes
    content_type: str
    received_at: float  # unix seconds, as the receiver saw the call
    remote: str = ""
    method: str = "POST"
    target: str = "/copernica"  # path and query, as in the request line
    headers: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return wire(self.body, self.content_type, self.received_at, self.remote, self.method, self.target, self.headers)

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Envelope:
        try:  # as `wire` makes it: taken as it is
            body, content_type, received_at, remote, method, target, headers = _WIRE_FIELDS(wire)
            if (
                type(body) is bytes
                and type(content_type) is str
                and type(received_at) is float
                and type(remote) is str
                and type(method) is str
                and type(target) is str
                and type(headers) is dict
            ):
                return cls(body, content_type, received_at, remote, method or "POST", target, headers)
        except KeyError:
            pass
        body = wire.get("body", b"")
        headers = wire.get("headers") or {}
        if type(headers) is not dict:
            headers = dict(headers)
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        return cls(
            body=body if type(body) is bytes else bytes(body),
            content_type=str(wire.get("content_type") or ""),
            received_at=float(wire.get("received_at") or 0.0),
            remote=str(wire.get("remote") or ""),
            method=str(wire.get("method") or "POST"),
            target=str(wire.get("target") or ""),
            headers=headers,
        )


@lru_cache(maxsize=64)  # a sender uses one or two content types
def media_type(content_type: str) -> str:
    """A call's media type (`application/json`), lower case, without its parameters: what the
    receiver accepts by and the parser reads by."""
    return content_type.split(";", 1)[0].strip().lower()


_WIRE_FIELDS = operator.itemgetter("body", "content_type", "received_at", "remote", "method", "target", "headers")


def wire(
    body: bytes, content_type: str, received_at: float, remote: str, method: str, target: str, headers: dict[str, str]
) -> dict[str, Any]:
    """The queued form of a call (a plain dict: cheap to build on the receiver's hot path)."""
    return {
        "v": 1,
        "body": body,
        "content_type": content_type,
        "received_at": received_at,
        "remote": remote,
        "method": method,
        "target": target,
        "headers": headers,
    }


BATCH_LEVEL = -1  # zstd's first fast level: ~0.2 µs per call, ~10 % smaller than zlib at level 1
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # how every zstd frame begins: a job's argument in this format
_codecs = threading.local()  # zstd contexts are reused (cheaper) but not shared between threads


def pack_calls(calls: list[dict[str, Any]]) -> bytes:
    """A batch of wire dicts as one job argument."""
    try:
        compress = _codecs.compress
    except AttributeError:
        compress = _codecs.compress = zstandard.ZstdCompressor(level=BATCH_LEVEL).compress
    return compress(pickle.dumps(calls, protocol=5))


def unpack_calls(argument: bytes | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls a store job carries: a packed batch, or a plain list (jobs queued by earlier
    versions, and by `rejected replay`). Raises ValueError for anything else."""
    if isinstance(argument, list):
        return argument
    if not isinstance(argument, bytes) or not argument.startswith(_ZSTD_MAGIC):
        raise ValueError(f"not a batch of calls: {type(argument).__name__}")
    try:
        decompress = _codecs.decompress
    except AttributeError:
        decompress = _codecs.decompress = zstandard.ZstdDecompressor().decompress
    try:
        calls = pickle.loads(decompress(argument))
    except Exception as exc:  # a damaged frame, or bytes that are not a pickle (it raises many kinds)
        raise ValueError(f"not a batch of calls: {exc}") from exc
    if not isinstance(calls, list):
        raise ValueError(f"not a batch of calls: {type(calls).__name__}")
    return calls
