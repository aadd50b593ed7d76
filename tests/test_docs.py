"""The documentation keeps up with the code: every config key documented, examples valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from jdxmail.settings.files import nested_model
from jdxmail.settings.model import Settings, section_aliases
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parent.parent


def _keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for alias, annotation in section_aliases(model).values():
        keys.add(alias)
        inner, _ = nested_model(annotation)
        if inner is not None:
            keys |= _keys(inner)
    return keys


def test_every_config_key_is_documented() -> None:
    """docs/configuration.md has a table row for every key of the settings model."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(
        k for k in _keys(Settings) if f"| `{k}` |" not in text and f"`{k}`" not in text
    )
    assert missing == []


@pytest.mark.parametrize("name", ["appsettings.json", "jdxmail.toml"])
def test_examples_validate(runner: CliRunner, tmp_path: Path, name: str) -> None:
    """The shipped examples pass validate-config (notes allowed)."""
    path = tmp_path / name
    shutil.copy(ROOT / "examples" / name, path)
    path.chmod(0o600)
    code, out, _ = invoke(runner, "validate-config", "--config", str(path))
    assert code == 0, out
    assert "error" not in out.lower()
