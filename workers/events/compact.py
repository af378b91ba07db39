"""The payload as stored: every field Copernica sent, less those a normalised column holds
exactly, so that an event's bytes are not paid twice.

A field is left out only when it can be rebuilt exactly from its column: the same text (or the
same number, for a JSON number), and it is named in the payload's `~` key: `.`, then each
field's code (`FIELDS`), after `#` when it was a number (a string otherwise). Payloads stored
before migration 0013 name them two characters a field, the code and its form (`s` a string,
`n` a number); both are read. Anything else (a value the column normalised: trimmed, canonical
address, a tag list sent as an array) stays as sent. A payload that already has a `~` key is
stored whole. `event_fields(events)` (SQL, migration 0013) and `expand` (Python) give the
fields back exactly as sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

MARK: Final = "~"
SHORT: Final = "."  # the `~` value's first character in the form of migration 0013
NUMBER: Final = "#"  # before a code: the field was a JSON number

# code -> (field, column, how the column renders): `text` as it is, `int` its digits, `epoch`
# occurred_at's unix second, `tags` the list joined with `;`, `ipv4` an IPv4 address (IPv6 text
# may differ between Python and PostgreSQL: such an address stays in the payload).
FIELDS: Final[dict[str, tuple[str, str, str]]] = {
    "i": ("id", "message_id", "text"),
    "y": ("type", "copernica_type", "text"),
    "T": ("time", "occurred_at", "epoch"),
    "r": ("recipient", "recipient", "text"),
    "e": ("email", "recipient", "text"),
    "p": ("ip", "ip", "ipv4"),
    "u": ("useragent", "user_agent", "text"),
    "h": ("header", "user_agent", "text"),
    "o": ("original", "url", "text"),
    "l": ("linkinfo", "link_id", "text"),
    "g": ("tags", "tags", "tags"),
    "M": ("mailing", "mailing_id", "int"),
    "m": ("mailingid", "mailing_id", "int"),
    "P": ("profile", "profile_id", "int"),
    "q": ("profileid", "profile_id", "int"),
    "S": ("subprofile", "subprofile_id", "int"),
    "s": ("subprofileid", "subprofile_id", "int"),
    "D": ("database", "database_id", "int"),
    "d": ("databaseid", "database_id", "int"),
    "C": ("collection", "collection_id", "int"),
    "c": ("collectionid", "collection_id", "int"),
    "E": ("template", "template_id", "int"),
    "t": ("templateid", "template_id", "int"),
    "x": ("description", "description", "text"),
}
_BY_FIELD = [(field, code, column, how) for code, (field, column, how) in FIELDS.items()]


def _render(how: str, value: Any) -> str | None:
    if value is None:
        return None
    if how == "text":
        return value if type(value) is str else None
    if how == "ipv4":
        return value if type(value) is str and ":" not in value else None
    if how == "int":
        return str(value)
    if how == "epoch":
        moment: datetime = value
        return str(int(moment.timestamp())) if moment.microsecond == 0 else None
    return ";".join(value) if type(value) is list else None  # tags


def compact(payload: dict[str, Any], event: Any) -> dict[str, Any]:
    """`payload` less the fields `event`'s columns hold exactly, with the `~` key naming them."""
    if MARK in payload:
        return payload
    codes = []
    dropped = set()
    for field, code, column, how in _BY_FIELD:
        value = payload.get(field)
        if value is None:
            continue
        kind = type(value)
        if kind is str:
            form = "s"
        elif kind is int and how in ("int", "epoch"):
            form = "n"
            value = str(value)
        else:
            continue
        if value == _render(how, getattr(event, column)):
            codes.append(NUMBER + code if form == "n" else code)
            dropped.add(field)
    if not codes:
        return payload
    kept = {key: value for key, value in payload.items() if key not in dropped}
    kept[MARK] = SHORT + "".join(codes)
    return kept


def _codes(spec: str) -> list[tuple[str, str]]:
    """(code, form) of each field a `~` value names, in either form."""
    if not spec.startswith(SHORT):
        return [(spec[i], spec[i + 1]) for i in range(0, len(spec), 2)]
    found, number = [], False
    for char in spec[1:]:
        if char == NUMBER:
            number = True
            continue
        found.append((char, "n" if number else "s"))
        number = False
    return found


def expand(stored: dict[str, Any], event: Any) -> dict[str, Any]:
    """The fields as sent, from a stored payload and its event's columns (Python's
    `event_fields`)."""
    codes = stored.get(MARK)
    if not isinstance(codes, str):
        return stored
    fields = {key: value for key, value in stored.items() if key != MARK}
    for code, form in _codes(codes):
        field, column, how = FIELDS[code]
        text = _render(how, getattr(event, column))
        fields[field] = int(text) if form == "n" and text is not None else text
    return fields


def sql_cases() -> tuple[str, str]:
    """The two CASE expressions of `event_fields(events)` (SQL, migrations 0006 and 0013) on a
    code `c`: the field's name and its text (a test checks the migration holds them)."""
    names, values = [], []
    for code, (field, column, how) in FIELDS.items():
        value = {
            "text": f"e.{column}",
            "int": f"e.{column}::text",
            "ipv4": f"host(e.{column})",
            "epoch": "floor(extract(epoch FROM e.occurred_at))::bigint::text",
            "tags": "array_to_string(e.tags, ';')",
        }[how]
        names.append(f"WHEN '{code}' THEN '{field}'")
        values.append(f"WHEN '{code}' THEN {value}")
    return "CASE c " + " ".join(names) + " END", "CASE c " + " ".join(values) + " END"
