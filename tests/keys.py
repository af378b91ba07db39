"""Event keys for tests: readable names as valid keys, and stored keys read back as those names.

`events.event_key` is a uuid holding a key's first 32 hex digits (`workers.storage.keys`), so a
test's key must be hex: `name_key("a")` is the name's bytes in hex, padded with zeros to the
64 digits of a real key; `key_name` reads a stored key (a `uuid.UUID`) back as the name. Names
of up to 16 bytes survive the trip."""

from __future__ import annotations

import uuid

from workers.storage.keys import STORED_HEX, key_text


def name_key(name: str) -> str:
    """A 64-digit key whose stored part reads back as `name`."""
    digits = name.encode().hex()
    if len(digits) > STORED_HEX:
        raise ValueError(f"{name!r}: a test key name has at most {STORED_HEX // 2} bytes")
    return digits.ljust(64, "0")


def stored(name: str) -> str:
    """The stored form (32 hex digits) of `name_key(name)`, for SQL parameters."""
    return name_key(name)[:STORED_HEX]


def key_name(value: uuid.UUID | str) -> str:
    """A stored key made by `name_key`, as its name."""
    return bytes.fromhex(key_text(value)).rstrip(b"\0").decode()
