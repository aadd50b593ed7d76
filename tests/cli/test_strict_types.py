"""Config values are read strictly: JSON/TOML booleans for switches and numbers for
numbers, with a finding at the key's line otherwise (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jdxmail.settings.files import load_settings
from tests.conftest import WriteConfig, invoke

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize(
    ("section", "key", "value", "fix"),
    [
        ("SmtpServer", "Port", True, "whole number"),
        ("SmtpServer", "Port", "2525", "whole number"),
        ("SmtpServer", "Port", 2525.5, "whole number"),
        ("SmtpServer", "Enabled", "yes", "true or false"),
        ("SmtpServer", "Enabled", 1, "true or false"),
        ("SmtpServer", "AllowPlaintextAuth", "false", "true or false"),
        ("SmtpServer", "TimeOut", False, "whole number"),
        ("SmtpServer", "MaxRecipients", "100", "whole number"),
        ("Delivery", "RewriteSender", "true", "true or false"),
        ("Delivery", "RetryDelay", True, "whole number"),
    ],
)
def test_lax_values_are_errors(
    section: str, key: str, value: object, fix: str, runner: CliRunner, write_config: WriteConfig
) -> None:
    """`"Port": true`, `"Enabled": "yes"` and the like are errors at their line, not
    silently converted (port 1, enabled)."""
    text = json.dumps({section: {key: value}}, indent=2)
    write_config(text)
    code, out, _ = invoke(runner, "validate-config", "--json")
    assert code == 1, out
    findings = json.loads(out)["findings"]
    finding = next(f for f in findings if f["key"] == f"{section}.{key}")
    assert finding["severity"] == "error"
    assert finding["line"] == 3
    assert fix in finding["fix"]


def test_relay_values_are_strict(runner: CliRunner, write_config: WriteConfig) -> None:
    """A relay's "UseTls": "no" and "Port": "587" are errors, not true and 587."""
    text = json.dumps(
        {"RelayServer": {"Host": "smtp.example.com", "Port": "587", "UseTls": "no"}}, indent=2
    )
    write_config(text)
    code, out, _ = invoke(runner, "validate-config", "--json")
    assert code == 1
    keys = {f["key"] for f in json.loads(out)["findings"] if f["severity"] == "error"}
    assert {"RelayServer.Port", "RelayServer.UseTls"} <= keys


def test_toml_strings_are_not_numbers(runner: CliRunner, write_config: WriteConfig) -> None:
    """In TOML too, a quoted port is an error at its line."""
    write_config('[SmtpServer]\nEnabled = true\nPort = "2525"\n', name="jdxmail.toml")
    code, out, _ = invoke(runner, "validate-config", "--json")
    assert code == 1
    finding = json.loads(out)["findings"][0]
    assert (finding["key"], finding["line"]) == ("SmtpServer.Port", 3)


@pytest.mark.parametrize("name", ["appsettings.json", "jdxmail.toml"])
def test_examples_stay_valid(name: str, tmp_path: Path) -> None:
    """The shipped examples (JSON booleans and numbers throughout) still load."""
    shutil.copy(EXAMPLES / name, tmp_path / name)
    loaded = load_settings(tmp_path / name)
    assert loaded.settings.smtp_server.port >= 1
    assert isinstance(loaded.settings.smtp_server.enabled, bool)


def test_builtin_defaults_stay_valid() -> None:
    """The built-in default config loads under strict types."""
    assert load_settings().settings.smtp_server.port == 2525
