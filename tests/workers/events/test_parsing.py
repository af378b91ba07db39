"""Webhook bodies into fields: PHP-style form nesting, JSON, and hostile input contained."""

from __future__ import annotations

import time
import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures_copernica import WEBHOOK_CASES, encode_form
from workers.events.parsing import (
    MAX_DEPTH,
    MAX_FIELDS,
    Unparseable,
    _build_form,
    _flat_utf8,
    parse_body,
    parse_form,
    split_key,
)

FORM = "application/x-www-form-urlencoded"


def test_documented_example_open() -> None:
    body = (
        b"id=b4icbaqjswyrb7tc&type=open&timestamp=2026-11-26+12%3A00%3A01&time=1795694401"
        b"&recipient=a%40example.com&ip=192.0.2.1&useragent=Mozilla%2F5.0&tags=news%3Bweekly"
    )
    assert parse_body(FORM, body) == {
        "id": "b4icbaqjswyrb7tc",
        "type": "open",
        "timestamp": "2026-11-26 12:00:01",
        "time": "1795694401",
        "recipient": "a@example.com",
        "ip": "192.0.2.1",
        "useragent": "Mozilla/5.0",
        "tags": "news;weekly",
    }


def test_php_nesting() -> None:
    body = (
        b"type=update&fields[name]=Ann&fields[city]=Utrecht&parameters[mail]=y&interests[]=a&interests[]=b"
        b"&deep[a][b][]=1&deep[a][b][]=2&list[][x]=1&list[][x]=2&idx[3]=c&idx[]=d"
    )
    assert parse_form(body) == {
        "type": "update",
        "fields": {"name": "Ann", "city": "Utrecht"},
        "parameters": {"mail": "y"},
        "interests": ["a", "b"],
        "deep": {"a": {"b": ["1", "2"]}},
        "list": [{"x": "1"}, {"x": "2"}],
        "idx": {"3": "c", "0": "d"},
    }


def test_percent_encoded_brackets_nest_too() -> None:
    assert parse_form(b"fields%5Bname%5D=Ann&interests%5B%5D=a") == {"fields": {"name": "Ann"}, "interests": ["a"]}


def test_nothing_is_lost_where_php_would_overwrite() -> None:
    fields = parse_form(b"a=1&a[b]=2&tags=x&tags=y&c[d]=1&c=2&mix[]=0&mix[k]=1")
    assert fields["a"] == "1" and fields["a[b]"] == "2"
    assert fields["tags"] == ["x", "y"]
    assert fields["c"] == {"d": "1"} and fields["c#2"] == "2"
    assert fields["mix"] == {"0": "0", "k": "1"}


@pytest.mark.parametrize("key", ["a[b", "[x]", "a[b]c", "a]"])
def test_malformed_keys_stay_literal(key: str) -> None:
    assert parse_form(f"{key}=v".encode()) == {key: "v"}


def test_split_key() -> None:
    assert split_key("fields[name]") == ["fields", "name"]
    assert split_key("interests[]") == ["interests", ""]
    assert split_key("plain") == ["plain"]


def test_deep_form_nesting_is_truncated_not_followed() -> None:
    key = "a" + "[x]" * 5000
    fields = parse_form(f"{key}=v".encode())
    depth, node = 0, fields
    while isinstance(node, dict):
        ((name, node),) = node.items()
        depth += 1
    assert depth == MAX_DEPTH
    assert node == "v" and name == "x" + "[x]" * (5000 - MAX_DEPTH + 1)  # the rest kept as text


def test_too_many_form_fields_is_unparseable() -> None:
    body = b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS + 1))
    with pytest.raises(Unparseable, match="more than"):
        parse_body(FORM, body)


def test_hostile_form_is_fast_and_bounded() -> None:
    """Ten thousand pairs all fighting for the same spot: linear time, bounded memory."""
    body = b"a[k]=1&" + b"&".join([b"a[]=x", b"a=y", b"a[k][z]=2"] * 3000)
    tracemalloc.start()
    started = time.perf_counter()
    fields = parse_body(FORM, body)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < 20 * 1024 * 1024
    assert len(fields["a"]) == 3001  # k plus 3000 appended values


def test_json_nested_too_deep_is_unparseable() -> None:
    body = b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)
    with pytest.raises(Unparseable, match="nested deeper"):
        parse_body("application/json", body)
    very_deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(Unparseable):
        parse_body("application/json", very_deep)


def test_json_with_huge_value_count_is_unparseable() -> None:
    body = orjson.dumps({"a": list(range(MAX_FIELDS * 5))})
    with pytest.raises(Unparseable, match="more than"):
        parse_body("application/json", body)


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        (FORM, b"", "empty body"),
        (FORM, b"   ", "empty body"),
        (FORM, b"&&&", "no fields"),
        (FORM, b"a=%FF%FE", "not valid UTF-8"),
        (FORM, b"a=\xff", "not valid UTF-8"),
        ("application/json", b"[1,2]", "not an object"),
        ("application/json", b"{}", "no fields"),
        ("application/json", b"{bad", "invalid JSON"),
        ("application/json", b'{"a":"\\ud800"}', "invalid JSON"),
        ("text/xml", b"<a/>", "unsupported content type"),
    ],
)
def test_unparseable_bodies(content_type: str, body: bytes, reason: str) -> None:
    with pytest.raises(Unparseable, match=reason):
        parse_body(content_type, body)


def test_json_without_content_type_is_read_as_json() -> None:
    assert parse_body("", b'{"type": "open"}') == {"type": "open"}


@pytest.mark.parametrize("case", WEBHOOK_CASES, ids=lambda c: c.name)
def test_every_documented_webhook_round_trips(case) -> None:
    assert parse_body(FORM, encode_form(case.form)) == case.form
    assert parse_body("application/json", orjson.dumps(case.json)) == case.json


def test_undocumented_fields_are_kept() -> None:
    fields = parse_body(FORM, b"type=open&id=m&brand_new[x][]=1&other=2")
    assert fields["brand_new"] == {"x": ["1"]} and fields["other"] == "2"


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=2000),
    st.sampled_from(
        [FORM, "application/json", "", "text/plain", "x/y+json", FORM + "; charset=utf-16", FORM + "; charset=latin-1"]
    ),
)
def test_parse_body_raises_only_unparseable(body: bytes, content_type: str) -> None:
    try:
        fields = parse_body(content_type, body)
    except Unparseable:
        return
    assert isinstance(fields, dict) and fields
    orjson.dumps(fields)  # whatever parses can be stored as JSON


_keys = st.text(alphabet="ab[]%=&+ 0", min_size=1, max_size=30)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_keys, st.text(max_size=20)), max_size=40))
def test_form_with_arbitrary_bracket_keys_never_crashes(pairs: list[tuple[str, str]]) -> None:
    body = "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    try:
        fields = parse_form(body)
    except Unparseable:
        return
    orjson.dumps(fields)


def test_form_charset_parameter_is_honoured() -> None:
    body = b"type=open&recipient=ren%E9%40example.com"
    assert parse_body(FORM + "; charset=ISO-8859-1", body)["recipient"] == "ren\u00e9@example.com"
    with pytest.raises(Unparseable, match="UTF-8"):
        parse_body(FORM, body)
    for odd in ("no-such-codec", "rot13", "zlib", '"utf-8"'):
        assert parse_body(f"{FORM}; charset={odd}", b"a=b") == {"a": "b"}


def _outcome(parse, body: bytes) -> object:
    try:
        return parse(body)
    except Unparseable as exc:
        return f"Unparseable: {exc}"


# Bytes that steer the one-pass decoder (escapes, separators, backslash, bracket, UTF-8 and not).
_FORM_BYTES = st.lists(
    st.sampled_from(
        [
            b"a",
            b"b",
            b"0",
            b"2",
            b"5",
            b"6",
            b"D",
            b"d",
            b"f",
            b"x",
            b"%",
            b"%25",
            b"%26",
            b"%3D",
            b"%3d",
            b"%2B",
            b"%41",
            b"%4",
            b"%zz",
            b"%%",
            b"&",
            b"=",
            b"+",
            b"[",
            b"]",
            b"%5B",
            b"\\",
            b"\\x41",
            b"\xc3\xa9",
            b"\xc3",
            b"%C3%A9",
            b"%C3",
            b"%00",
            b"\x00",
            b"%1e",
            b"%1F",
            b"\x1e",
            b"\x1f",
        ]
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(_FORM_BYTES)
def test_one_pass_form_decoding_reads_what_the_pairwise_path_reads(body: bytes) -> None:
    assert _outcome(parse_form, body) == _outcome(lambda b: _build_form(b, "utf-8"), body)


@pytest.mark.parametrize(
    "body",
    [
        b"u=https%3A%2F%2Fx.example%2F%3Fa%3D1%26b%3D2&k%3Dx=%2526&t=50%25+off%2B",  # kept escapes, %25 then 26
        b"id=1&type=open&x=%C3%A9&t=%2B1+%3D+2%261",
    ],
)
def test_one_pass_form_decoding_examples(body: bytes) -> None:
    fields = _flat_utf8(body)
    assert fields is not None and fields == _build_form(body, "utf-8")


@pytest.mark.parametrize(
    "body",
    [
        b"a=1&a=2",
        b"a[b]=1",
        b"a=%4",
        b"a=\\x41",
        b"a=\xc3",
        b"=x&",
        b"a=%C3",
        b"a=%1f&b=2",
        b"a=\x1f",
        b"id=1&type=open&&=lost",
        b"a=b=c",
        b"a&b=1",
        b"a=1&",
    ],
)
def test_one_pass_form_decoding_leaves_odd_bodies_to_the_pairwise_path(body: bytes) -> None:
    assert _flat_utf8(body) is None
    assert _outcome(parse_form, body) == _outcome(lambda b: _build_form(b, "utf-8"), body)
