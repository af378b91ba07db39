"""Value coercion fast paths read exactly what the general rules read."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.events import fields as fv
from workers.events.model import _first


def _reference_ip(value: Any) -> str | None:
    raw = fv.text(value, 100)
    if raw is None:
        return None
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    return None if getattr(address, "scope_id", None) else str(address)


_IP_CASES = [
    "0.0.0.0",
    "255.255.255.255",
    "256.1.1.1",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3",
    "1.2.3.4.5",
    " 10.0.0.1 ",
    "\u0661.2.3.4",
    "1.2.3.4x",
    "::1",
    "::ffff:1.2.3.4",
    "fe80::1%eth0",
    "",
    7,
    None,
]


@pytest.mark.parametrize("value", _IP_CASES)
def test_ip_reads_like_ipaddress(value: Any) -> None:
    assert fv.ip(value) == _reference_ip(value)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["0", "00", "1", "9", "25", "255", "256", "199", "249", "300", "010", ".", ":", "a"]),
        max_size=9,
    ).map("".join)
)
def test_dotted_quads_read_like_ipaddress(raw: str) -> None:
    assert fv.ip(raw) == _reference_ip(raw)


_DIGITS = re.compile(r"\s*(\d{1,19})\s*")


def _reference_bigint(value: str) -> int | None:
    match = _DIGITS.fullmatch(value)
    number = int(match[1]) if match else None
    return number if number is not None and number <= fv.BIGINT_MAX else None


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "007",
        "1" * 19,
        "9" * 19,
        "9" * 20,
        "9223372036854775807",
        "9223372036854775808",
        " 12 ",
        "\u0661\u0662",
        "\u00b2",
        "1_000",
        "-1",
        "+1",
        "",
    ],
)
def test_bigint_text_reads_like_the_digit_rule(value: str) -> None:
    assert fv.bigint(value) == _reference_bigint(value)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"a": "", "b": [], "c": {}, "d": "x"}, "x"),
        ({"a": None, "b": 0}, 0),
        ({"a": False}, False),
        ({"b": 0.0}, 0.0),
        ({"a": " "}, " "),
        ({"a": "", "b": None, "c": []}, None),
        ({"c": [0]}, [0]),
    ],
)
def test_first_skips_only_absent_and_empty_values(fields: dict[str, Any], expected: Any) -> None:
    found = _first(fields, "a", "b", "c", "d")
    assert found == expected and type(found) is type(expected)


def test_recurring_tags_are_a_new_list_each_time() -> None:
    first = fv.tags("news;weekly")
    assert first == ["news", "weekly"]
    first.append("changed")
    assert fv.tags("news;weekly") == ["news", "weekly"]
    assert fv.tags(" ; ") is None and fv.tags(" ; ") is None


def test_recent_values_are_bounded() -> None:
    recent = fv.Recent(str.upper, size=3)
    assert [recent[v] for v in ("a", "b", "c", "a", "d")] == ["A", "B", "C", "A", "D"]
    assert len(recent) <= 3
    assert fv.ip("192.0.2.1") == fv.ip("192.0.2.1") == "192.0.2.1" and fv.ip("nope") is None


def test_long_texts_are_not_kept_by_the_caches() -> None:
    """A hostile payload's huge field values are coerced, not cached (the caches stay small)."""
    huge = "2001:db8::1" + " " * 100_000  # surrounding blanks are dropped
    assert fv.ip(huge) == "2001:db8::1" and huge not in fv._ips
    many = ";".join(["tag"] * 50_000)
    assert fv.tags(many) == ["tag"] * 50_000 and many not in fv._tag_lists
