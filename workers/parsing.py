"""Webhook bodies into field dictionaries: form-urlencoded and JSON.

Parsing is tolerant of what Copernica may send and strict about what it cannot read: a body
that yields no fields raises `Unparseable` with a short reason, and the caller keeps the raw
call in `rejected_events`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson


class Unparseable(ValueError):
    """The body cannot be read as a Copernica event; the message is the reason kept with it."""


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """Return the fields of one webhook call."""
    kind = media_type(content_type)
    if not body.strip():
        raise Unparseable("empty body")
    if kind == "application/json" or kind.endswith("+json"):
        return _parse_json(body)
    if kind in ("application/x-www-form-urlencoded", ""):
        return _parse_form(body)
    raise Unparseable(f"unsupported content type {kind!r}")


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unparseable(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Unparseable(f"JSON body is a {type(value).__name__}, not an object")
    if not value:
        raise Unparseable("JSON object has no fields")
    return value


def _parse_form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unparseable("form body is not valid UTF-8") from None
    pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=10_000)
    if not pairs:
        raise Unparseable("form body has no fields")
    fields: dict[str, Any] = {}
    for key, value in pairs:
        fields[key] = value
    return fields
