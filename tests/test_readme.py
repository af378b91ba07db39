"""The README stays true: every setting and every command is documented there."""

from __future__ import annotations

from common.settings import SPEC
from ingest.cli import build_parser
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_table_with_its_default() -> None:
    for _attr, var, _cast, default, _doc in SPEC:
        shown = "(unset)" if default is None else f"`{default}`"
        assert f"| `{var}` | {shown} |" in README, var


def test_every_command_is_documented() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"`ingest {name}" in README, name


def test_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
