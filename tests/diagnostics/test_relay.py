"""test-relay against fake providers: every stage, and the causes of rows C1-C7 and E2."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from jdxmail.cli.exitcodes import RelayExit
from jdxmail.diagnostics.relay_probe import (
    ProbeOptions,
    ProbeStage,
    RelayTarget,
    TlsMode,
    probe_relay,
)
from tests.conftest import WriteConfig, invoke
from tests.diagnostics.conftest import (
    GMAIL_APP_PASSWORD_REQUIRED,
    GOOD_PASSWORD,
    GOOD_USER,
    OUTLOOK_SEND_AS,
    SENDGRID_BAD_LOGIN,
    SES_BAD_LOGIN,
    NetNs,
    ProviderSpec,
    StartProvider,
)


def _ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def _relay(runner: CliRunner, *args: str, stdin: str | None = None) -> tuple[int, str]:
    code, out, err = await asyncio.to_thread(invoke, runner, "test-relay", *args, input=stdin)
    return code, out + err


async def test_gmail_like_relay_passes_every_stage(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """A good login over STARTTLS shows every stage with ✓, the certificate, and sends."""
    fake = await fake_provider()
    code, out = await _relay(
        runner,
        "--provider",
        "gmail",
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        GOOD_USER,
        "--password-stdin",
        "--from",
        GOOD_USER,
        "--to",
        "friend@example.net",
        "--send",
        "--timeout",
        "5",
        stdin=GOOD_PASSWORD + "\n",
    )
    assert code == RelayExit.OK, out
    for stage in (
        "DNS",
        "TCP connect",
        "banner",
        "EHLO after TLS",
        "AUTH",
        "MAIL FROM",
        "RCPT TO",
        "DATA",
        "QUIT",
    ):
        assert f"✓ {stage}" in out
    assert "TLSv1." in out
    assert "hostname matches" in out
    assert "127.0.0.1" in out
    assert "250 2.0.0 OK" in out
    assert GOOD_PASSWORD not in out
    assert len(fake.messages) == 1
    assert fake.messages[0].rcpt_tos == ["friend@example.net"]


async def test_gmail_wrong_password_names_app_password_c4(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """Gmail's 535 5.7.8 stops at AUTH (exit 16) with the app-password hint (JDX-C4)."""
    fake = await fake_provider()
    code, out = await _relay(
        runner,
        "--provider",
        "gmail",
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        GOOD_USER,
        "--password-stdin",
        stdin="my-google-password\n",
    )
    assert code == RelayExit.AUTH
    assert "✗ AUTH" in out
    assert "535 5.7.8" in out
    assert "JDX-C4" in out
    assert "apppasswords" in out
    assert "my-google-password" not in out


async def test_gmail_534_names_two_step_verification_c5(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """Gmail's 534 5.7.9 is explained as 2-Step Verification / app password (JDX-C5)."""
    fake = await fake_provider(ProviderSpec(auth_failure=GMAIL_APP_PASSWORD_REQUIRED))
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        GOOD_USER,
        "--password-stdin",
        stdin="wrong\n",
    )
    assert code == RelayExit.AUTH
    assert "JDX-C5" in out
    assert "2-Step Verification" in out
    assert "534 5.7.9" in out


async def test_sendgrid_wrong_username_says_apikey_c6(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """A SendGrid-like server refusing a login says the Username must be apikey (JDX-C6)."""
    spec = ProviderSpec(
        hostname="smtp.sendgrid.net",
        ident="ESMTP service ready",
        auth_failure=SENDGRID_BAD_LOGIN,
        users={"apikey": "SG.key"},
    )
    fake = await fake_provider(spec)
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        "me@example.com",
        "--password-stdin",
        stdin="SG.key\n",
    )
    assert code == RelayExit.AUTH
    assert "JDX-C6" in out
    assert '"Username": "apikey"' in out


async def test_ses_iam_keys_say_smtp_credentials_c6(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """An SES-like refusal of IAM access keys says to create SMTP credentials (JDX-C6)."""
    spec = ProviderSpec(
        hostname="email-smtp.eu-west-1.amazonaws.com",
        ident="ESMTP SimpleEmailService-d-FAKE",
        auth_failure=SES_BAD_LOGIN,
    )
    fake = await fake_provider(spec)
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        "AKIAABCDEFGHIJKLMNOP",
        "--password-stdin",
        stdin="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    )
    assert code == RelayExit.AUTH
    assert "JDX-C6" in out
    assert "IAM access key" in out
    assert "SMTP credentials" in out


async def test_sender_not_allowed_c7(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """A MAIL FROM refused with 550 5.7.60 stops at MAIL FROM (exit 17) with JDX-C7."""
    fake = await fake_provider(ProviderSpec(mail_reply=OUTLOOK_SEND_AS))
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        GOOD_USER,
        "--password-stdin",
        "--from",
        "boss@other.example",
        stdin=GOOD_PASSWORD + "\n",
    )
    assert code == RelayExit.MAIL
    assert "✓ AUTH" in out
    assert "✗ MAIL FROM" in out
    assert "JDX-C7" in out
    assert "relay account's own address" in out


async def test_tls_listener_on_plain_port_c3(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """STARTTLS mode against a port that speaks TLS from the first byte says --tls implicit."""
    fake = await fake_provider(ProviderSpec(tls="implicit"))
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--tls",
        "starttls",
        "--ca",
        _ca_file(ca, tmp_path),
        "--timeout",
        "0.5",
    )
    assert code == RelayExit.BANNER
    assert "JDX-C3" in out
    assert "implicit TLS" in out
    assert "--tls implicit" in out


async def test_tls_listener_config_fix_names_usetls_c3(
    fake_provider: StartProvider,
    runner: CliRunner,
    ca: trustme.CA,
    tmp_path: Path,
    write_config: WriteConfig,
) -> None:
    """From a config, the TLS-mode mismatch fix names the keys UseTls and Port 465."""
    fake = await fake_provider(ProviderSpec(tls="implicit"))
    relay = {"Host": "127.0.0.1", "Port": fake.port, "UseTls": True, "TimeOut": 1}
    relay["CaFile"] = _ca_file(ca, tmp_path)
    path = write_config(json.dumps({"RelayServer": relay}))
    code, out = await _relay(runner, "--config", str(path), "--timeout", "0.5")
    assert code == RelayExit.BANNER
    assert '"Port": 465 (RelayServer.Port)' in out
    assert '"Port": 465' in out
    code, out = await _relay(runner, "--config", str(path), "--tls", "implicit")
    assert code == RelayExit.OK, out
    assert "✓ TLS" in out


async def test_implicit_tls_on_plain_port_c3(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """Implicit TLS against a plain SMTP port fails at TLS and says --tls starttls."""
    fake = await fake_provider()
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--tls",
        "implicit",
        "--ca",
        _ca_file(ca, tmp_path),
        "--timeout",
        "2",
    )
    assert code == RelayExit.TLS
    assert "JDX-C3" in out
    assert "speaks plain SMTP" in out
    assert "--tls starttls" in out


async def test_silent_server_times_out_at_banner_c2(
    silent_listener: int, runner: CliRunner
) -> None:
    """A server that accepts and never greets fails at the banner stage with a timeout."""
    code, out = await _relay(
        runner, "--host", "127.0.0.1", "--port", str(silent_listener), "--timeout", "0.3"
    )
    assert code == RelayExit.BANNER
    assert "no banner within 0.3 s" in out
    assert "JDX-C2" in out


async def test_refused_port_c2(refused_port: int, runner: CliRunner) -> None:
    """A closed port fails at TCP connect (exit 11) and says the connection was refused."""
    code, out = await _relay(runner, "--host", "127.0.0.1", "--port", str(refused_port))
    assert code == RelayExit.CONNECT
    assert "connection refused" in out
    assert "✓ DNS" in out
    assert "✗ TCP connect" in out


async def test_refused_given_port_is_not_told_to_use_587(
    refused_port: int, runner: CliRunner
) -> None:
    """--host 127.0.0.1:PORT connects to PORT (not PORT:587) and the fix names the port given."""
    code, out = await _relay(runner, "--host", f"127.0.0.1:{refused_port}", "--tls", "none")
    assert code == RelayExit.CONNECT
    assert f"connection refused by 127.0.0.1:{refused_port}" in out
    assert f"listens on port {refused_port}" in out
    assert "--port 587 (the submission port)" not in out


async def test_host_and_port_that_disagree_are_refused(runner: CliRunner) -> None:
    """--host HOST:25 with --port 587 is a usage error, not a silent pick of one."""
    code, out = await _relay(runner, "--host", "127.0.0.1:25", "--port", "587")
    assert code == RelayExit.USAGE
    assert "different ports" in out


async def test_silent_server_is_not_also_called_slow(silent_listener: int) -> None:
    """A banner timeout is one finding: no "banner took N s" warning beside "said nothing"."""
    target = RelayTarget("127.0.0.1", silent_listener, TlsMode.STARTTLS, timeout=0.3)
    report = await probe_relay(target, ProbeOptions(slow_ms=100))
    assert report.failed is ProbeStage.BANNER
    assert any("said nothing within 0.3 s" in f.message for f in report.findings)
    assert not [f for f in report.findings if f.row == "E2"]


async def test_unresolvable_host_c2(runner: CliRunner) -> None:
    """A host that does not resolve fails at DNS (exit 10) and names the host."""
    code, out = await _relay(runner, "--host", "smtp.example.invalid", "--port", "587")
    assert code == RelayExit.DNS
    assert "smtp.example.invalid does not resolve" in out
    assert "JDX-C2" in out


async def test_host_typo_suggests_known_provider_c1(refused_port: int) -> None:
    """A refused connection to smtp.gmial.com suggests smtp.gmail.com (JDX-C1)."""

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    target = RelayTarget(
        "smtp.gmial.com", refused_port, TlsMode.STARTTLS, key=("RelayServer",), timeout=2
    )
    report = await probe_relay(target, resolver=resolver)
    assert report.failed is ProbeStage.CONNECT
    typo = [f for f in report.findings if f.row == "C1"]
    assert typo
    assert "smtp.gmail.com" in typo[0].fix
    assert '"Host": "smtp.gmail.com" (RelayServer.Host)' in typo[0].fix


async def test_untrusted_certificate_fails_tls(
    fake_provider: StartProvider, runner: CliRunner
) -> None:
    """Without --ca the test CA is not trusted: TLS fails (exit 14) and names CaFile."""
    fake = await fake_provider()
    code, out = await _relay(runner, "--host", "127.0.0.1", "--port", str(fake.port))
    assert code == RelayExit.TLS
    assert "not trusted" in out
    assert "--ca" in out


async def test_slow_banner_warns_with_latency_e2() -> None:
    """A server that greets late gets a latency warning naming the stage (JDX-E2)."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)  # the cause under test: a slow relay
        writer.write(b"220 slow.example ESMTP\r\n")
        while line := await reader.readline():
            writer.write(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 slow.example\r\n")
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = RelayTarget("127.0.0.1", port, TlsMode.NONE, timeout=5)
        report = await probe_relay(target, ProbeOptions(slow_ms=100))
    finally:
        server.close()
        await server.wait_closed()
    assert report.ok
    slow_findings = [f for f in report.findings if f.row == "E2"]
    assert slow_findings
    assert slow_findings[0].message.startswith("banner took")
    assert all(s.elapsed_ms is not None for s in report.stages if s.ok)


async def test_config_relay_json_has_stages_and_no_secret(
    fake_provider: StartProvider,
    runner: CliRunner,
    ca: trustme.CA,
    tmp_path: Path,
    write_config: WriteConfig,
) -> None:
    """A relay from the config passes; --json lists the stages and never the password."""
    fake = await fake_provider()
    relay = {"Name": "fake-gmail", "Host": "127.0.0.1", "Port": fake.port}
    relay |= {"Username": GOOD_USER, "Password": GOOD_PASSWORD, "CaFile": _ca_file(ca, tmp_path)}
    path = write_config(json.dumps({"RelayServers": [relay]}))
    code, out = await _relay(runner, "--config", str(path), "--json")
    assert code == 0, out
    data = json.loads(out)
    relay = data["relays"][0]
    assert relay["relay"] == "fake-gmail"
    assert relay["ok"] is True
    assert [s["stage"] for s in relay["stages"]][:3] == ["DNS", "TCP connect", "banner"]
    tls = next(s for s in relay["stages"] if s["stage"] == "TLS")
    assert tls["facts"]["chain_verified"] is True
    assert "127.0.0.1" in tls["facts"]["sans"]
    assert GOOD_PASSWORD not in out
    assert fake.logins == [GOOD_USER]


async def test_password_prompt_needed_without_terminal(runner: CliRunner) -> None:
    """--user without --password-stdin and no terminal is a usage error, not a traceback."""
    code, out = await _relay(runner, "--host", "127.0.0.1", "--user", "someone")
    assert code == 2
    assert "a password is needed for 'someone'" in out
    assert "--password-stdin" in out


def test_exit_code_table_is_stable() -> None:
    """The documented exit codes (docs/test-relay.md) keep their numbers."""
    assert {e.name: int(e) for e in RelayExit} == {
        "OK": 0,
        "USAGE": 2,
        "DNS": 10,
        "CONNECT": 11,
        "BANNER": 12,
        "EHLO": 13,
        "TLS": 14,
        "EHLO_TLS": 15,
        "AUTH": 16,
        "MAIL": 17,
        "RCPT": 18,
        "DATA": 19,
    }


def test_connect_timeout_behind_a_dropping_firewall_c2(netns: NetNs) -> None:
    """A relay whose port a firewall drops times out at TCP connect and says so (exit 11)."""
    netns.drop(587)
    done = netns.run(
        sys.executable,
        "-m",
        "jdxmail",
        "test-relay",
        "--host",
        netns.address,
        "--port",
        "587",
        "--timeout",
        "0.5",
    )
    assert done.returncode == RelayExit.CONNECT, done.stdout + done.stderr
    assert f"no answer from {netns.address}:587 within 0.5 s" in done.stdout
    assert "firewall drops the traffic" in done.stdout
    assert "JDX-C2" in done.stdout


def test_unreachable_network_c2(netns: NetNs) -> None:
    """With no route to the relay's network, TCP connect says unreachable (exit 11)."""
    done = netns.run(
        sys.executable,
        "-m",
        "jdxmail",
        "test-relay",
        "--host",
        "198.51.100.7",
        "--port",
        "587",
        "--timeout",
        "2",
    )
    assert done.returncode == RelayExit.CONNECT, done.stdout + done.stderr
    assert "198.51.100.7 is unreachable" in done.stdout
    assert "no route" in done.stdout
    assert "JDX-C2" in done.stdout


async def test_refused_recipient_stops_at_rcpt(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """A 550 5.1.1 for the recipient (a typo) stops at RCPT TO with exit 18 and the reply."""
    fake = await fake_provider(
        ProviderSpec(
            rcpt_reply="550 5.1.1 The email account that you tried to reach does not exist"
        )
    )
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--ca",
        _ca_file(ca, tmp_path),
        "--user",
        GOOD_USER,
        "--password-stdin",
        "--from",
        GOOD_USER,
        "--to",
        "frend@example.net",
        stdin=GOOD_PASSWORD + "\n",
    )
    assert code == RelayExit.RCPT
    assert "✗ RCPT TO" in out
    assert "frend@example.net refused: 550 5.1.1" in out
    assert fake.messages == []


async def test_bad_host_name_is_refused_before_any_lookup(runner: CliRunner) -> None:
    """A host with a space fails at DNS as not a host name, without a lookup (exit 10)."""
    code, out = await _relay(runner, "--host", "smtp gmail.com")
    assert code == RelayExit.DNS
    assert "is not a host name" in out


async def test_certificate_for_another_name_says_which_names_it_holds(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """A certificate for smtp.example.test reached as 127.0.0.1 fails TLS and names the SAN."""
    fake = await fake_provider(ProviderSpec(cert_names=("smtp.example.test",)))
    code, out = await _relay(
        runner, "--host", "127.0.0.1", "--port", str(fake.port), "--ca", _ca_file(ca, tmp_path)
    )
    assert code == RelayExit.TLS
    assert "IP address mismatch" in out
    assert "SANs smtp.example.test" in out
    assert '--host "smtp.example.test"' in out


async def test_insecure_shows_the_certificate_unverified(
    fake_provider: StartProvider, runner: CliRunner
) -> None:
    """--insecure passes TLS without the CA but says the certificate was NOT verified."""
    fake = await fake_provider()
    code, out = await _relay(runner, "--host", "127.0.0.1", "--port", str(fake.port), "--insecure")
    assert code == RelayExit.OK, out
    assert "certificate NOT verified" in out
    assert "SANs localhost, 127.0.0.1" in out


async def test_relay_option_picks_one_relay_of_the_config(
    fake_provider: StartProvider, runner: CliRunner, write_config: WriteConfig
) -> None:
    """--relay NAME tests only that relay of RelayServers."""
    fake = await fake_provider(ProviderSpec(tls="none"))
    relays = [
        {"Name": "broken", "Host": "smtp.broken.invalid", "UseTls": False},
        {"Name": "local", "Host": "127.0.0.1", "Port": fake.port, "UseTls": False},
    ]
    path = write_config(json.dumps({"RelayServers": relays}))
    code, out = await _relay(runner, "--config", str(path), "--relay", "local")
    assert code == RelayExit.OK, out
    assert "local: 127.0.0.1" in out
    assert "broken" not in out
    code, out = await _relay(runner, "--config", str(path))
    assert code == RelayExit.DNS
    code, out = await _relay(runner, "--config", str(path), "--relay", "nope")
    assert code == RelayExit.USAGE
    assert "use one of: broken, local" in out


def test_provider_targets() -> None:
    """--provider fills in host, port and TLS mode; ses:REGION picks the regional host."""
    from jdxmail.diagnostics.relay_probe import provider_target

    gmail = provider_target("gmail")
    ses = provider_target("ses:eu-west-1", port=465)
    assert gmail is not None
    assert (gmail.host, gmail.port, gmail.tls) == ("smtp.gmail.com", 587, TlsMode.STARTTLS)
    assert ses is not None
    assert (ses.host, ses.tls) == ("email-smtp.eu-west-1.amazonaws.com", TlsMode.IMPLICIT)
    assert provider_target("nope") is None


async def test_plain_session_where_auth_needs_tls_c3(
    fake_provider: StartProvider, runner: CliRunner
) -> None:
    """--tls none to a server that offers AUTH only after STARTTLS says to use --tls starttls."""
    fake = await fake_provider()
    code, out = await _relay(
        runner,
        "--host",
        "127.0.0.1",
        "--port",
        str(fake.port),
        "--tls",
        "none",
        "--user",
        GOOD_USER,
        "--password-stdin",
        stdin=GOOD_PASSWORD + "\n",
    )
    assert code == RelayExit.AUTH
    assert "(the server offers STARTTLS)" in out
    assert "the server does not offer AUTH here" in out
    assert "--tls starttls" in out
    assert fake.logins == []


def test_host_typo_is_named_when_it_resolves_or_not_c1(netns: NetNs) -> None:
    """smtp.gmial.com gets "did you mean smtp.gmail.com?" whether it fails DNS or connect."""
    netns.hosts({})
    done = netns.run(
        sys.executable, "-m", "jdxmail", "test-relay", "--host", "smtp.gmial.com", "--timeout", "2"
    )
    assert done.returncode == RelayExit.DNS, done.stdout + done.stderr
    assert "did you mean 'smtp.gmail.com'?" in done.stdout
    assert '--host "smtp.gmail.com"' in done.stdout
    assert "JDX-C1" in done.stdout
    netns.hosts({"smtp.gmial.com": "127.0.0.1"})
    done = netns.run(
        sys.executable,
        "-m",
        "jdxmail",
        "test-relay",
        "--host",
        "smtp.gmial.com",
        "--port",
        "587",
        "--timeout",
        "2",
    )
    assert done.returncode == RelayExit.CONNECT, done.stdout + done.stderr
    assert "✓ DNS" in done.stdout
    assert "connection refused by 127.0.0.1:587" in done.stdout
    assert "did you mean 'smtp.gmail.com'?" in done.stdout


async def test_certificate_about_to_expire_is_a_warning(
    fake_provider: StartProvider, runner: CliRunner, ca: trustme.CA, tmp_path: Path
) -> None:
    """A certificate with 5 days left passes TLS but warns about its expiry."""
    fake = await fake_provider(ProviderSpec(cert_days=5))
    code, out = await _relay(
        runner, "--host", "127.0.0.1", "--port", str(fake.port), "--ca", _ca_file(ca, tmp_path)
    )
    assert code == RelayExit.OK, out
    assert "5 days left" in out
    assert "the certificate of 127.0.0.1 expires in 5 days" in out


async def test_sent_message_arrives_with_its_dot_lines_and_line_endings(
    fake_provider: StartProvider,
) -> None:
    """--send delivers lines that begin with a dot, and LF-only lines, as the message had them."""
    fake = await fake_provider(ProviderSpec(tls="none"))
    message = b"Subject: dots\r\n\r\n.one dot\r\n..two dots\n.\r\nlast line"
    target = RelayTarget("127.0.0.1", fake.port, TlsMode.NONE, timeout=5)
    options = ProbeOptions(
        mail_from="a@example.com", rcpt_to="b@example.com", send=True, message=message
    )
    report = await probe_relay(target, options)
    assert report.ok, report.findings
    [received] = fake.messages
    assert received.content == (
        b"Subject: dots\r\n\r\n.one dot\r\n..two dots\r\n.\r\nlast line\r\n"
    )


_BAD = "a@example.com\r\nDATA"


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("mail_from", lambda: ProbeOptions(mail_from=_BAD)),
        ("rcpt_to", lambda: ProbeOptions(rcpt_to=_BAD)),
        ("ehlo_name", lambda: ProbeOptions(ehlo_name=_BAD)),
    ],
)
def test_probe_options_refuse_control_characters(field: str, make: Callable[[], object]) -> None:
    """The relay probe itself refuses an address or name holding CR, LF or NUL, whoever
    calls it (the CLI and the console check first, with their own messages)."""
    with pytest.raises(ValueError, match=field):
        make()
