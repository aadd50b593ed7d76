"""validate-config reports, with key and line, every config that serve refuses or
misuses; serve refuses the same configs instead of misusing them (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from jdxmail.cli.exitcodes import ExitCode
from tests.conftest import WriteConfig


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDXMAIL_")}
    return subprocess.run(
        [sys.executable, "-m", "jdxmail", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def _config(smtp: dict[str, object], paths: dict[str, str] | None = None) -> str:
    """A config with one key per line, so every key has a line of its own."""
    data: dict[str, object] = {"SmtpServer": smtp}
    if paths is not None:
        data["Paths"] = paths
    return json.dumps(data, indent=2) + "\n"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _assert_both_refuse(path: Path, key: str, line: int, words: str) -> None:
    """validate-config names *key* at *line*; serve does not start."""
    checked = _run("validate-config", "--config", str(path), "--json")
    assert checked.returncode == ExitCode.FAILED, checked.stdout + checked.stderr
    findings = json.loads(checked.stdout)["findings"]
    errors = [f for f in findings if f["severity"] == "error"]
    assert any(f["key"] == key and f["line"] == line for f in errors), findings
    assert any(words in f["message"] for f in errors), findings
    served = _run("serve", "--config", str(path), "--port", "0", "--delivery", "inline")
    assert served.returncode != ExitCode.OK
    assert "listening on" not in served.stdout
    assert "internal error" not in served.stderr


def test_certificate_that_is_not_pem(write_config: WriteConfig, tmp_path: Path) -> None:
    """A CertFile that is not a PEM certificate is an error of Tls.CertFile."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    (tmp_path / "cert.pem").write_text("this is not a certificate\n")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    text = _config({"Tls": {"CertFile": "cert.pem", "KeyFile": "key.pem"}})
    path = write_config(text)
    _assert_both_refuse(path, "SmtpServer.Tls.CertFile", _line_of(text, "CertFile"), "PEM")


def test_key_that_is_not_pem(write_config: WriteConfig, tmp_path: Path) -> None:
    """A KeyFile that is not a PEM private key is an error of Tls.KeyFile."""
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    (tmp_path / "key.pem").write_bytes(b"\x30\x82garbage")
    text = _config({"Tls": {"CertFile": "cert.pem", "KeyFile": "key.pem"}})
    path = write_config(text)
    _assert_both_refuse(path, "SmtpServer.Tls.KeyFile", _line_of(text, "KeyFile"), "PEM")


def test_key_of_another_certificate(write_config: WriteConfig, tmp_path: Path) -> None:
    """A key that does not belong to the certificate is an error of Tls.KeyFile."""
    ca = trustme.CA()
    ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.issue_cert("other").private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    text = _config({"Tls": {"CertFile": "cert.pem", "KeyFile": "key.pem"}})
    path = write_config(text)
    _assert_both_refuse(path, "SmtpServer.Tls.KeyFile", _line_of(text, "KeyFile"), "belong")


@pytest.mark.parametrize("key", ["Logs", "Spool", "Mailbox"])
def test_path_under_a_file(key: str, write_config: WriteConfig, tmp_path: Path) -> None:
    """Paths.Logs/Spool/Mailbox under a regular file is an error of that key."""
    (tmp_path / "plain-file").write_text("x")
    text = _config({"Port": 2525}, {key: "plain-file/sub"})
    path = write_config(text)
    _assert_both_refuse(path, f"Paths.{key}", _line_of(text, f'"{key}"'), "not a folder")


@pytest.mark.parametrize("value", ["evil\r\n250 injected", "a\tb", "two words"])
def test_host_name_with_control_characters(value: str, write_config: WriteConfig) -> None:
    """A HostName with CR/LF, tab or space is refused: it would go into the banner."""
    text = _config({"Port": 2525, "HostName": value})
    path = write_config(text)
    _assert_both_refuse(path, "SmtpServer.HostName", _line_of(text, "HostName"), "HostName")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (
            {"SmtpServer": {"Users": [{"UserName": "a\r\nb", "Password": "x" * 64}]}},
            "SmtpServer.Users[0].UserName",
        ),
        (
            {"RelayServer": {"Host": "smtp.example.com", "Username": "me\r\nRSET"}},
            "RelayServer.Username",
        ),
        ({"RelayServer": {"Host": "smtp.exa\nmple.com"}}, "RelayServer.Host"),
        (
            {"SmtpServer": {"LocalDomains": ["ok.example", "bad\x1b.example"]}},
            "SmtpServer.LocalDomains[1]",
        ),
    ],
)
def test_names_with_control_characters(
    data: dict[str, object], key: str, write_config: WriteConfig
) -> None:
    """A user name, relay host or account, or local domain with a control character is
    refused: with RewriteSender the relay account goes into MAIL FROM verbatim."""
    path = write_config(json.dumps(data, indent=2))
    checked = _run("validate-config", "--config", str(path), "--json")
    assert checked.returncode == ExitCode.FAILED
    findings = json.loads(checked.stdout)["findings"]
    assert any(f["key"] == key and "control characters" in f["message"] for f in findings), findings


def test_relay_ca_file_that_is_not_pem(write_config: WriteConfig, tmp_path: Path) -> None:
    """A relay CaFile without a PEM certificate is an error of CaFile (every delivery
    attempt would fail its certificate check)."""
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    text = json.dumps(
        {
            "SmtpServer": {"TrustedNetworks": ["127.0.0.0/8"]},
            "RelayServer": {"Host": "smtp.example.com", "CaFile": "ca.pem"},
        },
        indent=2,
    )
    path = write_config(text)
    checked = _run("validate-config", "--config", str(path), "--json")
    assert checked.returncode == ExitCode.FAILED
    findings = json.loads(checked.stdout)["findings"]
    assert any(
        f["key"] == "RelayServer.CaFile" and f["line"] == _line_of(text, "CaFile") for f in findings
    ), findings
