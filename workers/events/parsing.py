"""Webhook bodies into field dictionaries: form-urlencoded (PHP-style nesting) and JSON.

Parsing is tolerant of what Copernica may send and strict about what it cannot read: a body
that yields no fields raises `Unparseable` with a short reason, and the caller keeps the raw
call in `rejected_events`. `Unparseable` is the only exception `parse_body` raises.

Hostile input is contained, never followed:
- at most `MAX_FIELDS` form pairs / JSON values, else `Unparseable` (the call is kept raw);
- form keys nest at most `MAX_DEPTH` levels: deeper brackets stay part of the last key, as
  text (nothing is dropped, nothing recurses without bound);
- a JSON body nested deeper than `MAX_DEPTH` is `Unparseable` (the payload must stay
  serialisable: orjson writes at most 254 levels).
"""

from __future__ import annotations

import logging
import re
from codecs import escape_decode
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from common.envelope import media_type

log = logging.getLogger("workers.events.parsing")

MAX_FIELDS = 10_000
MAX_DEPTH = 32


class Unparseable(ValueError):
    """The body cannot be read as a Copernica event; the message is the reason kept with it."""


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """Return the fields of one webhook call (nested dicts/lists for nested values)."""
    kind = media_type(content_type)
    if not body or body.isspace():
        raise Unparseable("empty body")
    if kind == "application/json" or kind.endswith("+json"):
        return _parse_json(body)
    if kind in ("application/x-www-form-urlencoded", ""):
        if kind == "" and body.lstrip()[:1] == b"{":
            return _parse_json(body)  # no content type and a JSON object: read it as JSON
        return parse_form(body, _charset(content_type))
    raise Unparseable(f"unsupported content type {kind!r}")


@lru_cache(maxsize=64)
def _charset(content_type: str) -> str:
    """The `charset` parameter when it names a codec Python knows; UTF-8 otherwise."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            try:
                b"a".decode(charset)  # also refuses codecs that are not text encodings (rot13, zlib)
            except (LookupError, ValueError):
                return "utf-8"
            return charset
    return "utf-8"


# --- JSON -----------------------------------------------------------------------------------------


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unparseable(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Unparseable(f"JSON body is a {type(value).__name__}, not an object")
    if not value:
        raise Unparseable("JSON object has no fields")
    _check_bounds(value)
    return value


def _check_bounds(value: Any) -> None:
    """Walk iteratively (no recursion) counting values and depth."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_FIELDS * 4:
            raise Unparseable(f"more than {MAX_FIELDS * 4} values")
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise Unparseable(f"nested deeper than {MAX_DEPTH} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


# --- form-urlencoded --------------------------------------------------------------------------------

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def split_key(key: str) -> list[str]:
    """`fields[name][0]` -> ['fields', 'name', '0']; `interests[]` -> ['interests', ''].

    Like PHP: the part before the first `[` is the name; then each `[...]` is one level. A
    key that is not well-formed (`a[b`, `[x]`, `a[b]c`) stays one literal name. Levels past
    `MAX_DEPTH` are kept as text in the last part.
    """
    start = key.find("[")
    if start <= 0 or not key.endswith("]"):
        return [key]
    parts = [key[:start]]
    pos = start
    while pos < len(key):
        match = _BRACKETS.match(key, pos)
        if match is None:
            return [key]
        if len(parts) >= MAX_DEPTH:
            parts[-1] = parts[-1] + key[match.start() :] if parts[-1] else key[match.start() :]
            return parts
        parts.append(match[1])
        pos = match.end()
    return parts


def _unquote(raw: bytes, charset: str) -> str:
    """`unquote_plus` on bytes: percent-decoding before the one decode, so a body is decoded
    once per value (the worker's hottest loop), not twice."""
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    return raw.decode(charset)


def parse_form(body: bytes, charset: str = "utf-8") -> dict[str, Any]:
    """Form body into nested values, PHP style, without losing a pair.

    Where PHP would overwrite, nothing is lost here: a plain key sent twice becomes a list of
    its values; a pair that clashes with the shape built so far (`a=1&a[b]=2`) is kept under
    its literal key (`"a[b]"`, then `"a[b]#2"`, ...).
    """
    if body.count(b"&") >= MAX_FIELDS:
        raise Unparseable(f"more than {MAX_FIELDS} form fields")
    if charset in ("utf-8", "utf8"):
        flat = _flat_utf8(body)
        if flat is not None:
            return flat
    return _build_form(body, charset)


def _build_form(body: bytes, charset: str) -> dict[str, Any]:
    """The general path of `parse_form`: pair by pair, any charset, any key shape."""
    builder = _FormBuilder()
    pairs = body.split(b"&")
    place = builder.place
    try:
        for raw in pairs:
            if not raw:
                continue
            name, _, value = raw.partition(b"=")
            # Most names and many values need no unquoting: decode them directly.
            key = _unquote(name, charset) if b"%" in name or b"+" in name else name.decode(charset)
            text = _unquote(value, charset) if b"%" in value or b"+" in value else value.decode(charset)
            if key:
                place(key, text)
    except UnicodeError:
        label = "UTF-8" if charset in ("utf-8", "utf8") else charset
        raise Unparseable(f"form body is not valid {label}") from None
    if not builder.result:
        raise Unparseable("form body has no fields")
    return builder.result


# The one-pass decoder reads bodies whose every pair is `name=value`: it turns both separators
# into one control character, `+` into a space and every `%XX` into `\xXX`, so that one C call
# (`escape_decode`) decodes the whole body, and an escaped `&` or `=` is plain text in what it
# yields. A body in which that control character also comes from elsewhere (sent raw, or as
# `%1F`) takes the general path.
_SEPARATOR = "\x1f"
_SEPARATE = bytes.maketrans(b"&=+", b"\x1f\x1f ")
_NOT_SEPARATORS = bytes(byte for byte in range(256) if byte not in b"&=")


def _flat_utf8(body: bytes) -> dict[str, str] | None:
    """The common body (UTF-8, `name=value` pairs, plain names each sent once) decoded in one
    pass: the same fields as the general path, or None when the body needs that path (a nested
    or repeated name, a pair without `=` or with two, a backslash, an invalid escape, invalid
    UTF-8 (the general path words the error))."""
    if b"\\" in body:
        return None
    separators = body.translate(None, _NOT_SEPARATORS)
    pairs = len(separators) // 2 + 1
    if separators != b"=&" * (pairs - 1) + b"=":
        return None
    body = body.translate(_SEPARATE)
    if b"%" in body:
        try:
            body = escape_decode(body.replace(b"%", b"\\x"))[0]
        except ValueError:  # a `%` not followed by two hex digits: kept as text by the general path
            return None
    try:
        parts = body.decode("utf-8").split(_SEPARATOR)
    except UnicodeDecodeError:
        return None
    if len(parts) != 2 * pairs:  # a separator that is none
        return None
    names_and_values = iter(parts)
    result = dict(zip(names_and_values, names_and_values, strict=False))  # (an even count)
    if len(result) != pairs or "" in result or "[" in "".join(result):  # a repeated, empty or nested name
        return None
    return result


class _FormBuilder:
    """Places pairs into nested dicts/lists in O(depth) each (no rescans: hostile input stays linear)."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}
        self._next: dict[int, int] = {}  # id(dict made from `[]` keys) -> next free index
        self._clashes: dict[str, int] = {}

    def place(self, key: str, value: str) -> None:  # noqa: C901 - hot path (every form pair): one frame per call
        parts = split_key(key) if "[" in key else (key,)
        if len(parts) == 1:
            existing = self.result.get(key)
            if existing is None:
                self.result[key] = value
            elif isinstance(existing, str):
                self.result[key] = [existing, value]
            elif isinstance(existing, list):
                existing.append(value)
            else:
                self._keep_literal(key, value)
            return
        node: dict[str, Any] | list[Any] = self.result
        for depth, part in enumerate(parts[:-1]):
            child = self._child(node, part, want_list=parts[depth + 1] == "")
            if child is None:  # a scalar holds the spot: keep the pair under its literal key
                self._keep_literal(key, value)
                return
            node = child
        last = parts[-1]
        if isinstance(node, list):
            if last == "":
                node.append(value)
            else:
                self._keep_literal(key, value)
            return
        if last == "":
            last = self._index(node)
        if isinstance(node.get(last), dict | list):
            self._keep_literal(key, value)
            return
        node[last] = value

    def _child(self, node: dict[str, Any] | list[Any], part: str, *, want_list: bool) -> dict | list | None:
        """The container at `node[part]`, created when missing; None when a scalar holds the spot."""
        if isinstance(node, list):
            if part != "":
                return None
            new: dict | list = [] if want_list else {}
            node.append(new)
            return new
        if part == "":
            part = self._index(node)
        existing = node.get(part)
        if existing is None:
            new = [] if want_list else {}
            node[part] = new
            return new
        if isinstance(existing, list) and not want_list:
            # `a[]=x&a[k]=y`: PHP makes one array with keys 0 and k; so does this, as a dict.
            as_dict = {str(i): v for i, v in enumerate(existing)}
            self._next[id(as_dict)] = len(existing)
            node[part] = as_dict
            return as_dict
        if isinstance(existing, dict | list):
            return existing
        return None

    def _index(self, node: dict[str, Any]) -> str:
        index = self._next.get(id(node), 0)
        while str(index) in node:
            index += 1
        self._next[id(node)] = index + 1
        return str(index)

    def _keep_literal(self, key: str, value: str) -> None:
        literal = key
        while literal in self.result:
            count = self._clashes.get(key, 1) + 1
            self._clashes[key] = count
            literal = f"{key}#{count}"
        self.result[literal] = value
