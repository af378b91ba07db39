"""Fixtures of the storage tests of personal data (test_erasure, test_erased)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.people import KEY
from workers.storage import erased


@pytest.fixture
def key() -> Iterator[bytes]:
    """The erasure key set for the workers' check, as the command takes it."""
    erased.set_key(KEY)
    yield KEY.encode()
    erased.set_key(None)
