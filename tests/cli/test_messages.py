"""Messages a user reads say what is true for them: the right flag, the right origin, no jargon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import WriteConfig, invoke


def test_missing_config_from_the_environment_says_so(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JDXMAIL_CONFIG naming no file points at the variable, not at a --config never given."""
    monkeypatch.setenv("JDXMAIL_CONFIG", str(tmp_path / "gone.json"))
    code, _, err = invoke(runner, "validate-config")
    assert code == 2
    assert "$JDXMAIL_CONFIG" in err
    assert "without --config" not in err


def test_missing_config_from_the_option_names_the_option(runner: CliRunner, tmp_path: Path) -> None:
    """With --config, the fix still speaks of --config."""
    code, _, err = invoke(runner, "validate-config", "--config", str(tmp_path / "gone.json"))
    assert code == 2
    assert "without --config" in err


@pytest.mark.parametrize(
    ("config", "key", "words"),
    [
        ('{"SmtpServer": {"Users": [5]}}', "SmtpServer.Users[0]", "must be an object"),
        ('{"SmtpServer": {"Tls": "x"}}', "SmtpServer.Tls", "must be an object"),
        ('{"SmtpServer": {"Port": "x"}}', "SmtpServer.Port", "must be a whole number"),
        ('{"SmtpServer": {"LocalDomains": "x"}}', "SmtpServer.LocalDomains", "must be a list"),
        ('{"SmtpServer": {"BareLineEndings": "x"}}', "SmtpServer.BareLineEndings", "must be"),
    ],
)
def test_findings_speak_config_not_pydantic(
    runner: CliRunner, write_config: WriteConfig, config: str, key: str, words: str
) -> None:
    """Findings say "must be an object", never pydantic's "Input should be"/"Value error," or a class name."""
    write_config(config)
    code, out, _ = invoke(runner, "validate-config", "--json")
    assert code == 1
    finding = next(f for f in json.loads(out)["findings"] if f["key"] == key)
    assert words in finding["message"]
    for jargon in ("Input should", "Value error", "instance of", "Settings"):
        assert jargon not in finding["message"]


@pytest.mark.parametrize("value", ["null", "[]", "5"])
def test_jdx_that_is_not_an_object_is_an_error(
    runner: CliRunner, write_config: WriteConfig, value: str
) -> None:
    """{"Jdx": null} is the JumboDogX wrapper gone wrong: an error saying so, not "not used"."""
    write_config(f'{{"Jdx": {value}}}')
    code, out, _ = invoke(runner, "validate-config")
    assert code == 1
    assert "Jdx must be an object" in out
    assert "not used by jdxmail" not in out
