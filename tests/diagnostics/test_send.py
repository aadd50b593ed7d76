"""send-test (one message with a masked transcript) and auth-string (row D1)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from jdxmail.cli.exitcodes import RelayExit
from tests.conftest import WriteConfig, invoke
from tests.diagnostics.conftest import GOOD_PASSWORD, GOOD_USER, ProviderSpec, StartProvider


def test_auth_string_lines_decode_to_user_and_password(runner: CliRunner) -> None:
    """The AUTH PLAIN and AUTH LOGIN lines decode back to the user and the password."""
    code, out, err = invoke(
        runner, "auth-string", "alice@example.com", "--password-stdin", input="s3cret pass\n"
    )
    assert code == 0
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    plain = lines[0].removeprefix("AUTH PLAIN ")
    assert base64.b64decode(plain) == b"\0alice@example.com\0s3cret pass"
    assert lines[1] == "AUTH LOGIN"
    assert base64.b64decode(lines[2]) == b"alice@example.com"
    assert base64.b64decode(lines[3]) == b"s3cret pass"
    assert "s3cret pass" not in out
    assert "do not share" in err


async def test_auth_string_lines_log_in_to_a_real_server(
    fake_provider: StartProvider, runner: CliRunner
) -> None:
    """Typed into a session as printed, the AUTH PLAIN and AUTH LOGIN lines both get 235."""
    fake = await fake_provider(ProviderSpec(tls="none"))
    code, out, _ = await asyncio.to_thread(
        invoke,
        runner,
        "auth-string",
        GOOD_USER,
        "--password-stdin",
        "--json",
        input=GOOD_PASSWORD + "\n",
    )
    assert code == 0
    data = json.loads(out)
    for lines in ([data["plain"]], data["login"]):
        reader, writer = await asyncio.open_connection(fake.host, fake.port)
        await reader.readline()
        writer.write(b"EHLO me\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        replies = []
        for line in lines:
            writer.write(line.encode() + b"\r\n")
            replies.append((await reader.readline())[:3])
        writer.close()
        assert replies[-1] == b"235"
    assert fake.logins == [GOOD_USER, GOOD_USER]


def test_auth_string_empty_password_is_refused(runner: CliRunner) -> None:
    """An empty password is a usage error, not a line that cannot work."""
    code, _, err = invoke(runner, "auth-string", "u", "--password-stdin", input="\n")
    assert code == 2
    assert "empty" in err


async def _send(runner: CliRunner, *args: str, stdin: str | None = None) -> tuple[int, str]:
    code, out, err = await asyncio.to_thread(invoke, runner, "send-test", *args, input=stdin)
    return code, out + err


async def test_send_test_shows_masked_transcript_and_final_reply(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """send-test delivers one message and prints the transcript with AUTH masked."""
    fake = await fake_provider()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    code, out = await _send(
        runner,
        "--to",
        "friend@example.net",
        "--host",
        f"127.0.0.1:{fake.port}",
        "--user",
        GOOD_USER,
        "--password-stdin",
        "--ca",
        str(ca_path),
        "--transcript",
        stdin=GOOD_PASSWORD + "\n",
    )
    assert code == RelayExit.OK, out
    assert "→ AUTH PLAIN ********" in out
    assert f"→ MAIL FROM:<{GOOD_USER}>" in out
    assert "final reply: 250 2.0.0 OK" in out
    assert GOOD_PASSWORD not in out
    assert base64.b64encode(f"\0{GOOD_USER}\0{GOOD_PASSWORD}".encode()).decode() not in out
    assert len(fake.messages) == 1
    content = fake.messages[0].original_content
    assert content is not None
    assert b"Subject: jdxmail test message" in content


async def test_send_test_defaults_to_the_configured_server(
    fake_provider: StartProvider, runner: CliRunner, write_config: WriteConfig
) -> None:
    """Without --host, send-test uses BindAddress and Port of the config."""
    fake = await fake_provider(ProviderSpec(tls="none", hostname="jdxmail.local", ident="ESMTP"))
    path = write_config(json.dumps({"SmtpServer": {"BindAddress": "0.0.0.0", "Port": fake.port}}))
    code, out = await _send(
        runner, "--to", "someone@localhost", "--config", str(path), "--tls", "none"
    )
    assert code == RelayExit.OK, out
    assert f"127.0.0.1:{fake.port}" in out
    assert fake.messages[0].mail_from == "jdxmail-test@localhost"


async def test_send_test_server_down_exits_connect(refused_port: int, runner: CliRunner) -> None:
    """A server that is down fails at TCP connect with exit 11 and a fix about the server."""
    code, out = await _send(
        runner, "--to", "x@example.net", "--host", "127.0.0.1", "-p", str(refused_port)
    )
    assert code == RelayExit.CONNECT
    assert "connection refused" in out
    assert "jdxmail serve" in out
    assert "--port 587" not in out  # send-test talks to jdxmail, not to a provider


async def test_send_test_old_server_spelling_still_works(
    refused_port: int, runner: CliRunner
) -> None:
    """The old --server HOST:PORT still reaches the same server (hidden from --help)."""
    code, out = await _send(
        runner, "--to", "x@example.net", "--server", f"127.0.0.1:{refused_port}"
    )
    assert code == RelayExit.CONNECT
    assert f"127.0.0.1:{refused_port}" in out
    _, help_text, _ = invoke(runner, "send-test", "--help")
    assert "--server" not in help_text
    assert "--host HOST[:PORT]" in help_text


@pytest.mark.parametrize(
    ("host", "shown"),
    [("[::1]:{port}", "[::1]:{port}"), ("[::1]", "[::1]:{port}"), ("::1", "[::1]:{port}")],
)
async def test_send_test_takes_bracketed_and_bare_ipv6(
    refused_port: int, runner: CliRunner, host: str, shown: str
) -> None:
    """--host [::1]:PORT, [::1] and ::1 are IPv6 hosts, never refused as bad arguments."""
    port = str(refused_port)
    args = ["--to", "x@example.net", "--host", host.format(port=port)]
    if "]:" not in host:
        args += ["--port", port]
    code, out = await _send(runner, *args)
    assert code == RelayExit.CONNECT, out
    assert shown.format(port=port) in out


def test_send_test_bad_server_argument(runner: CliRunner) -> None:
    """--server without a port is a usage error with an example."""
    code, _, err = invoke(runner, "send-test", "--to", "x@example.net", "--server", "localhost")
    assert code == 2
    assert "HOST:PORT" in err


async def test_send_test_implicit_tls_uses_the_configured_implicit_port(
    fake_provider: StartProvider,
    runner: CliRunner,
    write_config: WriteConfig,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    """--tls implicit without --server goes to Tls.ImplicitTlsPort; --json has the transcript."""
    fake = await fake_provider(ProviderSpec(tls="implicit"))
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    smtp = {"Port": 2525, "Tls": {"ImplicitTlsPort": fake.port}}
    path = write_config(json.dumps({"SmtpServer": smtp}))
    code, out = await _send(
        runner,
        "--to",
        "x@example.net",
        "--config",
        str(path),
        "--tls",
        "implicit",
        "--ca",
        str(ca_path),
        "--json",
        "--transcript",
    )
    data = json.loads(out)
    assert code == RelayExit.OK, out
    assert data["port"] == fake.port
    assert data["final_reply"].startswith("250 2.0.0 OK")
    assert "C: MAIL FROM:<jdxmail-test@localhost>" in data["transcript"]
    tls = next(s for s in data["stages"] if s["stage"] == "TLS")
    assert tls["facts"]["mode"] == "implicit"
