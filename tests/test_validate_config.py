"""`jdxmail validate-config`: each finding from a real config file, with key, line, fix and
exit code; the guide's causes A3, B2, B3, C3, C6, H5 and the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jdxmail.passwords import HashType, hash_password
from tests.conftest import WriteConfig, invoke

SHA256_PASSWORD = hash_password("password")


def run_json(runner: CliRunner, path: Path) -> tuple[int, dict[str, Any]]:
    """validate-config --json on *path*: exit code and the parsed report."""
    code, out, _ = invoke(runner, "validate-config", "--config", str(path), "--json")
    report: dict[str, Any] = json.loads(out)
    return code, report


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    """The one finding with *code* in *report*."""
    found: list[dict[str, Any]] = [f for f in report["findings"] if f["code"] == code]
    assert len(found) == 1, report["findings"]
    return found[0]


def config(smtp: str = "", extra: str = "") -> str:
    """A config whose SmtpServer section holds *smtp* (JSON members) plus *extra* sections."""
    body = '"SmtpServer": {\n    "Port": 2525' + (",\n    " + smtp if smtp else "") + "\n  }"
    return "{\n  " + body + (",\n  " + extra if extra else "") + "\n}\n"


def user(name: str, password: str, hash_type: str) -> str:
    """A user object as JSON text."""
    return json.dumps({"UserName": name, "Password": password, "HashType": hash_type})


def test_valid_config_exits_zero(runner: CliRunner, write_config: WriteConfig) -> None:
    """A sound config prints "no problems found" and exits 0."""
    path = write_config(
        config(
            f'"Users": [{user("a@example.com", hash_password("pw", HashType.SCRYPT), "SCRYPT")}]'
        )
    )
    code, out, _ = invoke(runner, "validate-config", "--config", str(path))
    assert code == 0
    assert "no problems found" in out


def test_a3_disabled_server_is_a_warning(runner: CliRunner, write_config: WriteConfig) -> None:
    """JDX-A3: Enabled false warns, naming the key and its line; exit stays 0."""
    path = write_config(config('"Enabled": false'))
    code, report = run_json(runner, path)
    item = finding(report, "server.disabled")
    assert code == 0
    assert (item["severity"], item["row"], item["key"], item["line"]) == (
        "warning",
        "JDX-A3",
        "SmtpServer.Enabled",
        4,
    )
    assert '"Enabled": true' in item["fix"]


@pytest.mark.parametrize(
    ("stored", "declared", "expect"),
    [
        ("Hunter2-plain", "SHA256", "looks like the password itself"),
        (hash_password("password", HashType.SHA512), "SHA256", "is a SHA512 hash"),
        (SHA256_PASSWORD, "SHA512", "is a SHA256 hash"),
        (hash_password("pw", HashType.SCRYPT), "SHA256", "is a SCRYPT hash"),
    ],
)
def test_b2_hash_type_does_not_fit_password(
    runner: CliRunner, write_config: WriteConfig, stored: str, declared: str, expect: str
) -> None:
    """JDX-B2: a Password that is not of its HashType is an error naming the user; exit 1."""
    path = write_config(
        config(f'"Users": [\n      {user("test@example.com", stored, declared)}\n    ]')
    )
    code, report = run_json(runner, path)
    item = finding(report, "hash.type-mismatch")
    assert code == 1
    assert item["row"] == "JDX-B2"
    assert item["key"] == "SmtpServer.Users[0].Password"
    assert item["line"] == 5
    assert "test@example.com" in item["message"]
    assert expect in item["message"]
    assert stored not in json.dumps(report)


def test_b3_relay_without_users(runner: CliRunner, write_config: WriteConfig) -> None:
    """JDX-B3: a relay with no users and no trusted networks means nobody can send: error."""
    path = write_config(
        config(extra='"RelayServer": {"Host": "smtp.example.com", "Port": 25, "UseTls": true}')
    )
    code, report = run_json(runner, path)
    item = finding(report, "users.none")
    assert code == 1
    assert item["row"] == "JDX-B3"
    assert "jdxmail user add" in item["fix"]


def test_c3_port_and_tls_mode(runner: CliRunner, write_config: WriteConfig) -> None:
    """JDX-C3: port 465 without UseTls is an error, 587 without it a warning."""
    users = f'"Users": [{user("a", SHA256_PASSWORD, "SHA256")}]'
    path = write_config(
        config(users, '"RelayServer": {"Host": "mail.example.com", "Port": 465, "UseTls": false}')
    )
    code, report = run_json(runner, path)
    item = finding(report, "relay.tls-port")
    assert (code, item["severity"], item["row"], item["key"]) == (
        1,
        "error",
        "JDX-C3",
        "RelayServer.UseTls",
    )
    path = write_config(
        config(users, '"RelayServer": {"Host": "mail.example.com", "Port": 587, "UseTls": false}')
    )
    code, report = run_json(runner, path)
    assert (code, finding(report, "relay.tls-port")["severity"]) == (0, "warning")


def test_c6_provider_rules(runner: CliRunner, write_config: WriteConfig) -> None:
    """JDX-C6: SendGrid needs Username apikey; SES needs SMTP credentials, not IAM keys."""
    users = f'"Users": [{user("a", SHA256_PASSWORD, "SHA256")}]'
    path = write_config(
        config(
            users,
            '"RelayServer": {"Host": "smtp.sendgrid.net", "Username": "me@example.com", "Password": "SG.x"}',
        )
    )
    code, report = run_json(runner, path)
    item = finding(report, "relay.provider-username")
    assert (code, item["row"]) == (1, "JDX-C6")
    assert '"Username": "apikey"' in item["fix"]
    iam_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    path = write_config(
        config(
            users,
            '"RelayServer": {"Host": "email-smtp.eu-west-1.amazonaws.com", "Username": "AKIAEXAMPLE",'
            f' "Password": "{iam_secret}", "DailyQuota": 200}}',
        )
    )
    code, report = run_json(runner, path)
    item = finding(report, "relay.provider-password")
    assert (code, item["row"]) == (0, "JDX-C6")
    assert "SMTP credentials" in item["fix"]
    assert iam_secret not in json.dumps(report)


def test_gmail_account_password_instead_of_app_password(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """JDX-C4: a Gmail Password that is not a 16-letter app password is flagged with the how-to."""
    users = f'"Users": [{user("a", SHA256_PASSWORD, "SHA256")}]'
    path = write_config(
        config(
            users,
            '"RelayServer": {"Host": "smtp.gmail.com", "Username": "me@gmail.com", "Password": "hunter2!"}',
        )
    )
    _, report = run_json(runner, path)
    item = finding(report, "relay.gmail-app-password")
    assert "apppasswords" in item["fix"]
    path = write_config(
        config(
            users,
            '"RelayServer": {"Host": "smtp.gmail.com", "Username": "me@gmail.com",'
            ' "Password": "abcd efgh ijkl mnop", "DailyQuota": 500}',
        )
    )
    code, report = run_json(runner, path)
    assert code == 0
    assert report["findings"] == [] or all(
        f["code"] != "relay.gmail-app-password" for f in report["findings"]
    )


def test_host_typo_is_suggested(runner: CliRunner, write_config: WriteConfig) -> None:
    """JDX-C1: smtp.gmial.com is flagged as a typo of smtp.gmail.com."""
    users = f'"Users": [{user("a", SHA256_PASSWORD, "SHA256")}]'
    path = write_config(config(users, '"RelayServer": {"Host": "smtp.gmial.com"}'))
    _, report = run_json(runner, path)
    assert finding(report, "relay.host-typo")["fix"] == 'set "Host": "smtp.gmail.com"'


def test_h5_exposed_without_tls_and_open_relay(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """JDX-H5: 0.0.0.0 without TLS warns; trusting 0.0.0.0/0 is an open relay: error."""
    path = write_config(
        config(
            '"BindAddress": "0.0.0.0",\n    "TrustedNetworks": ["0.0.0.0/0"],\n    "AllowPlaintextAuth": true'
        )
    )
    code, report = run_json(runner, path)
    assert code == 1
    assert finding(report, "exposure.no-tls")["row"] == "JDX-H5"
    assert finding(report, "exposure.plaintext-auth")["severity"] == "warning"
    open_relay = finding(report, "policy.open-relay")
    assert (open_relay["severity"], open_relay["key"], open_relay["line"]) == (
        "error",
        "SmtpServer.TrustedNetworks[0]",
        5,
    )


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_port_out_of_range(runner: CliRunner, write_config: WriteConfig, port: str) -> None:
    """A port outside 1..65535 is an error naming SmtpServer.Port and its line."""
    path = write_config('{\n  "SmtpServer": {\n    "Port": ' + port + "\n  }\n}\n")
    code, report = run_json(runner, path)
    item = finding(report, "schema.invalid")
    assert (code, item["key"], item["line"]) == (1, "SmtpServer.Port", 3)
    assert "1 to 65535" in item["fix"]


def test_bind_address_not_on_this_host(runner: CliRunner, write_config: WriteConfig) -> None:
    """A BindAddress that is on no interface here is an error (a documentation address)."""
    from jdxmail.settings.checks import local_addresses

    foreign = next(a for a in ("203.0.113.254", "198.51.100.254") if a not in local_addresses())
    path = write_config(config(f'"BindAddress": "{foreign}"'))
    code, report = run_json(runner, path)
    item = finding(report, "server.bind-not-local")
    assert (code, item["key"]) == (1, "SmtpServer.BindAddress")
    assert "127.0.0.1" in item["fix"]


def test_duplicate_users(runner: CliRunner, write_config: WriteConfig) -> None:
    """The same UserName twice (in any case) is an error on the second one."""
    first = user("Test@Example.com", SHA256_PASSWORD, "SHA256")
    second = user("test@example.com", SHA256_PASSWORD, "SHA256")
    path = write_config(config(f'"Users": [\n      {first},\n      {second}\n    ]'))
    code, report = run_json(runner, path)
    item = finding(report, "users.duplicate")
    assert (code, item["key"], item["line"]) == (1, "SmtpServer.Users[1].UserName", 6)


def test_unsalted_hash_is_a_note(runner: CliRunner, write_config: WriteConfig) -> None:
    """An unsalted SHA256 hash is an info finding suggesting scrypt; exit stays 0."""
    path = write_config(config(f'"Users": [{user("a", SHA256_PASSWORD, "SHA256")}]'))
    code, report = run_json(runner, path)
    item = finding(report, "hash.unsalted")
    assert (code, item["severity"]) == (0, "info")
    assert "scrypt" in item["fix"]


def test_readable_config_with_secrets(runner: CliRunner, write_config: WriteConfig) -> None:
    """A config holding passwords that others can read gets a chmod 600 warning."""
    path = write_config(config(f'"Users": [{user("a", SHA256_PASSWORD, "SHA256")}]'), mode=0o644)
    _, report = run_json(runner, path)
    assert finding(report, "file.readable")["fix"] == f"chmod 600 {path}"
    path.chmod(0o600)
    _, report = run_json(runner, path)
    assert all(f["code"] != "file.readable" for f in report["findings"])


def test_unknown_key_with_did_you_mean(runner: CliRunner, write_config: WriteConfig) -> None:
    """An unknown key is an error with its line and the closest known key."""
    path = write_config('{\n  "SmtpServer": {\n    "Prot": 25\n  },\n  "RelaySevrer": {}\n}\n')
    code, out, _ = invoke(runner, "validate-config", "--config", str(path))
    assert code == 1
    assert "SmtpServer.Prot (line 3)" in out
    assert "did you mean 'Port'?" in out
    assert "did you mean 'RelayServer'?" in out


def test_foreign_sections_are_ignored(runner: CliRunner, write_config: WriteConfig) -> None:
    """Other JumboDogX sections (DnsServer, Logging) are noted as ignored, not errors."""
    path = write_config('{"Logging": {}, "Jdx": {"DnsServer": {}, "SmtpServer": {"Port": 2525}}}')
    code, report = run_json(runner, path)
    assert code == 0
    assert "DnsServer" in finding(report, "schema.ignored-section")["message"]


def test_wrong_type_and_missing_key(runner: CliRunner, write_config: WriteConfig) -> None:
    """A wrong type and a missing required key are errors with their fix."""
    path = write_config('{"SmtpServer": {"Enabled": "maybe"}, "RelayServer": {"Port": 587}}')
    code, report = run_json(runner, path)
    assert code == 1
    assert finding(report, "schema.invalid")["fix"] == "write true or false, without quotes"
    assert finding(report, "schema.missing")["key"] == "RelayServer.Host"


@pytest.mark.parametrize(
    ("name", "text", "line", "column"),
    [
        (
            "appsettings.json",
            '{\n  "SmtpServer": {\n    "Port": 2525\n    "Enabled": true\n  }\n}',
            4,
            5,
        ),
        ("jdxmail.toml", "[SmtpServer]\nPort = 2525\nEnabled = yes\n", 3, 11),
    ],
)
def test_parse_errors_exit_2_with_position(
    runner: CliRunner, write_config: WriteConfig, name: str, text: str, line: int, column: int
) -> None:
    """Malformed JSON or TOML exits 2 with the file, line and column; no traceback."""
    path = write_config(text, name=name)
    code, _, err = invoke(runner, "validate-config", "--config", str(path))
    assert code == 2
    assert f"{path}:{line}:{column}:" in err
    assert "Traceback" not in err
    code, report = run_json(runner, path)
    assert (code, report["valid"], report["line"], report["column"]) == (2, False, line, column)


def test_missing_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    """A --config path that does not exist exits 2 saying so."""
    code, _, err = invoke(runner, "validate-config", "--config", str(tmp_path / "nope.json"))
    assert code == 2
    assert "no such file" in err


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "null",
        '{"SmtpServer": []}',
        '{"SmtpServer": {"Users": {"a": 1}}}',
        '{"SmtpServer": {"Users": [1]}}',
        '"x"',
    ],
)
def test_malformed_shapes_never_crash(
    runner: CliRunner, write_config: WriteConfig, text: str
) -> None:
    """Values of the wrong shape anywhere give findings or a parse error, never a traceback."""
    path = write_config(text)
    code, out, err = invoke(runner, "validate-config", "--config", str(path))
    assert code in (1, 2)
    assert "Traceback" not in out + err


def test_bad_network_is_one_finding_in_the_users_words(
    runner: CliRunner, write_config: WriteConfig
) -> None:
    """A bad CIDR gives one finding at TrustedNetworks[i] that says how to write it."""
    path = write_config('{"SmtpServer": {"TrustedNetworks": ["192.168.1.0/24", "10.0.0.300/8"]}}')
    code, report = run_json(runner, path)
    item = finding(report, "schema.invalid")
    assert (code, item["key"]) == (1, "SmtpServer.TrustedNetworks[1]")
    assert "192.168.1.0/24" in item["message"]


def test_a_folder_as_config_is_named_once(runner: CliRunner, tmp_path: Path) -> None:
    """--config pointing at a folder says so in one plain sentence and exits 2."""
    code, _, err = invoke(runner, "validate-config", "--config", str(tmp_path))
    assert code == 2
    assert err.count("cannot read config file") == 1
    assert "it is a directory" in err
