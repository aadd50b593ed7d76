"""Config from the environment: ``JDXMAIL_Section__Key=value`` overrides the file."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jdxmail.settings.files import load_settings
from tests.conftest import WriteConfig, invoke
from tests.server.test_lifecycle import ServeProcess, serve

__all__ = ["serve"]  # the fixture

CONFIG = """{
  "SmtpServer": {
    "Port": 2525,
    "TrustedNetworks": ["127.0.0.0/8"],
    "MaxRecipients": 50
  },
  "RelayServers": [
    {"Name": "main", "Host": "smtp.example.com", "Port": 587}
  ]
}
"""


def test_variables_override_file_keys_and_list_items(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Port, a relay's host (by index) and a JSON list replace what the file says."""
    path = write_config(CONFIG)
    monkeypatch.setenv("JDXMAIL_SmtpServer__Port", "2526")
    monkeypatch.setenv("JDXMAIL_RelayServers__0__Host", "relay.example.net")
    monkeypatch.setenv("JDXMAIL_SMTPSERVER__TRUSTEDNETWORKS", '["10.0.0.0/8"]')
    monkeypatch.setenv("JDXMAIL_RelayServers__1__Host", "backup.example.net")
    monkeypatch.setenv("JDXMAIL_RelayServers__1__Name", "backup")
    settings = load_settings(path).settings
    assert settings.smtp_server.port == 2526
    assert settings.smtp_server.max_recipients == 50
    assert [str(n) for n in settings.smtp_server.trusted_networks] == ["10.0.0.0/8"]
    assert [(r.name, r.host) for r in settings.relay_servers] == [
        ("main", "relay.example.net"),
        ("backup", "backup.example.net"),
    ]


def test_config_and_relay_password_variables_keep_their_meaning(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JDXMAIL_CONFIG still names the file and JDXMAIL_RELAY_PASSWORD_MAIN its password."""
    path = write_config(CONFIG, name="elsewhere.json")
    monkeypatch.setenv("JDXMAIL_CONFIG", str(path))
    monkeypatch.setenv("JDXMAIL_RELAY_PASSWORD_MAIN", "s3cret")
    settings = load_settings().settings
    password = settings.relay_servers[0].password
    assert password is not None
    assert password.get_secret_value() == "s3cret"


def test_validate_config_shows_where_overridden_values_came_from(
    runner: CliRunner, write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate-config lists each overridden key with its variable and the line replaced."""
    path = write_config(CONFIG)
    monkeypatch.setenv("JDXMAIL_SmtpServer__Port", "2526")
    monkeypatch.setenv("JDXMAIL_Delivery__RetryDelay", "30")
    code, out, _ = invoke(runner, "validate-config", "--config", str(path), "--json")
    assert code == 0
    report = json.loads(out)
    assert {(o["key"], o["variable"], o["file_line"]) for o in report["overrides"]} == {
        ("SmtpServer.Port", "JDXMAIL_SmtpServer__Port", 3),
        ("Delivery.RetryDelay", "JDXMAIL_Delivery__RetryDelay", None),
    }
    code, out, _ = invoke(runner, "validate-config", "--config", str(path))
    assert "SmtpServer.Port from JDXMAIL_SmtpServer__Port (instead of line 3)" in out


def test_validate_config_sources_names_the_origin_of_every_value(
    runner: CliRunner, write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--sources: each effective value with its file line, variable or default; no secret."""
    path = write_config(CONFIG.replace('"Port": 587}', '"Port": 587, "Password": "s3cret-pw"}'))
    monkeypatch.setenv("JDXMAIL_SmtpServer__Port", "2526")
    monkeypatch.setenv("JDXMAIL_SMTPSERVER__TRUSTEDNETWORKS", '["10.0.0.0/8"]')
    code, out, _ = invoke(runner, "validate-config", "--config", str(path), "--sources", "--json")
    assert code == 0
    origins = {o["key"]: o for o in json.loads(out)["sources"]}
    assert origins["SmtpServer.Port"] == {
        "key": "SmtpServer.Port",
        "value": 2526,
        "origin": "environment",
        "variable": "JDXMAIL_SmtpServer__Port",
    }
    assert origins["SmtpServer.TrustedNetworks[0]"]["variable"] == (
        "JDXMAIL_SMTPSERVER__TRUSTEDNETWORKS"
    )
    assert origins["SmtpServer.MaxRecipients"] == {
        "key": "SmtpServer.MaxRecipients",
        "value": 50,
        "origin": "file",
        "line": 5,
    }
    assert origins["RelayServers[0].Host"]["line"] == 8
    assert origins["SmtpServer.TimeOut"] == {
        "key": "SmtpServer.TimeOut",
        "value": 30,
        "origin": "default",
    }
    assert "s3cret-pw" not in out
    code, out, _ = invoke(runner, "validate-config", "--config", str(path), "--sources")
    assert "SmtpServer.MaxRecipients = 50  (line 5)" in out
    assert "SmtpServer.Port = 2526  (JDXMAIL_SmtpServer__Port)" in out
    assert "SmtpServer.TimeOut = 30  (default)" in out
    assert "s3cret-pw" not in out


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("JDXMAIL_SmtpServer__Prot", "2526", "unknown key 'Prot'; did you mean 'Port'?"),
        ("JDXMAIL_SmtpServer__Port", "twenty", "the value is not JSON"),
        ("JDXMAIL_SmtpServer__Port", "70000", "less than or equal to 65535"),
        ("JDXMAIL_SmtpSrever__Port", "2526", "there is no section 'SmtpSrever'"),
        ("JDXMAIL_RelayServers__5__Host", "x.example", "item 5 would leave a gap"),
    ],
)
def test_a_bad_variable_is_a_finding_that_names_it(
    runner: CliRunner,
    write_config: WriteConfig,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    said: str,
) -> None:
    """A wrong key, value or index in a variable is an error naming the variable, exit 1."""
    path = write_config(CONFIG)
    monkeypatch.setenv(name, value)
    code, out, _ = invoke(runner, "validate-config", "--config", str(path), "--json")
    assert code == 1
    errors = [f for f in json.loads(out)["findings"] if f["severity"] == "error"]
    assert len(errors) == 1, errors
    assert name in errors[0]["message"]
    assert said in errors[0]["message"]
    assert errors[0]["line"] is None


def test_serve_applies_an_override(
    tmp_path: Path, serve: list[ServeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real serve with JDXMAIL_SmtpServer__MaxRecipients=1 refuses a second recipient."""
    monkeypatch.setenv("JDXMAIL_SmtpServer__MaxRecipients", "1")
    server = ServeProcess(tmp_path)
    serve.append(server)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.ehlo()
        client.mail("app@localhost")
        assert client.rcpt("one@example.org")[0] == 250
        assert client.rcpt("two@example.org")[0] == 452
    code, _ = server.stop()
    assert code == 0


def test_metrics_listener_off_loopback_is_warned_about(
    runner: CliRunner, write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate-config warns that a Metrics listener on 0.0.0.0 has no login."""
    path = write_config(CONFIG)
    monkeypatch.setenv("JDXMAIL_Metrics__Enabled", "true")
    monkeypatch.setenv("JDXMAIL_Metrics__BindAddress", "0.0.0.0")
    code, out, _ = invoke(runner, "validate-config", "--config", str(path), "--json")
    assert code == 0
    (warning,) = [f for f in json.loads(out)["findings"] if f["code"] == "metrics.off-loopback"]
    assert warning["severity"] == "warning"
    assert warning["key"] == "Metrics.BindAddress"
    assert "no login" in warning["message"]
