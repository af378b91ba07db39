"""Copernica logfile records: CSV (with or without a header row), JSON and XML, streamed.

`read_records` yields one `Record` per record and never holds more than one record (plus a
read buffer) in memory, whatever the file size: CSV is read line by line, JSON with `ijson`
(an incremental parser), XML with `iterparse`, clearing each element once read. A record that
cannot be read is yielded with `fields=None` and the reason in `error`, never raised; a file
that ends in the middle of a record yields an error record last. Gzip input is recognised by
its magic bytes and decompressed on the fly.

Turning a record into an event is `workers.events.model.from_logfile`; this module only reads.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, BinaryIO
from xml.sax.saxutils import escape as xml_escape

import ijson
import orjson

log = logging.getLogger("workers.events.logfiles")

_CDM_TAIL = ("email", "tags", "senderdomain", "profile", "subprofile", "template")
_POM_TAIL = ("email", "tags", "senderdomain", "groupid", "profile", "subprofile", "template", "document")
_GEO = ("countrycode", "countryname", "regioncode", "city")

# The documented columns of every logfile, in file order (copernica.md, section 3).
LOG_COLUMNS: dict[str, tuple[str, ...]] = {
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
        *_GEO,
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
        *_GEO,
        "profile",
        "subprofile",
        "template",
    ),
    "cdm-error": ("id", "time", "type", "status", "description", "code", *_CDM_TAIL),
    "cdm-retry": ("id", "time", "attempt", *_CDM_TAIL),
    "cdm-unsubscribe": ("id", "time", *_CDM_TAIL),
    "cdm-abuse": ("id", "time", "mail", *_CDM_TAIL),
    "pom-attempts": (
        "id",
        "time",
        "groupid",
        "mailingid",
        "profileid",
        "subprofileid",
        "databaseid",
        "collectionid",
        "senderdomain",
        "templateid",
        "documentid",
        "tags",
        "email",
    ),
    "pom-deliveries": ("id", "time", "attempts", *_POM_TAIL),
    "pom-delivery": ("id", "time", "attempts", *_POM_TAIL),  # the name some of Copernica's pages give it
    "pom-impressions": ("id", "time", "ip", "header", "email", "tags", *_GEO, *_POM_TAIL[2:]),
    "pom-clicks": ("id", "time", "ip", "header", "email", "tags", *_GEO, "linkinfo", *_POM_TAIL[2:]),
    "pom-clicks-old": ("id", "time", "ip", "header", "email", "tags", *_GEO, *_POM_TAIL[2:]),
    "pom-errors": ("id", "time", "type", "status", "description", "code", "content", *_POM_TAIL),
    "pom-retries": ("id", "time", "attempts", *_POM_TAIL),
    "pom-unsubscribes": ("id", "time", *_POM_TAIL),
    "pom-abuses": ("id", "time", "mail", *_POM_TAIL),
    "feedback-loop-errors": ("time", "response", "recipient", "header"),
}
FORMATS: frozenset[str] = frozenset({"csv", "json", "xml"})

MAX_RECORD_BYTES = 64 * 1024 * 1024  # one CSV record (a quoted `mail` column can be large)
MAX_DEPTH = 32  # nesting of one JSON record (records are flat; as for webhook bodies)
_READ_SIZE = 64 * 1024
# A damaged compressed stream fails while reading: an error record, not an exception.
_STREAM_ERRORS = (OSError, EOFError, zlib.error)

# The csv module's field limit is process-wide (128 kB by default); an abuse report's `mail`
# column can be larger. Raised once here, never lowered.
if csv.field_size_limit() < MAX_RECORD_BYTES:
    csv.field_size_limit(MAX_RECORD_BYTES)


@dataclass(frozen=True, slots=True)
class Record:
    """One logfile record. `line`: CSV line the record starts on (1-based; a header row is line
    1), for JSON and XML the record's 1-based position. `fields` is None when `error` says why
    the record could not be read; `raw` holds its bytes as far as they could be read."""

    line: int
    fields: dict[str, Any] | None
    raw: bytes
    error: str | None = None


_NAME = re.compile(r"^([a-z][a-z0-9-]*?)(?:\.\d{4}-\d{2}-\d{2})?(?:\.[a-z0-9]+)*$")


def log_type_from_name(name: str) -> str | None:
    """`cdm-click.2026-11-25.log` (also `.csv`, `.json`, `.xml`, `.gz`, or a path) -> 'cdm-click';
    None for a name that is not one of the documented logfiles (`LOG_COLUMNS`)."""
    base = os.path.basename(name.strip()).lower()
    match = _NAME.match(base)
    if match is None:
        return None
    prefix = match[1]
    return prefix if prefix in LOG_COLUMNS else None


def read_records(stream: BinaryIO, log_type: str, fmt: str) -> Iterator[Record]:
    """Yield the records of one logfile. `fmt` is 'csv', 'json' or 'xml'.

    CSV: the first row is a header when it names the columns (the documented ones, in any
    order, or a header that names at least `id`/`time` for layouts this code does not know);
    otherwise every row is data in the documented column order. Raises ValueError only for
    an unknown `fmt`.
    """
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown logfile format {fmt!r} (csv, json or xml)")
    stream = _maybe_gunzip(stream)
    columns = LOG_COLUMNS.get(log_type.strip().lower())
    if fmt == "csv":
        return _read_csv(stream, columns)
    if fmt == "json":
        return _read_json(stream)
    return _read_xml(stream)


class _Prefixed(io.RawIOBase):
    """A stream with bytes already read put back in front (to peek without seeking)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        chunk = self._rest.read(len(buffer))
        if not chunk:
            return 0
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _maybe_gunzip(stream: BinaryIO) -> BinaryIO:
    head = stream.read(2)
    while len(head) < 2:
        more = stream.read(2 - len(head))
        if not more:
            break
        head += more
    buffered = io.BufferedReader(_Prefixed(head, stream), _READ_SIZE)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return buffered


# --- CSV ------------------------------------------------------------------------------------------


def _lines(stream: BinaryIO, raw: list[bytes], counter: list[int]) -> Iterator[str]:
    """Physical lines as text for the csv module; the bytes of each go to `raw` (cleared by the
    reader per record). Bytes that are not UTF-8 survive as surrogates, caught per record."""
    while True:
        line = stream.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        counter[0] += 1
        raw.append(line)
        yield line.decode("utf-8", "surrogateescape")


def _is_header(row: list[str], columns: tuple[str, ...] | None) -> bool:
    names = [cell.strip().lower() for cell in row]
    if columns is not None and sorted(names) == sorted(columns):
        return True
    return ("id" in names or "time" in names) and all(re.fullmatch(r"[a-z_]+", n) for n in names)


def _read_csv(stream: BinaryIO, columns: tuple[str, ...] | None) -> Iterator[Record]:
    raw: list[bytes] = []
    counter = [0]  # physical lines read so far
    reader = csv.reader(_lines(stream, raw, counter), strict=True)
    names: tuple[str, ...] | None = columns
    first = True
    while True:
        start = counter[0] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except _STREAM_ERRORS as exc:
            yield Record(start, None, b"".join(raw), f"unreadable stream: {exc}")
            return
        except csv.Error as exc:
            data = b"".join(raw)
            raw.clear()
            reason = "file ends inside a quoted field (truncated?)" if "end of data" in str(exc) else str(exc)
            yield Record(start, None, data, f"unreadable CSV: {reason}")
            if "end of data" in str(exc):
                return
            continue
        data = b"".join(raw)
        raw.clear()
        if not row or row == [""]:
            continue  # a blank line
        if first and _is_header(row, columns):
            names = tuple(cell.strip().lower() for cell in row)
            first = False
            continue
        first = False
        if names is None:
            yield Record(start, None, data, "no header row and no documented columns for this log type")
            continue
        yield _bad_row(start, row, names, data) or Record(start, dict(zip(names, row, strict=True)), data)


def _bad_row(start: int, row: list[str], names: tuple[str, ...], data: bytes) -> Record | None:
    """The Record of a row that cannot be read as `names` (too large, columns missing or too
    many, not UTF-8); None for a good one."""
    if len(data) > MAX_RECORD_BYTES:
        return Record(start, None, data[:1024], f"record larger than {MAX_RECORD_BYTES} bytes")
    if len(row) != len(names):
        ending = "" if data.endswith(b"\n") else " (truncated?)"
        return Record(start, None, data, f"expected {len(names)} columns, found {len(row)}{ending}")
    if any(_has_surrogate(cell) for cell in row):
        return Record(start, None, data, "record is not valid UTF-8")
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- JSON -----------------------------------------------------------------------------------------


def _read_json(stream: BinaryIO) -> Iterator[Record]:
    """An array of objects (`[{...}, ...]`); also tolerated: objects one after another (NDJSON)."""
    try:
        head = _first_byte(stream)
    except _STREAM_ERRORS as exc:
        yield Record(1, None, b"", f"unreadable stream: {exc}")
        return
    if not head:
        return
    full = io.BufferedReader(_Prefixed(head, stream), _READ_SIZE)
    prefix, multiple = ("item", False) if head == b"[" else ("", True)
    number = 0
    try:
        # Not use_float: the C backend then refuses integers past 64 bits ("integer overflow")
        # and the rest of the file with them. Decimals are made floats below instead.
        for item in ijson.items(full, prefix, multiple_values=multiple):
            number += 1
            if isinstance(item, dict | list):
                problem = _prepare(item)
                if problem is not None:
                    yield Record(number, None, b"", problem)
                    continue
            elif isinstance(item, Decimal):
                item = float(item)
            try:
                data = orjson.dumps(item)
            except (TypeError, orjson.JSONEncodeError):  # integers past 64 bits
                data = json.dumps(item).encode()
            if not isinstance(item, dict):
                yield Record(number, None, data, f"record is {type(item).__name__}, not an object")
                continue
            yield Record(number, item, data)
    except (ijson.JSONError, ijson.IncompleteJSONError, ValueError, *_STREAM_ERRORS) as exc:
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        yield Record(number + 1, None, b"", f"unreadable JSON after record {number}: {reason}")


def _first_byte(stream: BinaryIO) -> bytes:
    """The first byte that is not white space (b"" for none)."""
    head = stream.read(1)
    while head and head.isspace():
        head = stream.read(1)
    return head


def _prepare(item: Any) -> str | None:
    """Make ijson's Decimals floats (what any other JSON reader gives), in place, without
    recursion; the reason when the record is nested deeper than MAX_DEPTH (no Copernica record
    is: its payload could not be stored)."""
    stack: list[tuple[Any, int]] = [(item, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"record nested deeper than {MAX_DEPTH} levels"
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(pairs):
            if isinstance(value, Decimal):
                node[key] = float(value)
            elif isinstance(value, dict | list):
                stack.append((value, depth + 1))
    return None


# --- XML ------------------------------------------------------------------------------------------


def _xml_record(fields: dict[str, Any]) -> bytes:
    """The record as XML again, from its fields: what replay needs, at a seventh of the cost of
    serialising the parsed element (which dominated reading an XML logfile)."""
    inner = "".join(f"<{name}>{xml_escape(value)}</{name}>" for name, value in fields.items())
    return f"<record>{inner}</record>".encode()


def _read_xml(stream: BinaryIO) -> Iterator[Record]:
    """`<records><record><id>..</id>..</record>...</records>`: each `record` element's children
    are its fields (text; nested markup joined as text)."""
    number = 0
    root: ET.Element | None = None
    depth = 0
    try:
        for event, elem in ET.iterparse(stream, events=("start", "end")):
            if event == "start":
                depth += 1
                if root is None:
                    root = elem
                continue
            depth -= 1
            if depth != 1 or elem.tag != "record":
                if depth == 1 and root is not None:  # something else at record level: drop it
                    root.clear()
                continue
            number += 1
            fields: dict[str, Any] = {}
            for child in elem:
                fields[child.tag] = "".join(child.itertext())
            if root is not None:
                root.clear()  # the parsed tree never grows past one record
            yield Record(number, fields, _xml_record(fields))
    except (ET.ParseError, *_STREAM_ERRORS) as exc:
        yield Record(number + 1, None, b"", f"unreadable XML after record {number}: {exc}")
