"""The wire format: a call's envelope, and a batch of calls as one job argument."""

from __future__ import annotations

import pickle
import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from common.envelope import Envelope, pack_calls, unpack_calls, wire
from tests.payloads import webhook_body

headers = st.dictionaries(st.sampled_from(["host", "date", "signature"]), st.text(max_size=20), max_size=3)
calls = st.lists(
    st.builds(
        wire,
        st.binary(max_size=300),
        st.text(max_size=40),
        st.floats(0, 2e9),
        st.text(max_size=20),
        st.just("POST"),
        st.text(max_size=40),
        headers,
    ),
    max_size=30,
)


@given(calls)
def test_a_packed_batch_unpacks_to_the_same_calls(batch: list[dict]) -> None:
    packed = pack_calls(batch)
    assert isinstance(packed, bytes)
    assert unpack_calls(packed) == batch


def test_a_packed_batch_is_smaller_than_rqs_zlib() -> None:
    batch = [
        wire(
            webhook_body("open", id=f"m{n}", time=f"2026-11-27 10:{n % 60:02d}:00", ip=f"192.0.2.{n % 250}"),
            "application/x-www-form-urlencoded",
            1.8e9 + n,
            "192.0.2.7",
            "POST",
            "/copernica",
            {},
        )
        for n in range(40)
    ]
    assert len(pack_calls(batch)) < len(zlib.compress(pickle.dumps(batch, protocol=5), 1))


def test_a_plain_list_is_taken_as_it_is() -> None:
    """Jobs queued by an earlier version (or by `rejected replay`) carry the list itself."""
    batch = [Envelope(b"id=1", "application/x-www-form-urlencoded", 1.0).to_wire()]
    assert unpack_calls(batch) is batch


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        webhook_body("open", id="1"),
        zstandard.compress(b"not a pickle"),
        zstandard.compress(pickle.dumps({"a": 1})),
        b"\x28\xb5\x2f\xfd\x00",
        7,
    ],
)
def test_anything_else_is_refused(argument: object) -> None:
    with pytest.raises(ValueError, match="not a batch of calls"):
        unpack_calls(argument)  # type: ignore[arg-type]


def test_a_wire_dict_reads_back_as_its_envelope() -> None:
    envelope = Envelope(
        webhook_body("open", id="1"),
        "application/x-www-form-urlencoded",
        1795694401.25,
        "192.0.2.1",
        "POST",
        "/copernica?token=x",
        {"x-copernica-id": "account-1"},
    )
    assert Envelope.from_wire(envelope.to_wire()) == envelope
    assert Envelope.from_wire({**envelope.to_wire(), "method": ""}).method == "POST"


@pytest.mark.parametrize(
    "odd, expected",
    [
        (
            {"body": "id=1", "received_at": 5},
            Envelope(b"id=1", "", 5.0, target=""),
        ),  # an early form: str body, int time
        (
            {"body": bytearray(b"x"), "content_type": None, "received_at": "7.5", "headers": [("a", "b")]},
            Envelope(b"x", "", 7.5, target="", headers={"a": "b"}),
        ),
        (
            {
                "v": 1,
                "body": b"y",
                "content_type": "text/plain",
                "received_at": 1.0,
                "remote": "",
                "method": None,
                "target": "/copernica",
                "headers": {},
            },
            Envelope(b"y", "text/plain", 1.0),
        ),
    ],
)
def test_wire_dicts_of_other_shapes_are_read_the_general_way(odd: dict, expected: Envelope) -> None:
    assert Envelope.from_wire(odd) == expected
